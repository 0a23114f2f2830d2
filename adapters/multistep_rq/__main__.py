"""``python -m multistep_rq``: one RQ worker process, started by ``multistep worker -c N``."""

import sys

from multistep_rq.worker import main

sys.exit(main())
