-- page_walk.lua (plain script, run by redis/pages.py for a state-filtered page of tasks)
-- KEYS: the task index (zset: task id -> created_at).
-- ARGV: key prefix, first position, how many index entries to look at, wanted state,
--       "1" for newest first, now, most matches to return.
-- Reads each task's meta state; those keys are not declared, so this runs on a standalone
-- Redis only (pages.py walks from Python on a cluster client). One call looks at a bounded
-- slice of the index, so Redis is never blocked long.
-- Returns {entries looked at, matching id, matching id, ...}.
local first, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local ids
if ARGV[5] == '1' then
  ids = redis.call('ZREVRANGE', KEYS[1], first, first + n - 1)
else
  ids = redis.call('ZRANGE', KEYS[1], first, first + n - 1)
end
local now, need = tonumber(ARGV[6]), tonumber(ARGV[7])
local out = {0}
for i, id in ipairs(ids) do
  local v = redis.call('HMGET', ARGV[1] .. ':{' .. id .. '}:meta', 'state', 'expires_at')
  if v[1] == ARGV[4] and (not v[2] or tonumber(v[2]) > now) then
    out[#out + 1] = id
    if #out - 1 >= need then
      out[1] = i
      return out
    end
  end
end
out[1] = #ids
return out
