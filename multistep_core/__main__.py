"""``python -m multistep_core ...``: the same as the ``multistep`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
