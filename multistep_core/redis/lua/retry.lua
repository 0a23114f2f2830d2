-- retry.lua (task script): failed -> running/open (or finalizing), RowStore.retry (the body is
-- nest.lua's retry_bound, which a failed parent also runs for its failed children)
bind(ARGV[5])
if not load_task() or expired() then return {'notfound'} end
if T.state ~= 'failed' then return {'notfailed', T.state} end
persist_all()
local d = retry_bound()
reopen_slot()
settle()
commit()
return extras(out(d))
