"""``--compare-ref REV`` of the benchmark scripts: the same measurement on an older revision and
on the working tree, interleaved, so that both see the same machine load.

The revision is exported with ``git archive`` into a temporary directory. Each round runs the
calling script once per side in a fresh subprocess (``--worker``; ``PYTHONPATH`` points at that
side's tree, so ``import hat`` is that side's code), alternating which side goes first. The
worker prints one JSON object: ``metrics`` (named numbers) and ``fingerprints`` (values that
should agree between the sides, e.g. a hash of generated text: both did the same work). The
report gives every round's numbers, the medians, the new/old ratios (of the medians, and the
median of the per-round ratios) and whether each fingerprint agreed in every round.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def exported(rev: str):  # noqa: ANN201
    """A temporary directory holding revision ``rev`` of this repository, importable as
    ``hat`` / ``hat_kernels`` (the package layout ``pip install -e`` sets up)."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if sha.returncode != 0:
        raise SystemExit(f"--compare-ref {rev}: not a commit of {REPO} ({sha.stderr.strip()})")
    with tempfile.TemporaryDirectory(prefix="hat-ref-") as tmp:
        archive = Path(tmp) / "ref.tar"
        subprocess.run(
            ["git", "-C", str(REPO), "archive", "--output", str(archive), sha.stdout.strip()],
            check=True,
        )
        tree = Path(tmp) / "tree"
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        (tree / "hat_kernels").symlink_to("kernels")
        if (tree / "configs").is_dir():
            (tree / "hat" / "conf").symlink_to("../configs")
        yield tree, sha.stdout.strip()


def run_worker(script: Path, args: list[str], tree: Path) -> dict[str, dict]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(script), "--worker", *args],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker failed in {tree}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(
    script: str,
    worker_args: list[str],
    rev: str,
    rounds: int,
    higher_is_better: bool,
) -> dict:
    """Interleaved rounds of ``script --worker worker_args`` on ``rev`` and the working tree."""
    per_round: list[dict] = []
    with exported(rev) as (old_tree, sha):
        sides = {"old": old_tree, "new": REPO}
        for i in range(rounds):
            order = ["old", "new"] if i % 2 == 0 else ["new", "old"]
            result = {"round": i, "first": order[0]}
            for side in order:
                result[side] = run_worker(Path(script).resolve(), worker_args, sides[side])
            per_round.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    summary = {}
    for key in per_round[0]["new"]["metrics"]:
        old = [r["old"]["metrics"][key] for r in per_round]
        new = [r["new"]["metrics"][key] for r in per_round]
        summary[key] = {
            "old_median": statistics.median(old),
            "new_median": statistics.median(new),
            "new_over_old": round(statistics.median(new) / statistics.median(old), 3),
            "new_over_old_per_round_median": round(
                statistics.median(n / o for n, o in zip(new, old)), 3
            ),
        }
    agree = {
        key: all(r["old"]["fingerprints"][key] == r["new"]["fingerprints"][key] for r in per_round)
        for key in per_round[0]["new"]["fingerprints"]
    }
    return {
        "ref": rev,
        "ref_commit": sha,
        "higher_is_better": higher_is_better,
        "rounds": per_round,
        "summary": summary,
        "same_fingerprints": agree,
    }
