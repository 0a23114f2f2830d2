-- add.lua (task script)
-- ARGV[6..]: kind, per_message, spec...
bind(ARGV[5])
if not load_task() or expired() then return {'notfound'} end
local kind = ARGV[6]
local per_message = tonumber(ARGV[7])
local n = #ARGV - 7
if kind == 'x' then
  if T.state == 'succeeded' or T.state == 'failed' or T.state == 'cancelled' then return {'late-callback', T.state} end
  if n ~= 1 then return {'unpack', n} end
  redis.call('HSET', KS, 'x0', ARGV[8])
  redis.call('HDEL', KR, 'x0')
  redis.call('HDEL', KE, 'x0')
  clear_due('x0')
  tset('has_cb', 1)
  commit()
  return {'ok', 0}
end
if not is_live() then return {'closed', T.state} end
local first
if kind == 'j' then
  first = T.total
  tset('total', first + n)
  if per_message > T.batch then tset('batch', per_message) end
elseif kind == 'f' then
  first = T.fin_total
  tset('fin_total', first + n)
else
  return {'kind'}
end
local batch = {}
for i = 1, n do
  batch[#batch + 1] = kind .. fmti(first + i - 1)
  batch[#batch + 1] = ARGV[7 + i]
  if #batch >= 1000 then
    redis.call('HSET', KS, unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('HSET', KS, unpack(batch)) end
if kind == 'j' and n > 0 then
  local q = queue(T.queue)
  q.waiting = q.waiting + n
  wait({})
end
commit()
return {'ok', first}
