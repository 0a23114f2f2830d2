"""Fan-in benchmarks (``python benchmarks/fanin.py --help``, or ``python -m benchmarks.fanin``),
and the web dashboard's (``python benchmarks/web.py --help``: ``web``, on its own).

The benchmark process:

* ``fanin``: the command line (argparse, main);
* ``compare``: one configuration (a queue at N jobs) run through every side, and its record;
* ``queue_bench``: ``QueueBench``, the three sides (raw, native, multistep) and create-only;
* ``queues``: one ``QueueBench`` per queue (RQ, Celery and Dramatiq on Redis or RabbitMQ);
* ``measure``: Redis / RabbitMQ memory sampling, one run's figures, medians;
* ``procs``: worker processes (start, stop, wait), the log line, the checkout check;
* ``report``: the Markdown tables, and reading saved ``--json`` results back.

Apart from the fan-in benchmark: ``observability`` (what tracing and metrics cost; its jobs in
``obs_jobs``) and ``trace_tree`` (prints a small task's trace, as in docs/observability.md; its
jobs in ``trace_jobs``).

Imported by the worker processes (nothing else here is): ``common`` (what every job and
callback does), ``rq_jobs``, ``celery_app``, ``dramatiq_app``, ``jobs_module`` (multistep's).
"""
