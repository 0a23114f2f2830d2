"""Plumbing for the web dashboard tests: a real `multistep web` server process, a real
`multistep worker` process, free ports, and Chromium (skipped locally when missing, a failure
under CI)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CI = bool(os.environ.get("CI"))
CHROMIUM = os.environ.get("MULTISTEP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]
TOKEN = "web-test-token-0123"


def missing(what: str) -> None:
    """Skip (locally) or fail (under CI) for a missing browser or library."""
    if CI:
        pytest.fail(f"{what} (CI is set: a missing dependency fails the run)", pytrace=False)
    pytest.skip(what)


def need_web() -> None:
    for mod in ("starlette", "uvicorn", "jinja2"):
        try:
            __import__(mod)
        except ImportError:
            missing(f'{mod} is not installed (pip install "multistep[web]")')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("MULTISTEP_WEB_TOKEN", None)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Until the server answers (the event), failing at once if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"multistep web exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/api/rejected?limit=1", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise AssertionError(f"multistep web did not answer within {timeout}s:\n{log.read_text()}") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def web_server(backend: str, tmp: Path, *, token: str | None = TOKEN, extra: tuple[str, ...] = ()) -> Iterator[str]:
    """`multistep -b BACKEND web` in its own process; yields its base URL."""
    port = free_port()
    log = tmp / f"web-{port}.log"
    cmd = [sys.executable, "-m", "multistep_core", "-b", backend, "web", "--port", str(port),
           "-i", "web_jobs", "--poll", "0.1", *extra]
    if token:
        cmd += ["--token", token]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=HERE, env=_env(),
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc, log)
        yield url
    finally:
        _stop(proc)


@contextmanager
def worker(backend: str, tmp: Path, concurrency: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp / "worker.log"
    cmd = [sys.executable, "-m", "multistep_core", "-b", backend, "worker", "web_jobs", "-c", str(concurrency)]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=HERE, env=_env(),
                            start_new_session=True)
    try:
        yield proc
    finally:
        _stop(proc)


def chromium_path() -> str:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        missing(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM
