"""Fan-in benchmarks (``python benchmarks/fanin.py --help``)."""
