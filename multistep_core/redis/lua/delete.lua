-- delete.lua (task script): remove a task; a waiting one leaves its queue's line first
bind(ARGV[5])
local found = redis.call('EXISTS', KM)
if load_task() then
  if is_live() then unschedule() end
  if T.running > 0 then
    -- its running jobs will never report back: free their places under the group's cap,
    -- and owe back the tickets parked on them (the next top-up issues them)
    local q = queue(T.queue)
    local key = gkey()
    local g = gload(q, key)
    if g ~= nil then
      g.running = g.running - T.running
      gsave(q, g)
      forget_if_idle(q, key)
    end
    q.parked = math.max(0, q.parked - T.running)
  end
  save_queues()
end
redis.call('DEL', unpack(ALLK))
redis.call('ZREM', PFX .. ':tasks', TID)
redis.call('ZREM', KDUEIDX, TID)
return found
