"""The Starlette application: HTML pages, the JSON API under ``/api/``, the live event stream.

Every store call is blocking, so each runs in Starlette's thread pool. Pages render with
Jinja2 (autoescaping on for every template); the browser script (``static/app.js``) follows
progress through ``/api/events`` (server-sent events) and acts through ``/api/tasks/{id}/...``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..backend import Backend
from ..errors import BackendConnectionError, InvalidTransition, MultistepError, TaskNotFound
from ..listing import MAX_IDS, InvalidQuery, TaskQuery
from ..model import TaskState, validate_task_id
from ..registry import lookup
from . import data
from .security import COOKIE, HEADERS, Auth, safe_next

PER_PAGE = 50
ACTIONS = ("retry", "cancel", "delete")
MAX_FORM = 4096  # bytes of a sign-in or sign-out form
KEEPALIVE = 15.0  # seconds between two comments on an idle event stream


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dur(max(0.0, time.time() - ts)) + " ago"


def _dur(secs: float | None) -> str:
    if secs is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if secs >= size:
            return f"{secs / size:.1f} {unit}"
    return f"{secs:.2f} s" if secs < 10 else f"{secs:.0f} s"


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("multistep_core.web", "templates"),
        autoescape=True,  # every id, argument, message and traceback is escaped
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(when=_when, ago=_ago, dur=_dur, json=data.as_json)
    return Jinja2Templates(env=env)


def _query(request: Request) -> TaskQuery:
    q = request.query_params
    try:
        per = int(q.get("limit") or q.get("per") or PER_PAGE)
        if "page" in q:
            offset = (max(1, int(q["page"])) - 1) * per
        else:
            offset = int(q.get("offset") or 0)
    except ValueError:
        raise InvalidQuery("page, offset and limit must be whole numbers") from None
    order = q.get("order") or "newest"
    if order not in ("newest", "oldest"):
        raise InvalidQuery(f"order must be newest or oldest, not {order!r}")
    return TaskQuery(state=q.get("state") or None, search=q.get("q") or None,  # type: ignore[arg-type]
                     newest_first=order == "newest", offset=offset, limit=per)


class Dashboard:
    """The routes, bound to one backend and one token."""

    def __init__(self, backend: Backend, auth: Auth, *, poll: float = 0.5, title: str = "multistep") -> None:
        self.backend = backend
        self.auth = auth
        self.poll = poll
        self.title = title
        self.templates = _templates()

    # -- helpers ---------------------------------------------------------------------
    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await run_in_threadpool(fn, *args)

    def base(self, request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> Response:
        base = self.base(request)
        ctx.update(
            base=base, title=self.title, backend=self.backend.name, now=time.time(),
            actions=self.auth.enabled, signed_in=self.auth.session_nonce(request) is not None,
            csrf=self.auth.csrf_for(request), states=[s.value for s in TaskState],
            here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        )
        resp = self.templates.TemplateResponse(request, name, ctx, status_code=status)
        resp.headers.update(HEADERS)
        return resp

    # -- pages -----------------------------------------------------------------------
    async def tasks(self, request: Request) -> Response:
        try:
            query = _query(request)
        except InvalidQuery as exc:
            return self.render(request, "error.html", 400, message=str(exc))
        page = await self.call(data.tasks_page, self.backend, query)
        return self.render(request, "tasks.html", query=query, page=page,
                           order="newest" if query.newest_first else "oldest")

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        try:
            validate_task_id(task_id)
            info = await self.call(data.task_dict, self.backend, task_id)
        except (TaskNotFound, ValueError) as exc:
            return self.render(request, "error.html", 404, message=str(exc))
        failures = await self.call(data.failure_groups, self.backend, task_id)
        results = None
        if info["options"]["keep_results"]:
            results = await self.call(data.results_dict, self.backend, task_id)
        return self.render(request, "task.html", task_id=task_id, info=info, failures=failures, results=results)

    async def rejected(self, request: Request) -> Response:
        items = await self.call(self.backend.rejected, 200)
        return self.render(request, "rejected.html", items=data.rejected_list(items))

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        token = form.get("token", "")
        back = safe_next(form.get("next"), self.base(request))
        if not self.auth.enabled:
            return self.render(request, "error.html", 403, message="this dashboard is read-only: it was started without a token")
        if not self.auth.token_matches(token):
            return self.render(request, "error.html", 401, message="that is not the dashboard's token")
        resp = RedirectResponse(back, status_code=303)
        resp.set_cookie(COOKIE, self.auth.new_session(), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path=self.base(request) + "/")
        return resp

    async def logout(self, request: Request) -> Response:
        form = await _form(request)
        back = safe_next(form.get("next"), self.base(request))
        resp = RedirectResponse(back, status_code=303)
        if hmac.compare_digest(form.get("csrf", ""), self.auth.csrf_for(request)):
            resp.delete_cookie(COOKIE, path=self.base(request) + "/")
        return resp

    # -- API -------------------------------------------------------------------------
    async def api_tasks(self, request: Request) -> Response:
        try:
            query = _query(request)
        except InvalidQuery as exc:
            return _error(400, str(exc))
        return JSONResponse(await self.call(data.tasks_page, self.backend, query))

    async def api_task(self, request: Request) -> Response:
        task_id = _task_id(request)
        return JSONResponse(await self.call(data.task_dict, self.backend, task_id))

    async def api_failures(self, request: Request) -> Response:
        task_id = _task_id(request)
        await self.call(data.task_dict, self.backend, task_id)  # 404 for a missing task
        return JSONResponse(await self.call(data.failure_groups, self.backend, task_id))

    async def api_results(self, request: Request) -> Response:
        task_id = _task_id(request)
        await self.call(data.task_dict, self.backend, task_id)
        try:
            limit = min(max(int(request.query_params.get("limit") or data.MAX_RESULTS), 1), 10_000)
        except ValueError:
            return _error(400, "limit must be a whole number")
        return JSONResponse(await self.call(data.results_dict, self.backend, task_id, limit))

    async def api_rejected(self, request: Request) -> Response:
        try:
            limit = min(max(int(request.query_params.get("limit") or 100), 1), 1000)
        except ValueError:
            return _error(400, "limit must be a whole number")
        items = await self.call(self.backend.rejected, limit)
        return JSONResponse({"items": data.rejected_list(items)})

    async def api_action(self, request: Request) -> Response:
        task_id = _task_id(request)
        action = request.path_params["action"]
        if action not in ACTIONS:
            return _error(404, f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        verdict = self.auth.may_act(request)
        if not verdict.ok:
            return _error(verdict.status, verdict.message)
        result = await self.call(self._act, task_id, action)
        return JSONResponse(result)

    def _act(self, task_id: str, action: str) -> dict[str, Any]:
        task = self.backend.get_task(task_id)
        if action == "delete":
            return {"task_id": task_id, "action": action, "done": task.delete()}
        if action == "cancel":
            done = task.cancel(by="the web dashboard")
            return {"task_id": task_id, "action": action, "done": done, "state": task.state.value}
        if self.backend.queue.in_process:
            missing = sorted({f.fn for f in task.failures() if f.ref[0] != "x" and lookup(f.fn) is None})
            if missing:
                raise InvalidTransition(
                    f"the {self.backend.name} backend runs retried jobs in the dashboard's process, and these "
                    f"job functions are not registered there: {', '.join(missing)}; start it with "
                    "multistep web --import MODULE"
                )
        task.retry()
        return {"task_id": task_id, "action": action, "done": True, "state": task.state.value}

    async def events(self, request: Request) -> Response:
        ids = list(dict.fromkeys(request.query_params.getlist("id")))
        if not ids or len(ids) > MAX_IDS:
            return _error(400, f"name 1 to {MAX_IDS} tasks with ?id=...")
        for i in ids:
            try:
                validate_task_id(i)
            except ValueError as exc:
                return _error(400, str(exc))
        return StreamingResponse(self._stream(request, tuple(ids)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _stream(self, request: Request, ids: tuple[str, ...]) -> AsyncIterator[str]:
        """``progress`` events (a task's JSON, when it changed) and ``gone`` events (deleted)."""
        last: dict[str, str] = {}
        gone: set[str] = set()
        quiet = time.monotonic()
        yield "retry: 2000\n\n"
        query = TaskQuery(ids=ids, limit=len(ids), count=False)
        while not await request.is_disconnected():
            page = await self.call(self.backend.store.page_tasks, query)
            seen = set()
            for p in page.items:
                seen.add(p.task_id)
                text = json.dumps(data.progress_dict(p), separators=(",", ":"))
                if last.get(p.task_id) != text:
                    last[p.task_id] = text
                    quiet = time.monotonic()
                    yield f"event: progress\ndata: {text}\n\n"
            for tid in ids:
                if tid not in seen and tid not in gone:
                    gone.add(tid)
                    yield f"event: gone\ndata: {json.dumps({'task_id': tid})}\n\n"
            gone -= seen
            if time.monotonic() - quiet > KEEPALIVE:
                quiet = time.monotonic()
                yield ": keepalive\n\n"
            await asyncio.sleep(self.poll)


async def _form(request: Request) -> dict[str, str]:
    """The fields of a small url-encoded form (sign-in, sign-out): no multipart parser needed."""
    raw = await request.body()
    if len(raw) > MAX_FORM:
        raise HTTPException(413, f"form larger than {MAX_FORM} bytes")
    return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}


def _task_id(request: Request) -> str:
    task_id = str(request.path_params["task_id"])
    try:
        return validate_task_id(task_id)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=HEADERS)


async def _on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, str(exc.detail))
    if isinstance(exc, TaskNotFound):
        return _error(404, str(exc))
    if isinstance(exc, BackendConnectionError):
        return _error(503, str(exc))
    if isinstance(exc, InvalidTransition):
        return _error(409, str(exc))
    return _error(400, str(exc))


def build(backend: Backend, auth: Auth, *, poll: float = 0.5, title: str = "multistep") -> Starlette:
    d = Dashboard(backend, auth, poll=poll, title=title)
    routes = [
        Route("/", d.tasks, name="tasks"),
        Route("/tasks/{task_id}", d.task, name="task"),
        Route("/rejected", d.rejected, name="rejected"),
        Route("/login", d.login, methods=["POST"], name="login"),
        Route("/logout", d.logout, methods=["POST"], name="logout"),
        Route("/api/tasks", d.api_tasks, name="api_tasks"),
        Route("/api/tasks/{task_id}", d.api_task, name="api_task"),
        Route("/api/tasks/{task_id}/failures", d.api_failures, name="api_failures"),
        Route("/api/tasks/{task_id}/results", d.api_results, name="api_results"),
        Route("/api/tasks/{task_id}/{action}", d.api_action, methods=["POST"], name="api_action"),
        Route("/api/rejected", d.api_rejected, name="api_rejected"),
        Route("/api/events", d.events, name="api_events"),
        Mount("/static", StaticFiles(packages=[("multistep_core.web", "static")]), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _on_error, MultistepError: _on_error})
    app.state.dashboard = d
    return app
