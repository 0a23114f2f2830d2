-- release.lua (queue script): the tickets queue ARGV[5] is owed, and those presumed lost
-- Returns {ticket...}
local q = queue(ARGV[5])
local out = {}
expired_tickets(q, out)
top_up(q, out)
commit()
return out
