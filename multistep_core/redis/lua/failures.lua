-- failures.lua (plain script)
-- KEYS: rows, err. Errors of rows that failed for good.
local flat = redis.call('HGETALL', KEYS[2])
local ret = {}
for i = 1, #flat, 2 do
  local v = redis.call('HGET', KEYS[1], flat[i])
  if v and string.sub(v, 1, 1) == 'f' then ret[#ret + 1] = flat[i + 1] end
end
return ret
