"""Thin wrapper: ``python scripts/generate.py MODEL --prompt ...`` == ``hat-generate``."""

from hat.cli.generate import main

if __name__ == "__main__":
    main()
