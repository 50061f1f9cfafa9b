"""``scripts/gpu_checks.sh`` runs on a short device lease, and has not run on a GPU yet: each
command it would run is checked here on a CPU, so that a lease is not spent on a misspelt
flag, a config key that does not exist or a test file that moved. The scripts' arguments are
parsed (not run); the hydra overrides of its training runs are composed and validated."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = (ROOT / "scripts" / "gpu_checks.sh").read_text()


def expand(text: str, out: Path) -> list[str]:
    return shlex.split(text.replace("$OUT", str(out)).replace('"', ""))


def steps(out: Path) -> dict[str, list[str]]:
    """Each ``step NAME SECONDS CMD...`` line -> NAME: CMD's words after ``$PY``."""
    found = {}
    for line in SCRIPT.splitlines():
        words = line.strip().split(maxsplit=3)
        if len(words) == 4 and words[0] == "step" and words[3].startswith("$PY "):
            found[words[1]] = expand(words[3][len("$PY ") :], out)
    return found


class Parsed(Exception):
    """Raised by the patched ``ArgumentParser.parse_args`` once the arguments parsed."""


def parse_script_args(path: Path, argv: list[str], monkeypatch) -> None:
    """Parse ``argv`` with the script's own parser, running nothing after it: its
    ``parse_args()`` when it has one (with the checks it makes), else its ``main()`` stopped
    right after ``ArgumentParser.parse_args``. Bad arguments exit with status 2."""
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)  # (its dataclasses look it up)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    if hasattr(module, "parse_args"):
        module.parse_args()
        return
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        original(self, *args, **kwargs)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed):
        module.main()


def test_every_benchmark_step_parses(tmp_path: Path, monkeypatch) -> None:
    found = steps(tmp_path)
    scripts = {name: argv for name, argv in found.items() if argv[0].startswith("scripts/")}
    assert {"bench_pooling", "bench_train", "bench_generate", "choice_fused"} <= set(scripts)
    for argv in scripts.values():
        parse_script_args(ROOT / argv[0], argv[1:], monkeypatch)
        monkeypatch.undo()  # each script with the real parser


def test_the_gpu_test_files_exist_and_have_gpu_tests(tmp_path: Path) -> None:
    argv = steps(tmp_path)["gpu_tests"]
    files = [a for a in argv if a.startswith("tests/")]
    assert argv[:4] == ["-m", "pytest", "-q", "-m"] and argv[4] == "gpu" and files
    for name in files:
        assert "pytest.mark.gpu" in (ROOT / name).read_text(), name


@pytest.mark.parametrize("variable", ["FSDP_RUN", "FSDP_CONTINUE"])
def test_the_fsdp_runs_compose(variable: str, tmp_path: Path) -> None:
    """The hydra overrides of the FSDP smoke runs (and the ones the step adds) name real
    config keys with valid values."""
    from hydra import compose, initialize_config_dir

    import hat.cli.continue_  # noqa: F401  (stores the continue config's schema)
    from hat.cli.common import config_dir, register_configs
    from hat.training.config import resolve_config

    command = re.search(rf'^\s*{variable}="([^"]+)"', SCRIPT, re.MULTILINE).group(1)
    words = expand(command, tmp_path)
    module = words[words.index("-m", words.index("--nproc_per_node")) + 1]
    config_name = {"hat.cli.train": "train", "hat.cli.continue_": "continue"}[module]
    overrides = words[words.index(module) + 1 :]
    extra = re.findall(rf"\${variable} ([^&\"]+?)(?: &&|\")", SCRIPT)  # e.g. trainer.steps=10
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for more in [[], *(e.split() for e in extra)]:
            cfg = compose(config_name=config_name, overrides=[*overrides, *more])
            assert cfg.trainer.output_dir.startswith(str(tmp_path))
            if config_name == "train":  # the checks hat-train makes before it starts
                resolve_config(cfg)


def test_each_call_fits_one_device_command_and_brings_back_one_file() -> None:
    """A device command runs at most 600 s and brings back at most 8 files from $OUT: the step
    limits of each call (`core bench`, `compile`, `extra`) leave a minute for installing, and
    the results come back as one archive (the steps write to a folder of their own)."""
    limits: dict[str, int] = {}
    part = None
    for line in SCRIPT.splitlines():
        if m := re.match(r"if want (\w+)", line):
            part = m.group(1)
        if m := re.match(r"\s*step \w+ (\d+) ", line):
            limits[part] = limits.get(part, 0) + int(m.group(1))
    assert set(limits) == {"core", "bench", "compile", "extra"}
    for call in (("core", "bench"), ("compile",), ("extra",)):
        assert sum(limits[p] for p in call) <= 540, call
    assert re.search(r'^OUT="\$\(mktemp -d\)"', SCRIPT, re.MULTILINE)
    back = re.findall(r"\$BACK/([\w.-]+)", SCRIPT)
    assert set(back) == {".gpu_results.part", "gpu_results.tgz"}
