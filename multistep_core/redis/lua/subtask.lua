-- subtask.lua (task script on the parent): nesting.add_subtask. ARGV[6]: child id,
-- ARGV[7]: the step's spec, ARGV[8..]: the child's option pairs (as create.lua)
bind(ARGV[5])
if not load_task() or expired() then return {'notfound'} end
if not is_live() then return {'closed', T.state} end
local pid, cid = TID, ARGV[6]
bind(cid)
if redis.call('EXISTS', KM) == 1 then
  local v = redis.call('HMGET', KM, 'state', 'expires_at')
  if v[2] and tonumber(v[2]) <= NOW then
    redis.call('DEL', unpack(ALLK))
  else
    return {'exists', v[1]}
  end
else
  redis.call('DEL', unpack(ALLK))
end
bind(pid)
local ref = 'j' .. fmti(T.total)
if T.next == T.total then
  tset('next', T.next + 1)  -- nothing of the task waits in sequence: the line skips its place
else
  local q = queue(T.queue)
  q.waiting = q.waiting + 1  -- the line walks over it later, as over a taken job
end
tset('total', T.total + 1)
tset('running', T.running + 1)
redis.call('HSET', KS, ref, ARGV[7])
put_row(ref, {st = 'r', a = 1, f = 0, l = 0})
redis.call('RPUSH', KKIDS, cid)
local root = T.root
if root == nil or root == '' then root = pid end
bind(cid)
local fields = {'state', 'open', 'sealed', '0', 'total', '0', 'running', '0', 'succeeded', '0',
  'failed', '0', 'fin_total', '0', 'fin_done', '0', 'has_cb', '0', 'created_at', NOW_S,
  'next', '0', 'batch', '1', 'vt', '0', 'parent', pid, 'pref', ref, 'root', root, 'tolerated', '0'}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KM, unpack(fields))
bind(pid)
commit()
return {'ok', ref}
