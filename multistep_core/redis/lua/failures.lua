-- failures.lua (plain script)
-- KEYS: rows, err, done. Errors of rows that failed for good, each followed by '0'; and the
-- history a task retry() kept ('h<ref>' in err) of rows that have since succeeded, followed by
-- '1' (resolved). A history whose row is pending, running or failed again is not listed.
local flat = redis.call('HGETALL', KEYS[2])
local ret = {}
for i = 1, #flat, 2 do
  local field = flat[i]
  if string.sub(field, 1, 1) == 'h' then
    local ref = string.sub(field, 2)
    local done
    if string.sub(ref, 1, 1) == 'j' then
      done = redis.call('GETBIT', KEYS[3], tonumber(string.sub(ref, 2))) == 1
    else
      local v = redis.call('HGET', KEYS[1], ref)
      done = v ~= false and v ~= nil and string.sub(v, 1, 1) == 's'
    end
    if done then ret[#ret + 1] = flat[i + 1]; ret[#ret + 1] = '1' end
  else
    local v = redis.call('HGET', KEYS[1], field)
    if v and string.sub(v, 1, 1) == 'f' then ret[#ret + 1] = flat[i + 1]; ret[#ret + 1] = '0' end
  end
end
return ret
