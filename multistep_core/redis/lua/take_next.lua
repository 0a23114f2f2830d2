-- take_next.lua (task script): finish.lua, then the start of the task's next waiting job
-- if its caps allow, or with ARGV[14] == '1' (go on) the job a ticket of the task's queue would
-- start, without one (RowStore.take_next). ARGV[6..13]: as finish.lua
-- Returns {'ok', queue, ref or '', ticket...} .. then the start: {'S', run, reason, spec, attempt, keep, task, ref, batch}
bind(ARGV[5])
if not load_task() then return {'ok', '', '', 'S', 0, 'batch-done'} end
local errjson = nil
if ARGV[12] ~= '' then errjson = ARGV[12] end
local d = finish_one(ARGV[6], tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]), ARGV[10] == '1', ARGV[11], errjson, ARGV[13])
settle()  -- before the take: the parent's count is part of the finish
local function reply(st)
  settle()
  commit()
  local ret = out(d)
  ret[#ret + 1] = 'S'
  for _, v in ipairs(st) do ret[#ret + 1] = v end
  return extras(ret)
end
if ARGV[14] == '1' then
  local st = take_fairest(queue(T.queue))
  bind(ARGV[5])
  return reply(st or {0, 'no-work'})
end
local done = {0, 'batch-done'}
if not is_live() then return reply(done) end
local q = queue(T.queue)
local g = gload(q, gkey())
if (T.maxc > 0 and T.running >= T.maxc) or g == nil or (g.limit > 0 and g.limit <= g.running) then
  return reply(done)
end
if not redis.call('ZSCORE', g.kt, TID) then return reply(done) end
local ref, r = next_row()
if ref == nil then
  after_take()
  return reply(done)
end
charge(q, g, TID, T.weight)
local st = start_row(ref, r)
after_take()
return reply(st)
