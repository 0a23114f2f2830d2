-- delete.lua (task script): remove a task; a waiting one leaves its queue's line first
bind(ARGV[5])
local found = redis.call('EXISTS', KM)
if load_task() and is_live() then
  unschedule()
  save_queues()
end
redis.call('DEL', unpack(ALLK))
redis.call('ZREM', PFX .. ':tasks', TID)
redis.call('ZREM', KDUEIDX, TID)
return found
