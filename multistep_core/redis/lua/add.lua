-- add.lua (task script: lib.lua first; KEYS as lib.lua says)
-- ARGV: now, lease(unused), kind, spec...
if not load_task() or expired() then return {'notfound'} end
local kind = ARGV[3]
local n = #ARGV - 3
if kind == 'x' then
  if T.state == 'succeeded' or T.state == 'failed' or T.state == 'cancelled' then return {'late-callback', T.state} end
  if n ~= 1 then return {'unpack', n} end
  redis.call('HSET', KS, 'x0', ARGV[4])
  redis.call('HDEL', KR, 'x0')
  redis.call('HDEL', KE, 'x0')
  clear_due('x0')
  tset('has_cb', 1)
  save_task()
  return {'ok', 0}
end
if T.state ~= 'open' and T.state ~= 'running' then return {'closed', T.state} end
local first
if kind == 'j' then
  first = T.total
  tset('total', first + n)
elseif kind == 'f' then
  first = T.fin_total
  tset('fin_total', first + n)
else
  return {'kind'}
end
local batch = {}
for i = 1, n do
  batch[#batch + 1] = kind .. string.format('%d', first + i - 1)
  batch[#batch + 1] = ARGV[3 + i]
  if #batch >= 1000 then
    redis.call('HSET', KS, unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('HSET', KS, unpack(batch)) end
save_task()
return {'ok', first}
