"""``python -m circuitkit.list``: the command that lists the installed plugins (:mod:`circuitkit.listing`)."""

import sys

from circuitkit.listing import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        sys.exit(0)
