"""A client process the crash tests kill while it adds jobs (``python -m multistep_conformance.crash_client``).

    python -m multistep_conformance.crash_client BACKEND QUEUE TASK_ID JOURNAL N [CHUNK]

It creates the task, then adds ``N`` :func:`jobs.record` jobs (labels ``job0``...) with
``add_jobs``, ``CHUNK`` jobs per store write and per bulk enqueue (the backend's
``ADD_CHUNK``; default unchanged). Armed with ``MULTISTEP_CRASH=add_jobs.written`` (or
``add_jobs.between_batches``) it SIGKILLs itself in the middle; the test then seals the task
from its own process and checks that every job the store holds runs.
"""

from __future__ import annotations

import sys

from multistep_core import backend as backend_module
from multistep_core import connect

from . import jobs


def main(argv: list[str]) -> int:
    url, queue, task_id, journal, n = argv[:5]
    if len(argv) > 5:
        backend_module.ADD_CHUNK = int(argv[5])
    b = connect(url)
    task = b.create_task(task_id, queue=queue)
    task.add_jobs(jobs.record, [(journal, f"job{i}") for i in range(int(n))])
    print("added every job without crashing", file=sys.stderr)
    b.close()
    return 3  # the test armed a crash point: reaching this is a failure of the fixture


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
