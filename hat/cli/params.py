"""``hat-params``: parameter counts and training FLOPs per byte of every preset.

    hat-params                 # rich tables
    hat-params --json          # the same numbers as JSON
    hat-params 3b bpe_3b       # only these presets

Models are built on the meta device, so even the 9B preset costs no memory (``hat.flops``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from hat.cli.common import cli_errors
from hat.config import preset_names
from hat.flops import (
    PAPER_BYTES_PER_TOKEN,
    PAPER_BYTES_PER_WORD,
    PAPER_SEQ_BYTES,
    print_report,
    report,
    write_json,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``hat-params``."""
    parser = argparse.ArgumentParser(
        prog="hat-params",
        description="Parameter counts (built on the meta device) and training FLOPs per byte "
        "of every preset.",
    )
    parser.add_argument("presets", nargs="*", help=f"preset names (default: all): {preset_names()}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--bytes-per-word",
        type=float,
        default=PAPER_BYTES_PER_WORD,
        help="HAT compression for FLOPs (default %(default)s, the paper's English)",
    )
    parser.add_argument(
        "--bytes-per-token",
        type=float,
        default=PAPER_BYTES_PER_TOKEN,
        help="twin compression for FLOPs (default %(default)s, the paper's 64k BPE)",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=PAPER_SEQ_BYTES,
        help="training row in bytes, for attention FLOPs (default %(default)s)",
    )
    args = parser.parse_args(argv)
    with cli_errors("hat-params"):
        data = report(args.presets, args.bytes_per_word, args.bytes_per_token, args.seq_len)
    write_json(data) if args.json else print_report(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
