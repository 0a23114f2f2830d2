-- seal.lua (task script)
bind(ARGV[5])
if not load_task() or expired() then return {'notfound'} end
local st = T.state
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return out(nil) end
if T.sealed == 1 then return {'sealed'} end
tset('sealed', 1)
tset('sealed_at', NOW_S)
tset('state', 'running')
local d = advance()
settle()
commit()
return extras(out(d))
