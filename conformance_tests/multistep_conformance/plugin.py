"""pytest plugin (entry point ``pytest11``): the suite's command-line options.

    python -m pytest --pyargs multistep_conformance --multistep-backend=rq+redis://127.0.0.1:6379/15

``--multistep-backend`` defaults to ``$MULTISTEP_BACKEND``, else ``memory``.
``--multistep-differential-examples=N`` runs N random sequences in each differential test
(default: ``$MULTISTEP_DIFFERENTIAL_EXAMPLES``, else the test class's ``examples``).
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("multistep", "multistep conformance suite")
    group.addoption(
        "--multistep-backend",
        default=os.environ.get("MULTISTEP_BACKEND", "memory"),
        help="backend string to run the conformance suite against (default: $MULTISTEP_BACKEND or memory)",
    )
    group.addoption(
        "--multistep-differential-examples",
        type=int,
        default=None,
        metavar="N",
        help="random sequences per differential test (default: $MULTISTEP_DIFFERENTIAL_EXAMPLES, else the class's "
        "examples, 40); raise it for a longer hunt",
    )
    group.addoption(
        "--multistep-chaos",
        choices=("short", "long", "off"),
        default=None,
        help="size of the chaos test (default: $MULTISTEP_CHAOS, else short: a minute or two per backend; "
        "long: 50 tasks x 200 jobs with kills for five minutes)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "conformance: a test from the multistep conformance suite")
    if not config.pluginmanager.hasplugin("timeout"):  # the chaos test's mark, without pytest-timeout
        config.addinivalue_line("markers", "timeout(seconds): a time limit (used when pytest-timeout is installed)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the crash tests a class's ``crash_scope`` leaves out (see CrashTests)."""
    from .crash import outside_crash_scope

    out = [item for item in items if outside_crash_scope(item)]
    if out:
        config.hook.pytest_deselected(items=out)
        items[:] = [item for item in items if not outside_crash_scope(item)]
