"""The dashboard in a real browser (Playwright driving Debian's Chromium), on two backends:
the embedded SQLite backend (jobs on this process's threads; a retry runs in the dashboard's
process) and RQ on Redis (jobs on a real `multistep worker` process).

Progress is controlled by the test: gated jobs end only when the test creates their gate
file, and every wait is Playwright's wait for a condition on the page, never a sleep.
Screenshots go to the test's temporary directory (MULTISTEP_SCREENSHOTS overrides it).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import web_jobs
from services import REDIS_ADDR
from web_support import CHROMIUM_ARGS, TOKEN, chromium_path, missing, need_web, web_server, worker

from multistep_core import Backend, connect

TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_web()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install playwright)")
    exe = chromium_path()
    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture(scope="module", params=["sqlite", "rq"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Backend, str]]:
    """(backend of this test process, dashboard URL) for one backend kind."""
    need_web()
    tmp = tmp_path_factory.mktemp(f"web-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'tasks.db'}"
        backend = connect(url, threads=8)
        with web_server(url, tmp) as base:
            yield backend, base
        backend.close()
        return
    request.getfixturevalue("redis_service")
    try:
        import rq  # noqa: F401
    except ImportError:
        missing('rq is not installed (pip install "multistep[rq]")')
    tag = uuid.uuid4().hex[:6]
    url = f"rq+redis://{REDIS_ADDR}/10?prefix=msweb{tag}&queue_prefix=msweb{tag}:"
    backend = connect(url)
    try:
        with worker(url, tmp, concurrency=2), web_server(url, tmp) as base:
            yield backend, base
    finally:
        for p in backend.list_tasks(limit=10_000):
            backend.store.delete(p.task_id)
        backend.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    dialogs: list[str] = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))  # an alert() would be an injection
    try:
        yield pg
    finally:
        assert dialogs == [], f"the page opened dialogs (script injection?): {dialogs}"
        ctx.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    d = Path(os.environ.get("MULTISTEP_SCREENSHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def test_list_shows_a_running_task_reach_100_percent_without_reload(
    site: tuple[Backend, str], page: Any, tmp_path: Path, shots: Path
) -> None:
    expect = _expect()
    backend, base = site
    # Given a task of four gated jobs and one finalizer, none of them able to end yet
    tid = f"live-{uuid.uuid4().hex[:8]}"
    gates = [tmp_path / f"gate-{i}" for i in range(4)]
    with backend.create_task(tid) as task:
        for g in gates:
            task.add_job(web_jobs.gated, str(g))
        task.add_finalization_job(web_jobs.fin)
    # When the list is open, filtered to it
    page.goto(f"{base}/?q={tid}")
    page.evaluate("window.__sameDocument = true")
    row = page.locator(f'tr[data-task-id="{tid}"]')
    expect(row.locator('[data-field="percent"]')).to_have_text("0 %")
    expect(row.locator('[data-field="state"]')).to_have_text("running")
    # Then the bar follows the jobs the test lets end: 2 of 5 steps, then all of them
    gates[0].touch()
    gates[1].touch()
    expect(row.locator('[data-field="percent"]')).to_have_text("40 %")
    expect(row.locator('[data-field="jobs"]')).to_have_text("2/4")
    page.screenshot(path=str(shots / f"list-running-{_kind(base, backend)}.png"), full_page=True)
    gates[2].touch()
    gates[3].touch()
    expect(row.locator('[data-field="percent"]')).to_have_text("100 %")
    expect(row.locator('[data-field="state"]')).to_have_text("succeeded")
    expect(row.locator("progress")).to_have_js_property("value", 100)
    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    page.screenshot(path=str(shots / f"list-done-{_kind(base, backend)}.png"), full_page=True)


def _kind(base: str, backend: Backend) -> str:
    return backend.name.replace("+", "-")


def _failed_task(backend: Backend, tmp_path: Path) -> tuple[str, Path]:
    tid = f"reindex-{uuid.uuid4().hex[:8]}"
    fixed = tmp_path / f"{tid}.fixed"
    with backend.create_task(tid) as task:
        for i in range(3):
            task.add_job(web_jobs.flaky, i, str(fixed), "xss", "j1", f"task-{i}", "<img src=x onerror=alert(2)>")
        for i in range(3, 5):
            task.add_job(web_jobs.flaky, i, str(fixed), "disk")
        task.add_finalization_job(web_jobs.fin)
        task.add_finalization_job(web_jobs.fin)
    assert task.wait(timeout=60).state.value == "failed"
    return tid, fixed


def test_failed_task_grouped_refused_without_token_then_retried_with_it(
    site: tuple[Backend, str], page: Any, tmp_path: Path, shots: Path
) -> None:
    expect = _expect()
    backend, base = site
    tid, fixed = _failed_task(backend, tmp_path)
    # Given the failed task's page
    page.goto(f"{base}/")
    page.get_by_role("link", name=tid).click()
    expect(page.locator("#task [data-field='state']")).to_have_text("failed")
    # Then its failures are grouped by type and message, with counts, arguments, a traceback
    groups = page.locator(".failure-group")
    expect(groups).to_have_count(2)
    xss = groups.nth(0)
    expect(xss.locator(".count")).to_have_text("3 \u00d7")
    expect(xss.locator(".message")).to_have_text(web_jobs.XSS)  # shown as text, never run
    expect(xss.locator("code.args").first).to_contain_text('"j1", "task-0", "<img src=x onerror=alert(2)>"')
    expect(groups.nth(1).locator(".message")).to_have_text("disk full on shard 7")
    expect(groups.nth(1).locator(".count")).to_have_text("2 \u00d7")
    assert page.locator("main img").count() == 0 and page.locator("script").count() == 1
    xss.locator("summary").click()
    expect(xss.locator("pre.traceback")).to_contain_text("ValueError: <script>alert(1)</script>")
    expect(page.locator("#finalizers li")).to_have_count(2)
    expect(page.locator("#finalizers li .state").first).to_have_text("pending")
    page.screenshot(path=str(shots / f"task-failed-{_kind(base, backend)}.png"), full_page=True)
    # When retry is asked without signing in: confirmed, then refused by the server
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#confirm-text")).to_contain_text(f"Retry task {tid}?")
    page.locator("#confirm-yes").click()
    expect(page.locator("#flash")).to_have_text(re.compile(r"refused \(401\): sign in with the dashboard's token"))
    # ... and a forged request from the page without the CSRF value is refused too
    status = page.evaluate(
        "async (u) => (await fetch(u, {method: 'POST'})).status", f"{base}/api/tasks/{tid}/cancel"
    )
    assert status == 401
    assert backend.get_task(tid).state.value == "failed"
    # When signed in with the token, the jobs fixed, and retry confirmed
    page.locator("#login input[name=token]").fill(TOKEN)
    page.locator("#login button").click()
    expect(page.locator(".signed-in")).to_be_visible()
    fixed.touch()
    page.get_by_role("button", name="Retry").click()
    page.locator("#confirm-no").click()  # "Keep it" does nothing
    expect(page.locator("#flash")).to_be_hidden()
    page.get_by_role("button", name="Retry").click()
    page.locator("#confirm-yes").click()
    # Then the task runs again and succeeds, seen live on the page
    expect(page.locator("#flash")).to_contain_text("retry of task")
    expect(page.locator("#task [data-field='state']")).to_have_text("succeeded")
    expect(page.locator("#task [data-field='percent']")).to_have_text("100 %")
    expect(page.get_by_role("button", name="Retry")).to_be_hidden()  # only a failed task can be retried
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    assert backend.get_task(tid).progress().finalizers_done == 2
    page.reload()
    expect(page.locator("#no-failures")).to_be_visible()
    expect(page.locator("#resolved-failures")).to_contain_text("resolved by a later attempt")
    expect(page.locator("#finalizers li .state")).to_have_text(["succeeded", "succeeded"])
    page.screenshot(path=str(shots / f"task-retried-{_kind(base, backend)}.png"), full_page=True)


def test_rejected_messages_and_delete_with_confirmation(site: tuple[Backend, str], page: Any) -> None:
    expect = _expect()
    backend, base = site
    import time

    backend.store.reject('{"v":1,"task":"x","fn":"os:system <script>alert(4)</script>"}', "forged <i>message</i>", time.time())
    page.goto(f"{base}/rejected")
    expect(page.locator("#rejected .reason").first).to_have_text("forged <i>message</i>")
    expect(page.locator("#rejected pre.raw").first).to_contain_text("<script>alert(4)</script>")
    tid = f"gone-{uuid.uuid4().hex[:8]}"
    with backend.create_task(tid):
        pass
    page.goto(f"{base}/tasks/{tid}")
    page.locator("#login input[name=token]").fill(TOKEN)
    page.locator("#login button").click()
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("#confirm-text")).to_contain_text("cannot be undone")
    page.locator("#confirm-yes").click()
    expect(page.locator("#flash")).to_have_text(f"task {tid} deleted")
    page.wait_for_url(f"{base}/")
    assert backend.store.progress(tid) is None
