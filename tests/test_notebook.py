"""notebooks/quickstart.ipynb: valid nbformat 4 with no stored outputs, and it runs top to bottom.

The code cells are concatenated into one script and run in a fresh process (no jupyter needed):
the notebook's own asserts check the training run, the scores and the generated text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
DONE = "quickstart: all checks passed"  # printed by the notebook's last cell


def load_notebook() -> dict:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def test_notebook_is_valid_nbformat4_without_outputs() -> None:
    nb = load_notebook()
    assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
    assert isinstance(nb["metadata"], dict) and nb["cells"]
    ids = [cell.get("id") for cell in nb["cells"]]
    if nb["nbformat_minor"] >= 5:
        assert all(ids) and len(set(ids)) == len(ids), "cell ids must be present and unique"
    kinds = {cell["cell_type"] for cell in nb["cells"]}
    assert kinds <= {"code", "markdown", "raw"} and {"code", "markdown"} <= kinds
    for i, cell in enumerate(nb["cells"]):
        assert isinstance(cell["metadata"], dict) and source(cell).strip(), f"cell {i}"
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {i} has stored outputs: clear them"
            assert cell["execution_count"] is None, f"cell {i} has an execution count"
            assert not source(cell).lstrip().startswith(("%", "!")), f"cell {i}: no magics"
        else:
            assert "outputs" not in cell and "execution_count" not in cell, f"cell {i}"
    try:  # the full schema check, where nbformat happens to be installed (not a dependency)
        import nbformat
    except ImportError:
        return
    nbformat.validate(nbformat.reads(NOTEBOOK.read_text(encoding="utf-8"), as_version=4))


@pytest.mark.slow
def test_notebook_runs(tmp_path: Path) -> None:
    nb = load_notebook()
    code = "\n\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "code")
    script = tmp_path / "quickstart.py"
    script.write_text(code + "\n", encoding="utf-8")
    env = {**os.environ, "MPLBACKEND": "Agg", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    assert DONE in proc.stdout
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith("hat-quickstart-")]
    assert not left, f"the notebook left its run directory behind: {left}"
