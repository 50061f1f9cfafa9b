"""Print every preset's parameter counts and FLOPs per byte: ``python scripts/params.py [--json]``.

A thin wrapper around the ``hat-params`` console script (``hat.cli.params.main``).
"""

from hat.cli.params import main

if __name__ == "__main__":
    raise SystemExit(main())
