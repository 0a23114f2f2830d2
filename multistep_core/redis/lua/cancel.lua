-- cancel.lua (task script)
-- ARGV[6]: by
bind(ARGV[5])
if not load_task() or expired() then return {'notfound'} end
if T.state == 'succeeded' or T.state == 'cancelled' then return {'ok', 0} end
finish_task('cancelled')
tset('cancelled_by', ARGV[6])
tset('cancelled_at', NOW_S)
cancel_children(ARGV[6])
settle()
commit()
return extras({'ok', 1, T.queue})
