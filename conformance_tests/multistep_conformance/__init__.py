"""The multistep conformance suite: the contract every backend must keep, as pytest tests.

Run it against any backend string::

    python -m pytest --pyargs multistep_conformance --multistep-backend=sqlite:///tmp/t.db

or adopt it for your own backend in your own test file::

    from multistep_conformance import BackendTests, DifferentialTests, StoreTests

    class TestMyStore(StoreTests):
        backend_string = "mypkg.backend:factory"

    class TestMyBackend(BackendTests):
        backend_string = "mypkg.backend:factory"

    class TestMyStoreAgainstTheReference(DifferentialTests):   # a store with native transitions
        backend_string = "mypkg.backend:factory"

Worker processes are started by the suite (``multistep worker multistep_conformance.jobs``)
for backends whose jobs run outside the test process.
"""

from .differential import DifferentialMachine, DifferentialTests, Disagreement, Pair, machine_for
from .differential_ops import OPS, Op, ReferenceStore, Run
from .harness import Harness, Journal, eventually
from .store_suite import StoreMachine, StoreTests
from .suite import BackendTests

__all__ = [
    "OPS", "BackendTests", "DifferentialMachine", "DifferentialTests", "Disagreement", "Harness", "Journal", "Op",
    "Pair", "ReferenceStore", "Run", "StoreMachine", "StoreTests", "eventually", "machine_for",
]
