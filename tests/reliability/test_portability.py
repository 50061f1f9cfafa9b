"""hat runs on every Python it declares (``requires-python = ">=3.10"``): no 3.11-only call
(``hashlib.file_digest`` was one) in the package, the kernels or the scripts."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hat.manifest import _CHUNK, sha256

REPO = Path(__file__).resolve().parents[2]


def test_code_needs_no_python_newer_than_3_10() -> None:
    pytest.importorskip("vermin")
    run_vermin = "import sys; from vermin import main; sys.exit(main())"
    args = ["-t=3.10-", "--violations", "--no-tips", "hat", "kernels", "scripts"]
    proc = subprocess.run(
        [sys.executable, "-c", run_vermin, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_sha256_matches_hashlib_over_several_chunks(tmp_path: Path) -> None:
    data = random.Random(0).randbytes(2 * _CHUNK + 12_345)  # two full chunks and a part
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(b"")
    assert sha256(path) == hashlib.sha256(b"").hexdigest()
