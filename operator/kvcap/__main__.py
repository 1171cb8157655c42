"""`python -m kvcap` and the `kvcap` console script."""

from __future__ import annotations

import os
import sys

from kvcap.cli import main as _main


def main() -> None:
    try:
        code = _main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`kvcap models | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    sys.exit(code)


if __name__ == "__main__":
    main()
