"""Build ``hat/assets/misspellings.tsv`` (the list behind ``hat.perturb``'s ``misspell``).

    pip download --no-deps codespell==2.4.3 && unzip codespell-2.4.3-py3-none-any.whl 'codespell_lib/data/*'
    python scripts/build_misspellings.py codespell_lib/data/dictionary.txt

Source: codespell's ``dictionary.txt`` ("wrong->right" lines), a derivative of English
Wikipedia's "Lists of common misspellings", licensed CC BY-SA 3.0; so is the file written
here (see ``hat/assets/README.md``). Kept: lowercase ASCII words of at least three letters with
one unambiguous correction that occurs at least ``--min-count`` times in the built-in corpus
(a proxy for "a common English word", so the list applies to ordinary prose), misspellings
that never occur in that corpus (no real-word errors such as "form" for "from"); all of a
word's misspellings, or the first ``--per-word``. Written as ``correct<TAB>misspelling`` lines, sorted.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "hat" / "assets"
WORD = re.compile(r"[a-z]{3,}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("dictionary", type=Path, help="codespell_lib/data/dictionary.txt")
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--per-word", type=int, default=None, help="cap (default: all)")
    p.add_argument("--output", type=Path, default=ASSETS / "misspellings.tsv")
    args = p.parse_args()

    corpus = (ASSETS / "sample_corpus.txt").read_text(encoding="utf-8").lower()
    counts = collections.Counter(re.findall(r"[a-z]+", corpus))
    by_word: dict[str, list[str]] = collections.defaultdict(list)
    for line in args.dictionary.read_text(encoding="utf-8").splitlines():
        wrong, _, right = line.partition("->")
        right = right.strip()
        if not (WORD.fullmatch(wrong) and WORD.fullmatch(right)):  # also drops "a, b," lists
            continue
        if counts[right] >= args.min_count and counts[wrong] == 0:  # never a word of the corpus
            by_word[right].append(wrong)
    rows = sorted((r, w) for r, ws in by_word.items() for w in sorted(ws)[: args.per_word])
    args.output.write_text("".join(f"{r}\t{w}\n" for r, w in rows), encoding="utf-8")
    print(f"{len(rows)} misspellings of {len(by_word)} words -> {args.output}")


if __name__ == "__main__":
    main()
