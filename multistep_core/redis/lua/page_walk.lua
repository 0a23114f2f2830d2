-- page_walk.lua (plain script, run by redis/pages.py for a filtered page of tasks)
-- KEYS: the task index (zset: task id -> created_at).
-- ARGV: key prefix, first position, how many index entries to look at, wanted state ("" for
--       any), "1" for newest first, now, most ids to return, id text to search ("" for none;
--       lower case, matched against the lower-cased id, plain text, not a pattern).
-- With a wanted state it reads each candidate's meta state: keys it does not declare, so that
-- mode runs on a standalone Redis only (pages.py walks from Python on a cluster client), and
-- it stops at the first slice position where it has enough ids. A search alone reads nothing
-- but the index and counts every match of the slice. One call looks at a bounded slice of the
-- index, so Redis is never blocked long.
-- Returns {entries looked at, matches counted, matching id, matching id, ...}.
local first, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local ids
if ARGV[5] == '1' then
  ids = redis.call('ZREVRANGE', KEYS[1], first, first + n - 1)
else
  ids = redis.call('ZRANGE', KEYS[1], first, first + n - 1)
end
local state, now, need, needle = ARGV[4], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local out = {0, 0}
for i, id in ipairs(ids) do
  local hit = needle == '' or string.find(string.lower(id), needle, 1, true) ~= nil
  if hit and state ~= '' then
    local v = redis.call('HMGET', ARGV[1] .. ':{' .. id .. '}:meta', 'state', 'expires_at')
    hit = v[1] == state and (not v[2] or tonumber(v[2]) > now)
  end
  if hit then
    out[2] = out[2] + 1
    if #out - 2 < need then
      out[#out + 1] = id
    end
    if state ~= '' and #out - 2 >= need then
      out[1] = i
      return out
    end
  end
end
out[1] = #ids
return out
