-- delete.lua (task script): remove a task and its subtasks (nest.lua's delete_tree); a running
-- subtask whose parent still exists is refused (the parent would wait for it forever)
bind(ARGV[5])
local found = redis.call('EXISTS', KM)
if load_task() and T.parent ~= nil and T.parent ~= '' and redis.call('EXISTS', task_keys(T.parent)[1]) == 1 then
  if T.state == 'open' or T.state == 'running' or T.state == 'finalizing' then
    return {'running-subtask', T.parent}
  end
end
delete_tree(ARGV[5])
save_queues()
return found
