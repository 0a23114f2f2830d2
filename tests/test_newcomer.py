"""The first task on a real queue, as a newcomer writes it (issue 13, section 2).

The README example is two files (docs/examples/quickstart/): a module of job functions, which
workers import, and a producer. The README shows them verbatim and they run unchanged on the
embedded backends and, with a worker started beside them, on every queue backend.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cli_jobs
import pytest
from conftest import require_service
from services import REDIS_ADDR, REDIS_HOST, REDIS_PORT

from multistep_core import connect
from multistep_core.errors import InvalidJob, WaitTimeout

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "quickstart"
# Redis databases of this file only (the other test files keep 11-15)
QUEUE_BACKENDS = {
    "rq": f"rq+redis://{REDIS_ADDR}/9",
    "dramatiq": f"dramatiq+redis://{REDIS_ADDR}/8",
    "celery": f"celery+redis://{REDIS_ADDR}/7",
}


def _env(backend: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MULTISTEP_BACKEND"}
    env["MULTISTEP_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "adapters"), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_the_readme_shows_the_example_files_verbatim() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    for name in ("blog_jobs.py", "reindex_blog.py"):
        assert (EXAMPLE / name).read_text("utf-8") in blocks, f"README.md does not show {name} verbatim"
    assert "multistep worker blog_jobs" in readme


@pytest.mark.parametrize("backend", ["memory", "eager", "sqlite:///tasks.db"])
def test_the_readme_example_runs_on_the_embedded_backends(backend: str, tmp_path: Path) -> None:
    for name in ("blog_jobs.py", "reindex_blog.py"):
        (tmp_path / name).write_text((EXAMPLE / name).read_text("utf-8"))
    proc = subprocess.run([sys.executable, "reindex_blog.py"], cwd=tmp_path, env=_env(backend),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["index committed", "succeeded"]


@pytest.mark.parametrize("name", sorted(QUEUE_BACKENDS))
def test_the_readme_example_runs_on_every_queue_backend(name: str, tmp_path: Path) -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    # Given the README's two files in a project directory, and a worker started there
    for f in ("blog_jobs.py", "reindex_blog.py"):
        (tmp_path / f).write_text((EXAMPLE / f).read_text("utf-8"))
    backend = f"{QUEUE_BACKENDS[name]}?prefix=nc{uuid.uuid4().hex[:6]}"
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "multistep_core", "worker", "blog_jobs", "-c", "2"],
            cwd=tmp_path, env=_env(backend), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        # When the producer runs as printed
        proc = subprocess.run([sys.executable, "reindex_blog.py"], cwd=tmp_path, env=_env(backend),
                              capture_output=True, text=True, timeout=180)
        # Then the task succeeds, and the finalizer ran on the worker
        assert proc.returncode == 0, proc.stderr + log.read_text()
        assert proc.stdout.strip().splitlines()[-1] == "succeeded"
    finally:
        os.killpg(worker.pid, 15)  # the worker's own session, never this process's group
        worker.wait(timeout=60)
    assert "index committed" in log.read_text()


MAIN_SCRIPT = '''
import sys
from multistep_core import connect, job
from multistep_core.errors import InvalidJob

@job
def here(x):
    return x

backend = connect(sys.argv[1])
task = backend.create_task()
try:
    task.add_job(here, 1)
except InvalidJob as exc:
    print(type(exc).__name__ + ": " + str(exc))
else:
    task.seal()
    print("accepted", task.wait(timeout=30).state)
task.cancel()
backend.close()
'''


def test_a_job_defined_in_main_is_refused_on_a_queue_backend(tmp_path: Path) -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    script = tmp_path / "oneshot.py"
    script.write_text(MAIN_SCRIPT)
    url = f"{QUEUE_BACKENDS['rq']}?prefix=nc{uuid.uuid4().hex[:6]}"
    proc = subprocess.run([sys.executable, str(script), url], capture_output=True, text=True, timeout=60, env=_env(url))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("InvalidJob: the job 'here' is defined in __main__ (the script you ran), and the rq backend")
    assert "Move the @job functions into a module" in out and "multistep worker myapp.jobs" in out
    # while the embedded backends, whose jobs run in this very process, accept it
    proc = subprocess.run([sys.executable, str(script), "memory"], capture_output=True, text=True, timeout=60,
                          env=_env("memory"))
    assert proc.stdout.strip() == "accepted succeeded", proc.stderr


def test_wait_timing_out_with_no_worker_says_so() -> None:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    queue = f"nobody-{uuid.uuid4().hex[:6]}"
    backend = connect(f"{QUEUE_BACKENDS['rq']}?prefix=nc{uuid.uuid4().hex[:6]}")
    try:
        with backend.create_task(queue=queue) as task:
            task.add_job(cli_jobs.add, 1, 2)
        with pytest.raises(WaitTimeout) as info:
            task.wait(timeout=0.2)
        assert type(info.value) is WaitTimeout
        msg = str(info.value)
        assert "(0/1 jobs ended, 0/0 finalizers)" in msg
        assert f"no job of it has started, so no worker seems to serve the queue {queue!r}" in msg
        assert f"worker YOUR.JOBS.MODULE -q {queue}" in msg
        task.cancel(by="test")
    finally:
        backend.close()


def test_on_failure_takes_arguments_like_add_job(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    backend = connect("memory")
    try:
        cli_jobs.gate.clear()
        with backend.create_task(on_failure=(cli_jobs.record, str(journal), "failed", 3)) as task:
            task.add_job(cli_jobs.gated, 1)
        assert task.wait(timeout=20).state == "failed"
        deadline = time.monotonic() + 20
        while backend.store.job_states(task.id).get("x0") != "succeeded":  # gate on the callback's row
            assert time.monotonic() < deadline, backend.store.job_states(task.id)
            time.sleep(0.01)
        assert [json.loads(line) for line in journal.read_text().splitlines()] == [["failed", 3]]
        # bad callbacks are refused at create_task, as add_job refuses them
        with pytest.raises(InvalidJob) as info:
            backend.create_task(on_failure=(cli_jobs.record, str(journal), {1, 2}))
        assert type(info.value) is InvalidJob and "argument 1 of cli_jobs:record is of type set" in str(info.value)
        with pytest.raises(InvalidJob, match=r"on_failure=\(\) names no function"):
            backend.create_task(on_failure=())
    finally:
        cli_jobs.gate.set()
        backend.close()


def test_wait_on_a_task_never_sealed_says_to_seal_it() -> None:
    backend = connect("memory")
    try:
        task = backend.create_task()
        task.add_job(cli_jobs.add, 1, 2)
        with pytest.raises(WaitTimeout) as info:
            task.wait(timeout=0.2)
        assert type(info.value) is WaitTimeout
        assert "the task is still open, and it ends only once sealed" in str(info.value)
        assert "call task.seal() after the last add_job" in str(info.value)
    finally:
        backend.close()
