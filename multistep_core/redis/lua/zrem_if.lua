-- zrem_if.lua (plain script)
-- KEYS: a global zset. ARGV: member, score pairs. Remove each member whose score is
-- still the one seen (a task created again meanwhile keeps its new entry).
local n = 0
for i = 1, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) == tonumber(ARGV[i + 1]) then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
