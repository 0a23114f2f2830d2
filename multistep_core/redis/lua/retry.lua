-- retry.lua (task script): failed -> running/open (or finalizing), RowStore.retry
bind(ARGV[5])
if not load_task() or expired() then return {'notfound'} end
if T.state ~= 'failed' then return {'notfailed', T.state} end
tset('finished_at', nil)
tset('expires_at', nil)
persist_all()
local bm = redis.call('GET', KD) or ''
local flat = redis.call('HGETALL', KR)
local rows = {}
for i = 1, #flat, 2 do rows[flat[i]] = flat[i + 1] end
local dues = {}
for _, m in ipairs(redis.call('ZRANGE', KDUE, 0, -1)) do dues[m] = true end
local inline = {}
for _, m in ipairs(redis.call('LRANGE', KLINE, 0, -1)) do inline[m] = true end
local refs = {}
local failed = T.failed
for i = 0, T.total - 1 do
  local byte = string.byte(bm, math.floor(i / 8) + 1) or 0
  if bit.band(byte, bit.rshift(128, i % 8)) == 0 then
    local ref = 'j' .. fmti(i)
    local r = parse_row(rows[ref])
    if r.st ~= 'r' then
      if r.st == 'f' then
        failed = failed - 1
        redis.call('HDEL', KE, ref)
      end
      if r.st ~= 'p' or r.f ~= 0 or r.l ~= 0 then
        r.st = 'p'; r.f = 0; r.l = 0
        put_row(ref, r)
      end
      if dues[ref] then clear_due(ref) end
      if not inline[ref] and i < T.next then refs[#refs + 1] = ref end
    end
  end
end
if failed ~= T.failed then tset('failed', failed) end
local fin_failed = nil
for i = 0, T.fin_total - 1 do
  local ref = 'f' .. fmti(i)
  if rows[ref] then
    local r = parse_row(rows[ref])
    if r.st == 'f' then fin_failed = ref end
  end
end
if fin_failed and task_waiting() == 0 and #refs == 0 then
  local r = get_row('f', tonumber(string.sub(fin_failed, 2)), fin_failed)
  r.f = 0; r.l = 0
  redis.call('HDEL', KE, fin_failed)
  put_row(fin_failed, r)
  tset('state', 'finalizing')
  local d = follow(fin_failed)
  commit()
  return out(d)
end
if T.sealed == 1 then tset('state', 'running') else tset('state', 'open') end
local q = queue(T.queue)
q.waiting = q.waiting + task_waiting()
wait(refs)
local d = advance()
local more = {}
top_up(q, more)
d = merge(d, more)
commit()
return out(d)
