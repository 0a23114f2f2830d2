-- cancel.lua (task script: lib.lua first; KEYS as lib.lua says)
-- ARGV: now, lease, by
if not load_task() or expired() then return {'notfound'} end
if T.state == 'succeeded' or T.state == 'cancelled' then return {'ok', 0} end
finish_task('cancelled')
tset('cancelled_by', ARGV[3])
tset('cancelled_at', NOW_S)
save_task()
apply_ttl()
return {'ok', 1}
