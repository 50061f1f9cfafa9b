"""``python scripts/evaluate.py ...`` = ``hat-eval ...`` (see hat/cli/evaluate.py)."""

from hat.cli.evaluate import main

if __name__ == "__main__":
    main()
