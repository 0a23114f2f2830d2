-- start.lua (task script: lib.lua first; KEYS as lib.lua says)
-- ARGV: now, lease, kind, index, ref
if not load_task() then return {0, 'task-missing'} end
local kind, idx, ref = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local r = get_row(kind, idx, ref)
if not r then return {0, 'job-missing'} end
if r.st == 's' or r.st == 'f' then return {0, 'already-finished'} end
if r.st == 'r' then return {0, 'already-running'} end
if r.st == 'w' then return {0, 'retry-not-due'} end
if kind == 'j' then
  if T.state ~= 'open' and T.state ~= 'running' then return {0, 'task-' .. T.state} end
  tset('running', T.running + 1)
elseif kind == 'f' then
  if T.state ~= 'finalizing' or idx ~= T.fin_done then return {0, 'task-' .. T.state} end
elseif T.state ~= 'failed' then
  return {0, 'task-' .. T.state}
end
r.st = 'r'
r.a = r.a + 1
put_row(ref, r)
set_due(ref, NOW + LEASE)
save_task()
apply_ttl()
return {1, '', redis.call('HGET', KS, ref) or '', r.a, T.keep}
