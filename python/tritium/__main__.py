"""``python -m tritium ARGS...``: the ``tritium`` command line (``serve``, ``worker``)."""

import sys

from . import _tritium


def main() -> int:
    try:
        return _tritium.cli(sys.argv[1:])
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
