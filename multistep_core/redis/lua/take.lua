-- take.lua (queue script): a worker presents ticket ARGV[6] of queue ARGV[5] (RowStore.take)
-- Returns {run, reason, spec, attempt, keep, task, ref, batch}
local q = queue(ARGV[5])
if not take_ticket(q, ARGV[6]) then
  commit()
  return {0, 'stale-ticket'}
end
local PAGE = 32
-- groups with waiting tasks, fairest first (vt, key); visited in pages by rank: a group
-- leaves the zset only once visited, so ranks shift by the groups that left
local gpos, gleft = 0, 0
while true do
  local gs = redis.call('ZRANGE', q.kg, gpos - gleft, gpos - gleft + PAGE - 1)
  if #gs == 0 then break end
  gpos = gpos + #gs
  for _, key in ipairs(gs) do
    local g = gload(q, key)
    if g ~= nil and (g.limit <= 0 or g.running < g.limit) then
      local tpos, tleft = 0, 0
      while true do
        local ts = redis.call('ZRANGE', g.kt, tpos - tleft, tpos - tleft + PAGE - 1)
        if #ts == 0 then break end
        tpos = tpos + #ts
        for _, tid in ipairs(ts) do
          bind(tid)
          if not load_task() or not is_live() then
            redis.call('ZREM', g.kt, tid)  -- ended tasks leave the line (not reached)
            g.ntasks = g.ntasks - 1
            gsave(q, g)
            tleft = tleft + 1
          elseif not (T.maxc > 0 and T.running >= T.maxc) then
            local ref, r = next_row()
            if ref == nil then
              after_take()
              tleft = tleft + 1
            else
              charge(q, g, tid, T.weight)
              local st = start_row(ref, r)
              after_take()
              commit()
              return st
            end
          end
        end
      end
      if g.ntasks == 0 then gleft = gleft + 1 end
    end
  end
end
if q.waiting > 0 then
  q.parked = q.parked + 1  -- only capped work: owed back when a running job ends
  commit()
  return {0, 'capped'}
end
commit()
return {0, 'no-work'}
