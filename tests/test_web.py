"""The web dashboard without a browser: its JSON API, the token/session/CSRF rules, escaping,
read-only mode, mounting in a Starlette app and serving through WSGI. The server is a real
`multistep web` process on a SQLite store; jobs run on the test process's threads."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import web_jobs
from web_support import TOKEN, need_web, web_server

from multistep_core import Backend, connect


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    need_web()
    return f"sqlite:///{tmp_path_factory.mktemp('web') / 'web.db'}"


@pytest.fixture(scope="module")
def backend(sqlite_url: str) -> Iterator[Backend]:
    b = connect(sqlite_url, threads=4)
    yield b
    b.close()


@pytest.fixture(scope="module")
def server(sqlite_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with web_server(sqlite_url, tmp_path_factory.mktemp("srv")) as url:
        yield url


def call(method: str, url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, Any, Any]:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            body = resp.read().decode()
            status, hdrs = resp.status, resp.headers
    except urllib.error.HTTPError as exc:
        body, status, hdrs = exc.read().decode(), exc.code, exc.headers
    ctype = hdrs.get("content-type", "")
    return status, json.loads(body) if ctype.startswith("application/json") else body, hdrs


def failed_task(backend: Backend, tmp: Path) -> str:
    tid = f"fail-{uuid.uuid4().hex[:8]}"
    fixed = str(tmp / f"{tid}.fixed")
    with backend.create_task(tid) as t:
        for i in range(3):
            t.add_job(web_jobs.flaky, i, fixed, "xss", "j1", "<img src=x onerror=alert(2)>")
        t.add_job(web_jobs.flaky, 3, fixed, "disk")
        t.add_finalization_job(web_jobs.fin)
    assert t.wait(timeout=60).state.value == "failed"
    return tid


def test_api_lists_pages_and_filters(server: str, backend: Backend) -> None:
    # Given 60 tasks that ended at once (no jobs), with one id tag
    tag = uuid.uuid4().hex[:6]
    for i in range(60):
        with backend.create_task(f"page-{tag}-{i:02d}"):
            pass
    # When the API is asked for pages of 25 of them, newest first
    status, first, _ = call("GET", f"{server}/api/tasks?q=page-{tag}&limit=25")
    assert status == 200 and first["total"] == 60 and first["has_more"] is True
    assert [p["task_id"] for p in first["items"]][:2] == [f"page-{tag}-59", f"page-{tag}-58"]
    _, third, _ = call("GET", f"{server}/api/tasks?q=page-{tag}&limit=25&page=3")
    assert len(third["items"]) == 10 and third["has_more"] is False and third["offset"] == 50
    _, oldest, _ = call("GET", f"{server}/api/tasks?q=PAGE-{tag}&order=oldest&limit=1&state=succeeded")
    assert oldest["items"][0]["task_id"] == f"page-{tag}-00" and oldest["items"][0]["percent"] == 100
    # Then bad values are a 400 naming the field
    for bad, field in (("limit=0", "limit"), ("state=nope", "state"), ("order=sideways", "order"), ("page=x", "page")):
        status, body, _ = call("GET", f"{server}/api/tasks?{bad}")
        assert status == 400 and field in body["error"]


def test_task_failures_are_grouped_with_arguments(server: str, backend: Backend, tmp_path: Path) -> None:
    tid = failed_task(backend, tmp_path)
    status, task, _ = call("GET", f"{server}/api/tasks/{tid}")
    assert status == 200 and task["progress"]["state"] == "failed"
    assert [f["state"] for f in task["finalizers"]] == ["pending"] and task["finalizers"][0]["fn"].endswith("fin")
    _, fails, _ = call("GET", f"{server}/api/tasks/{tid}/failures")
    assert fails["total"] == 4
    (xss, disk) = fails["groups"]
    assert (xss["type"], xss["message"], xss["count"]) == ("ValueError", web_jobs.XSS, 3)
    assert (disk["type"], disk["count"]) == ("RuntimeError", 1)
    assert xss["jobs"][0]["args"][2:] == ["xss", "j1", "<img src=x onerror=alert(2)>"]
    assert "Traceback" in xss["traceback"]
    assert call("GET", f"{server}/api/tasks/no-such-task")[0] == 404
    assert call("GET", f"{server}/api/tasks/bad%20id")[0] == 400


def test_results_when_kept(server: str, backend: Backend, tmp_path: Path) -> None:
    tid = f"kept-{uuid.uuid4().hex[:8]}"
    fixed = tmp_path / "fixed"
    fixed.touch()
    with backend.create_task(tid, keep_results=True) as t:
        t.add_jobs(web_jobs.flaky, [(i, str(fixed), "disk") for i in range(120)])
    assert t.wait(timeout=60).state.value == "succeeded"
    _, res, _ = call("GET", f"{server}/api/tasks/{tid}/results?limit=500")
    assert res["total"] == 120 and res["items"][:2] == [{"ref": "j0", "value": 0}, {"ref": "j1", "value": 1}]
    assert res["items"][-1] == {"ref": "j119", "value": 119}
    _, html, _ = call("GET", f"{server}/tasks/{tid}")
    assert "Results <span class=\"num\">(120)</span>" in html and "first 100 of 120 shown" in html


def test_html_escapes_messages_arguments_and_rejected_messages(server: str, backend: Backend, tmp_path: Path) -> None:
    tid = failed_task(backend, tmp_path)
    backend.store.reject('{"v":1,"task":"<script>alert(3)</script>"}', "forged: <b>bold</b>", time.time())
    _, html, headers = call("GET", f"{server}/tasks/{tid}")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html and "<img" not in html
    assert "script-src 'self'" in headers["content-security-policy"]
    _, rejected, _ = call("GET", f"{server}/rejected")
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in rejected and "forged: &lt;b&gt;bold&lt;/b&gt;" in rejected
    _, api, _ = call("GET", f"{server}/api/rejected?limit=5")
    assert api["items"][0]["raw"] == '{"v":1,"task":"<script>alert(3)</script>"}'


def _login(server: str, token: str) -> tuple[str, str]:
    """Sign in; return the session cookie and the CSRF value a page carries."""
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(f"{server}/login", data=f"token={token}&next=/".encode(), method="POST")
    try:
        opener.open(req, timeout=20)
        raise AssertionError("expected a redirect")
    except urllib.error.HTTPError as exc:
        assert exc.code == 303, exc.read()
        cookie = exc.headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in exc.headers["set-cookie"] and "SameSite=strict" in exc.headers["set-cookie"]
    _, html, _ = call("GET", f"{server}/", {"Cookie": cookie})
    csrf = html.split('data-csrf="')[1].split('"')[0]
    assert csrf
    return cookie, csrf


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_actions_need_the_token_and_the_csrf_header(server: str, backend: Backend, tmp_path: Path) -> None:
    tid = failed_task(backend, tmp_path)
    url = f"{server}/api/tasks/{tid}/cancel"
    # Without credentials, with a wrong bearer token, with a wrong sign-in: refused
    assert call("POST", url)[:2] == (401, {"error": "sign in with the dashboard's token to retry, cancel or delete"})
    assert call("POST", url, {"Authorization": "Bearer nope-nope-nope"})[0] == 401
    assert call("POST", f"{server}/login", data=b"token=wrong-token&next=/")[0] == 401
    cookie, csrf = _login(server, TOKEN)
    # The session cookie alone (a cross-site form or fetch) is not enough: CSRF header needed
    assert call("POST", url, {"Cookie": cookie})[0] == 403
    assert call("POST", url, {"Cookie": cookie, "X-CSRF-Token": "0" * 64})[0] == 403
    assert call("POST", url, {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.example"})[0] == 403
    forged = cookie.split(".")[0] + ".00"
    assert call("POST", url, {"Cookie": forged, "X-CSRF-Token": csrf})[0] == 401
    assert backend.get_task(tid).state.value == "failed"  # nothing happened
    # With the session and its CSRF value: done
    status, body, _ = call("POST", url, {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": server})
    assert status == 200 and body["done"] is True and body["state"] == "cancelled"
    # A script with the bearer token needs no cookie
    status, body, _ = call("POST", f"{server}/api/tasks/{tid}/delete", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body["done"] is True
    assert call("GET", f"{server}/api/tasks/{tid}")[0] == 404


def test_retry_runs_in_the_dashboard_process_for_sqlite(server: str, backend: Backend, tmp_path: Path) -> None:
    tid = failed_task(backend, tmp_path)
    (tmp_path / f"{tid}.fixed").touch()  # the jobs succeed from now on
    status, body, _ = call("POST", f"{server}/api/tasks/{tid}/retry", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body["done"] is True
    assert backend.get_task(tid).wait(timeout=60).state.value == "succeeded"
    assert call("POST", f"{server}/api/tasks/{tid}/retry", {"Authorization": f"Bearer {TOKEN}"})[0] == 409


def test_events_stream_progress(server: str, backend: Backend, tmp_path: Path) -> None:
    tid = f"sse-{uuid.uuid4().hex[:8]}"
    with backend.create_task(tid) as t:
        t.add_job(web_jobs.gated, str(tmp_path / "open"))
    with urllib.request.urlopen(f"{server}/api/events?id={tid}&id=gone-{tid}", timeout=30) as stream:
        lines = iter(stream)
        events: list[tuple[str, Any]] = []

        def next_event() -> tuple[str, Any]:
            kind, payload = "", None
            for raw in lines:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    payload = json.loads(line[6:])
                elif not line and kind:
                    return kind, payload
            raise AssertionError("stream ended")

        events.append(next_event())
        events.append(next_event())
        assert sorted(e[0] for e in events) == ["gone", "progress"]
        (tmp_path / "open").touch()
        while True:
            kind, p = next_event()
            if kind == "progress" and p["state"] == "succeeded":
                assert p["percent"] == 100
                break
    assert call("GET", f"{server}/api/events")[0] == 400


def test_read_only_without_a_token(sqlite_url: str, tmp_path: Path, backend: Backend) -> None:
    tid = failed_task(backend, tmp_path)
    with web_server(sqlite_url, tmp_path, token=None) as url:
        status, body, _ = call("POST", f"{url}/api/tasks/{tid}/retry", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 403 and "read-only" in body["error"]
        _, html, _ = call("GET", f"{url}/")
        assert "read-only" in html and 'name="token"' not in html


def test_mounted_in_a_starlette_app_and_through_wsgi(backend: Backend, tmp_path: Path) -> None:
    import warnings

    from starlette.applications import Starlette
    from starlette.routing import Mount

    from multistep_core.web import create_app, wsgi_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*httpx.*")  # starlette's notice about its test client
        from starlette.testclient import TestClient
    tid = failed_task(backend, tmp_path)
    outer = Starlette(routes=[Mount("/ops/tasks", app=create_app(backend, token=TOKEN))])
    with TestClient(outer) as client:
        page = client.get(f"/ops/tasks/tasks/{tid}")
        assert page.status_code == 200 and 'href="/ops/tasks/static/style.css"' in page.text
        assert client.get(f"/ops/tasks/api/tasks/{tid}").json()["progress"]["state"] == "failed"
        assert client.get("/ops/tasks/static/app.js").status_code == 200
    # WSGI: a2wsgi runs the ASGI app; call it as Flask or Django would
    app = wsgi_app(backend, token=TOKEN)
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"PATH_INFO": f"/api/tasks/{tid}", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    seen: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: seen.append(status)))
    assert seen == ["200 OK"] and json.loads(body)["progress"]["task_id"] == tid
    environ = {"SCRIPT_NAME": "/ops/tasks", "PATH_INFO": "/", "REQUEST_METHOD": "GET"}  # DispatcherMiddleware's split
    setup_testing_defaults(environ)
    html = b"".join(app(environ, lambda status, headers, exc_info=None: seen.append(status))).decode()
    assert seen[-1] == "200 OK" and 'href="/ops/tasks/static/style.css"' in html


def test_cli_help_and_short_token() -> None:
    from click.testing import CliRunner

    from multistep_core.cli import cli

    out = CliRunner().invoke(cli, ["web", "--help"])
    assert out.exit_code == 0 and "--token" in out.output and "MULTISTEP_WEB_TOKEN" in out.output
    assert "127.0.0.1" in out.output and "8642" in out.output
    from multistep_core.errors import ConfigurationError
    from multistep_core.web import create_app

    with pytest.raises(ConfigurationError, match="at least 8"):
        create_app("memory", token="short")


def test_the_command_line_works_without_the_web_extra() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['starlette'] = sys.modules['uvicorn'] = None; "
        "from multistep_core.cli import main; main(['-b', 'memory', 'web'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and 'pip install "multistep[web]"' in out.stderr, out.stderr
    assert "starlette" in out.stderr


@pytest.mark.usefixtures("redis_service")
def test_the_benchmark_runs_at_a_tiny_size() -> None:
    """benchmarks/web.py end to end at 60 tasks on both stores: every request answered, every
    figure reported (no timing is checked: benchmarks are never timed assertions)."""
    import subprocess
    import sys

    from services import REDIS_ADDR

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.web", "--sizes", "60", "--repeat", "2", "--json",
         "--redis", f"redis://{REDIS_ADDR}/11"], capture_output=True, text=True, timeout=120, cwd=root,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["store"], r["tasks"]) for r in rows] == [("sqlite", 60), ("redis", 60)]
    for r in rows:
        assert set(r["requests"]) == {"list", "api", "api failed", "api cancelled", "api search", "task"}
        assert all(v["p50_ms"] > 0 and v["p95_ms"] >= v["p50_ms"] for v in r["requests"].values())
