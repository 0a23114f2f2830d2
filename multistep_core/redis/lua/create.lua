-- create.lua (task script)
-- ARGV[6..]: option pairs
bind(ARGV[5])
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
local fields = {'state', 'open', 'sealed', '0', 'total', '0', 'running', '0', 'succeeded', '0',
  'failed', '0', 'fin_total', '0', 'fin_done', '0', 'has_cb', '0', 'created_at', NOW_S,
  'next', '0', 'batch', '1', 'vt', '0'}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KM, unpack(fields))
return {'ok'}
