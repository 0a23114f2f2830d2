-- job_states.lua (plain script)
-- KEYS: meta, rows, done. Returns {total, fin_total, has_cb, done bitmap as hex, rows...}
local v = redis.call('HMGET', KEYS[1], 'total', 'fin_total', 'has_cb')
if not v[1] then return {} end
local bm = redis.call('GET', KEYS[3]) or ''
local hex = string.gsub(bm, '.', function(c) return string.format('%02x', string.byte(c)) end)
local ret = {v[1], v[2], v[3], hex}
for _, x in ipairs(redis.call('HGETALL', KEYS[2])) do ret[#ret + 1] = x end
return ret
