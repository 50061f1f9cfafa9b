"""``--compare-ref REV`` of the benchmark scripts: the same measurement on an older revision and
on the working tree, interleaved, so that both see the same machine load.

The revision is exported with ``git archive`` into a temporary directory. One worker process
per side runs the calling script with ``--worker`` (``PYTHONPATH`` points at that side's tree,
so ``import hat`` is that side's code); each sets its models up once, then measures on demand.
Every round asks for each measurement from both sides back to back (which side goes first
alternates), so a pair of numbers is taken seconds apart. The report gives every round's
numbers, the medians, the new/old ratios (of the medians, and the median of the per-round
ratios) and whether the sides agreed on each measurement's fingerprint (e.g. a hash of the
generated text: both did the same work).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
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


class Worker:
    """One side: ``script --worker args`` with ``import hat`` from ``tree``."""

    def __init__(self, script: str, args: list[str], tree: Path) -> None:
        path = os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(script).resolve()), "--worker", *args],
            env={**os.environ, "PYTHONPATH": path},
            cwd=tree,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.names: list[str] = self._read()["measurements"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a --compare-ref worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def measure(self, name: str) -> dict:
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def serve(measurements: dict[str, Callable[[], tuple[float, str]]]) -> None:
    """The worker's side: announce the measurements, then run each one asked for on stdin,
    answering ``{"value": number, "fingerprint": text}`` on stdout."""
    out = sys.stdout
    sys.stdout = sys.stderr  # whatever else prints must not break the protocol
    print(json.dumps({"measurements": list(measurements)}), file=out, flush=True)
    for line in sys.stdin:
        value, fingerprint = measurements[line.strip()]()
        print(json.dumps({"value": value, "fingerprint": fingerprint}), file=out, flush=True)


def compare(
    script: str, worker_args: list[str], rev: str, rounds: int, higher_is_better: bool
) -> dict:
    """Interleaved rounds of the measurements of ``script --worker worker_args`` on ``rev``
    (old) and on the working tree (new)."""
    with exported(rev) as (old_tree, sha):
        workers = {"old": Worker(script, worker_args, old_tree)}
        workers["new"] = Worker(script, worker_args, REPO)
        try:
            names = workers["new"].names
            per_round = []
            for i in range(rounds):
                result: dict = {"round": i}
                for j, name in enumerate(names):
                    order = ["old", "new"] if (i + j) % 2 == 0 else ["new", "old"]
                    result[name] = {side: workers[side].measure(name) for side in order}
                per_round.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
        finally:
            for worker in workers.values():
                worker.close()
    summary = {}
    for name in names:
        old = [r[name]["old"]["value"] for r in per_round]
        new = [r[name]["new"]["value"] for r in per_round]
        summary[name] = {
            "old": old,
            "new": new,
            "old_median": statistics.median(old),
            "new_median": statistics.median(new),
            "new_over_old": round(statistics.median(new) / statistics.median(old), 3),
            "new_over_old_per_round_median": round(
                statistics.median(n / o for n, o in zip(new, old)), 3
            ),
            "same_fingerprint": all(
                r[name]["old"]["fingerprint"] == r[name]["new"]["fingerprint"] for r in per_round
            ),
        }
    return {
        "ref": rev,
        "ref_commit": sha,
        "higher_is_better": higher_is_better,
        "rounds": rounds,
        "summary": summary,
    }
