"""``python -m multistep_core.cli`` is ``multistep``."""

from . import main

main()
