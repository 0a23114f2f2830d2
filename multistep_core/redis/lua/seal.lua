-- seal.lua (task script: lib.lua first; KEYS as lib.lua says)
-- ARGV: now, lease
if not load_task() or expired() then return {'notfound'} end
local st = T.state
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return {'ok', T.queue} end
if T.sealed == 1 then return {'sealed'} end
tset('sealed', 1)
tset('sealed_at', NOW_S)
tset('state', 'running')
local d = advance()
save_task()
apply_ttl()
return out(d)
