"""nox sessions: tests per backend, the conformance suite, typing, lint, benchmarks.

    nox -l                      # list sessions
    nox -s tests                # the whole test suite (what CI runs)
    nox -s core                 # the core alone, with no queue library installed
    nox -s "conformance(backend='rq')"
    nox -s web                  # the web dashboard, in Chromium too
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typing", "core", "tests"]

BACKENDS = {
    "memory": "memory",
    "sqlite": "sqlite:///.nox/conformance.db",
    "redis": "redis://127.0.0.1:6379/12",
    "rq": "rq+redis://127.0.0.1:6379/15",
    "celery-redis": "celery+redis://127.0.0.1:6379/14",
    "celery-amqp": "celery+amqp://guest:guest@127.0.0.1:5672//?store=redis://127.0.0.1:6379/14&prefix=msamqp",
    "dramatiq-redis": "dramatiq+redis://127.0.0.1:6379/13",
    "dramatiq-amqp": "dramatiq+amqp://guest:guest@127.0.0.1:5672/?store=redis://127.0.0.1:6379/13&prefix=msamqp",
}
EXTRA = {"memory": "test", "sqlite": "test", "redis": "redis,test"}


@nox.session
def tests(session: nox.Session) -> None:
    """Everything, as the README's quick start runs it."""
    session.install("-e", ".[all,test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def core(session: nox.Session) -> None:
    """The core and the embedded backends with no queue library installed."""
    session.install("-e", ".[test]")
    session.run(
        "python", "-m", "pytest", "tests/test_core.py", "tests/test_cli.py", "tests/test_conformance_embedded.py",
        *session.posargs,
    )


@nox.session
@nox.parametrize("backend", list(BACKENDS))
def conformance(session: nox.Session, backend: str) -> None:
    """The shipped conformance suite against one backend, as a third party would run it."""
    extra = EXTRA.get(backend, backend.split("-")[0] + ",test")
    session.install("-e", f".[{extra}]")
    session.run(
        "python", "-m", "pytest", "--pyargs", "multistep_conformance",
        f"--multistep-backend={BACKENDS[backend]}", "-p", "no:cacheprovider", *session.posargs,
    )


@nox.session
def web(session: nox.Session) -> None:
    """The web dashboard: API and security tests, the browser tests (Chromium at /usr/bin/chromium)."""
    session.install("-e", ".[web,rq,test]")
    session.run(
        "python", "-m", "pytest", "tests/test_listing.py", "tests/test_web.py", "tests/test_web_browser.py",
        *session.posargs,
    )


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on the core, the three adapters and the conformance suite ([tool.mypy] packages)."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "multistep_core", "adapters", "conformance_tests", "tests", "benchmarks", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Fan-in benchmarks: multistep against each queue's raw throughput and its own fan-in."""
    session.install("-e", ".[all]")
    session.run("python", "benchmarks/fanin.py", *(session.posargs or ["--jobs", "10000"]))
