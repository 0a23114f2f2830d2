"""``python -m multistep_dramatiq``: one Dramatiq worker process, started by ``multistep worker``."""

import sys

from multistep_dramatiq.worker import main

sys.exit(main())
