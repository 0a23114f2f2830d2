"""The benchmark's output: JSON result records read back, and the Markdown tables.

``table`` renders the records of ``--json`` (``benchmarks.compare.record``), live or read
back with ``--table-from`` by ``load``, which also reads files written before the create
keys were renamed (``create_100k_jobs_per_s`` held the rate of whatever ``--create`` was).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OLD_CREATE_RATE = "create_100k_jobs_per_s"


def load(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``--json`` output file, in the current key names."""
    return [upgrade(json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip()]


def upgrade(o: dict[str, Any]) -> dict[str, Any]:
    """Map the old ``create_100k_jobs_per_s`` to ``create_jobs_per_s`` and ``create_jobs``.

    The old key did not say how big the task was; its size is the ``jobs`` of the create run
    (``create_100k``, ``create_<n>``...) whose rate it copied.
    """
    if OLD_CREATE_RATE not in o:
        return o
    o = dict(o)
    rate = o.pop(OLD_CREATE_RATE)
    o.setdefault("create_jobs_per_s", rate)
    if "create_jobs" not in o:
        runs = [v for k, v in o.items() if k.startswith("create_") and isinstance(v, dict)]
        o["create_jobs"] = next((c.get("jobs") for c in runs if rate is not None and c.get("jobs_per_s") == rate), None)
    return o


def short(n: int) -> str:
    """100000 -> 100k, 1000000 -> 1m (as in the record's keys); other sizes as they are."""
    return {100_000: "100k", 1_000_000: "1m"}.get(n, str(n))


def create_column(results: list[dict[str, Any]]) -> str:
    sizes = {o.get("create_jobs") for o in results} - {None}
    return f"create {short(sizes.pop())} jobs/s" if len(sizes) == 1 else "create jobs/s"


def create_cell(o: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """The create rate; with its size when the rows' sizes differ (the column header has none)."""
    cell = fmt(o.get("create_jobs_per_s"))
    if o.get("create_jobs") is not None and len({r.get("create_jobs") for r in results} - {None}) > 1:
        cell += f" ({short(o['create_jobs'])})"
    return cell


def fmt(v: Any, spec: str = ".0f") -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def mb(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:.1f}"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| queue | N | side | enqueue s | s to callback | jobs/s | fan-in ms p50 | peak Redis MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for o in results:
        n = o["jobs"]
        ran = " (all ran)" if o["raw_total_s"] else ""
        lines.append(f"| {o['queue']} | {n} | raw | {fmt(o['raw_enqueue_s'], '.2f')} | "
                     f"{fmt(o['raw_total_s'], '.2f')}{ran} | {fmt(o['raw_jobs_per_s'])} | - | "
                     f"{mb(o['raw_peak_redis_bytes'])} |")
        nt = fmt(o["native_total_s"], ".2f")
        if o.get("native_did_not_finish_in_s") is not None:
            nt = f"did not finish in {o['native_did_not_finish_in_s']:.0f} s ({o['native_jobs_done_at_timeout']} jobs ran)"
        njps = fmt(o["native_jobs_per_s"])
        if o.get("native_jobs_per_s_upper_bound") is not None:
            njps = f"< {o['native_jobs_per_s_upper_bound']:.0f}"
        lines.append(f"| {o['queue']} | {o['native_jobs']} | native | {fmt(o['native_enqueue_s'], '.2f')} | {nt} | "
                     f"{njps} | {fmt(o['native_fanin_latency_ms_p50'], '.1f')} | {mb(o['native_peak_redis_bytes'])} |")
        lines.append(f"| {o['queue']} | {n} | multistep ({o['per_message']}/msg) | {fmt(o['multistep_enqueue_s'], '.2f')} | "
                     f"{fmt(o['multistep_total_s'], '.2f')} | {fmt(o['multistep_jobs_per_s'])} | "
                     f"{fmt(o['fanin_latency_ms_p50'], '.1f')} | {mb(o['multistep_peak_redis_bytes'])} |")
        if o.get("multistep1_total_s") is not None:
            lines.append(f"| {o['queue']} | {n} | multistep (1/msg) | {fmt(o['multistep1_enqueue_s'], '.2f')} | "
                         f"{fmt(o['multistep1_total_s'], '.2f')} | {fmt(o['multistep1_jobs_per_s'])} | "
                         f"{fmt(o['multistep1_fanin_latency_ms_p50'], '.1f')} | {mb(o['multistep1_peak_redis_bytes'])} |")
    lines += ["", "| queue | multistep/raw | multistep/native | (1/msg) /raw | (1/msg) /native | B/job running "
              f"| B/job finished | {create_column(results)} |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for o in results:
        rn = fmt(o["ratio_multistep_native"], ".2f")
        if o.get("ratio_multistep_native_is_lower_bound"):
            rn = "> " + rn
        if o["native_jobs"] != o["jobs"] and o["ratio_multistep_native"] is not None:
            rn += f" (native at N={o['native_jobs']})"
        lines.append(f"| {o['queue']} | {fmt(o['ratio_multistep_raw'], '.2f')} | {rn} | "
                     f"{fmt(o.get('ratio_multistep1_raw'), '.2f')} | {fmt(o.get('ratio_multistep1_native'), '.2f')} | "
                     f"{fmt(o['multistep_bytes_per_job_running'], '.1f')} | "
                     f"{fmt(o['multistep_bytes_per_job_finished'], '.2f')} | {create_cell(o, results)} |")
    creates = [(o["queue"], k, o[k]) for o in results for k in ("create_100k", "create_1m") if k in o]
    if creates:
        lines += ["", "| queue | create | seconds | jobs/s | peak Redis MB | task state MB | broker MB (RabbitMQ) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for q, _k, c in creates:
            lines.append(f"| {q} | {c['jobs']} | {c['seconds']:.2f} | {c['jobs_per_s']:.0f} | "
                         f"{mb(c['peak_redis_bytes'])} | {mb(c['task_store_bytes'])} | {mb(c['broker_bytes'])} |")
    return "\n".join(lines)


def header(results: list[dict[str, Any]]) -> str:
    """The line above the tables of saved results: machine, workers, concurrency, repetitions."""
    conc = max(o["concurrency"] for o in results)
    return (f"{results[0].get('machine', '')}; {results[0]['workers']} worker processes per side, concurrency "
            f"{conc} (RQ: 1); medians of {results[0]['repeat']} runs\n")
