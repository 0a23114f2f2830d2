"""Job functions for the core unit tests."""

from multistep_core import current_task, job

CALLS: list[str] = []


@job
def add(a: int, b: int) -> int:
    CALLS.append(f"add {a} {b}")
    return a + b


@job(retries=2)
def flaky_twice(label: str) -> None:
    from multistep_core import current_job

    CALLS.append(f"{label}:{current_job().attempt}")
    if current_job().attempt <= 2:
        raise RuntimeError("not yet")


@job
def summarize() -> None:
    CALLS.append(f"sum {sum(v for v in current_task().results().values() if v)}")
