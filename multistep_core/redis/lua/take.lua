-- take.lua (queue script): a worker presents ticket ARGV[6] of queue ARGV[5] (RowStore.take)
-- Returns {run, reason, spec, attempt, keep, task, ref, batch}
local q = queue(ARGV[5])
if not take_ticket(q, ARGV[6]) then
  commit()
  return {0, 'stale-ticket'}
end
local st = take_fairest(q)
if st ~= nil then
  commit()
  return st
end
if q.waiting > 0 then
  q.parked = q.parked + 1  -- only capped work: owed back when a running job ends
  commit()
  return {0, 'capped'}
end
commit()
return {0, 'no-work'}
