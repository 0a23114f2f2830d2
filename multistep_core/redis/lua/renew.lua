-- renew.lua (plain script)
-- KEYS: rows, due, spec. ARGV: now, lease, ref, attempt
local v = redis.call('HGET', KEYS[1], ARGV[3])
if not v then return 0 end
local spec = redis.call('HGET', KEYS[3], ARGV[3])
if spec and string.sub(spec, 1, 11) == '{"subtask":' then return 0 end  -- a subtask's step: no lease
local st, a = string.match(v, '^(%a),(%d+),')
if st ~= 'r' or tonumber(a) ~= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[2], string.format('%.17g', tonumber(ARGV[1]) + tonumber(ARGV[2])), ARGV[3])
return 1
