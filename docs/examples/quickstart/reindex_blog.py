"""The producer of the README example: creates the task and waits for it."""

from blog_jobs import commit_index, reindex

from multistep_core import connect

backend = connect()                      # MULTISTEP_BACKEND, pyproject.toml, or embedded memory
with backend.create_task(max_retries=2) as task:
    for post_id in range(1, 501):
        task.add_job(reindex, post_id)
    task.add_finalization_job(commit_index)   # several run one after another, in order
print(task.wait(timeout=60).state)       # succeeded
backend.close()
