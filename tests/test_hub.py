"""Hub ids and push_to_hub, with huggingface_hub replaced at its API boundary (no network):
``snapshot_download`` and ``HfApi`` are fakes backed by a local folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import hat
from hat.cli import generate as generate_cli
from hat.hub import _parameters_by_part, is_hub_id, model_card, split_revision

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import errors  # noqa: E402


def _hub_error(cls: type, message: str) -> Exception:
    err = cls.__new__(cls)  # HTTP errors want a response object; the message is what matters
    Exception.__init__(err, message)
    return err


class FakeHub:
    """Repositories as folders: ``store/<org>/<name>/<revision>/``; a cache like the real one
    (a snapshot per repository and revision, readable offline once downloaded)."""

    def __init__(self, root: Path) -> None:
        self.store, self.cache = root / "store", root / "cache"
        self.downloads: list[dict] = []
        self.uploads: list[dict] = []

    def snapshot_download(self, repo_id: str, *, revision=None, local_files_only=False, **kw):
        revision = revision or "main"
        self.downloads.append(
            {"repo_id": repo_id, "revision": revision, "local_files_only": local_files_only, **kw}
        )
        cached = self.cache / repo_id / revision
        if local_files_only:
            if not cached.is_dir():
                raise errors.LocalEntryNotFoundError(f"{repo_id} not cached")
            return str(cached)
        if not (self.store / repo_id).is_dir():
            raise _hub_error(errors.RepositoryNotFoundError, f"{repo_id} not found")
        if not (self.store / repo_id / revision).is_dir():
            raise _hub_error(errors.RevisionNotFoundError, f"{revision} not found")
        shutil.rmtree(cached, ignore_errors=True)
        shutil.copytree(self.store / repo_id / revision, cached)
        return str(cached)

    def api(self, token=None):  # noqa: ANN201
        hub = self

        class Api:
            def create_repo(self, repo_id, private=None, exist_ok=False, token=None):  # noqa: ANN001
                (hub.store / repo_id / "main").mkdir(parents=True, exist_ok=True)

            def create_branch(self, repo_id, branch, exist_ok=False, token=None):  # noqa: ANN001
                shutil.copytree(hub.store / repo_id / "main", hub.store / repo_id / branch)

            def upload_folder(self, repo_id, folder_path, revision=None, **kw):  # noqa: ANN001
                hub.uploads.append({"repo_id": repo_id, "revision": revision, **kw})
                target = hub.store / repo_id / (revision or "main")
                shutil.copytree(folder_path, target, dirs_exist_ok=True)
                return f"commit-{len(hub.uploads)}"

        return Api()


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FakeHub:
    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.api)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return fake


def test_hub_ids() -> None:
    assert is_hub_id("org/name") and is_hub_id("Org-1/name_v2.1")
    assert not any(map(is_hub_id, ["name", "outputs/small/model", "/abs/x", "./a/b", "a/../b"]))
    assert split_revision("org/name@v1") == ("org/name", "v1")
    assert split_revision("org/name", "dev") == ("org/name", "dev")
    with pytest.raises(ValueError, match="revision"):
        split_revision("org/name@v1", "v2")


def test_push_then_load_hat(hub, tiny_hat) -> None:
    tiny_hat.generation_config = tiny_hat.generation_config.update(max_new_tokens=7)
    assert tiny_hat.push_to_hub("me/tiny-hat", private=True) == "commit-1"
    files = {p.name for p in (hub.store / "me/tiny-hat/main").iterdir()}
    assert files == {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer_config.json",
        "manifest.json",
        "README.md",
    }
    for load in (hat.HATForCausalLM.from_pretrained, hat.load_pretrained):
        model = load("me/tiny-hat")
        assert model.name_or_path == "me/tiny-hat"
        assert model.generation_config.max_new_tokens == 7
        assert model.score(["The cat sat."]) == pytest.approx(tiny_hat.score(["The cat sat."]))
    assert hub.downloads[-1]["allow_patterns"]  # only the files a model needs
    tok = hat.HATTokenizer.from_pretrained("me/tiny-hat")
    assert tok.model_max_length == tiny_hat.config.max_seq_bytes


def test_push_then_load_twin_with_revision(hub, tiny_bpe) -> None:
    tiny_bpe.push_to_hub("me/tiny-bpe")  # main
    tiny_bpe.push_to_hub("me/tiny-bpe", revision="v1", commit_message="v1")
    assert hub.uploads[-1]["commit_message"] == "v1"
    assert (hub.store / "me/tiny-bpe/v1/tokenizer.model").is_file()
    for model in (
        hat.load_pretrained("me/tiny-bpe@v1"),
        hat.BPEForCausalLM.from_pretrained("me/tiny-bpe", revision="v1"),
    ):
        assert hub.downloads[-1]["revision"] == "v1"
        assert model.score(["Hello there."]) == pytest.approx(tiny_bpe.score(["Hello there."]))


def test_offline_uses_cache_or_says_what_to_do(hub, tiny_hat, monkeypatch) -> None:
    tiny_hat.push_to_hub("me/tiny-hat")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache.*offline"):
        hat.load_pretrained("me/tiny-hat")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hat.load_pretrained("me/tiny-hat")  # online: downloads into the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = hat.load_pretrained("me/tiny-hat")  # offline: from the cache
    assert hub.downloads[-1]["local_files_only"]  # offline: a cache read, no network call
    assert model.score(["x y"]) == pytest.approx(tiny_hat.score(["x y"]))
    with pytest.raises(FileNotFoundError, match="cache"):
        hat.HATForCausalLM.from_pretrained("me/tiny-hat", local_files_only=True, revision="v9")


def test_errors_and_local_directories_first(hub, tiny_hat, tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="no Hub model me/missing"):
        hat.load_pretrained("me/missing")
    tiny_hat.push_to_hub("me/tiny-hat")
    with pytest.raises(FileNotFoundError, match="no revision 'nope'"):
        hat.load_pretrained("me/tiny-hat@nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hat.load_pretrained(tmp_path / "runs/small/model")  # not a Hub id: no Hub call
    # a local directory named like a Hub id wins, and the Hub is never asked
    monkeypatch.chdir(tmp_path)
    tiny_hat.save_pretrained("me/tiny-hat")
    calls = len(hub.downloads)
    assert hat.load_pretrained("me/tiny-hat").name_or_path == "me/tiny-hat"
    assert len(hub.downloads) == calls


def test_cli_and_init_loader_take_hub_ids(hub, tiny_hat, capsys) -> None:
    tiny_hat.push_to_hub("me/tiny-hat")
    generate_cli.main(["me/tiny-hat", "--prompt", "Hi", "--max-new-tokens", "3"])
    assert capsys.readouterr().out.startswith("Hi")
    with pytest.raises(SystemExit) as exit_info:
        generate_cli.main(["me/nothing", "--prompt", "Hi"])
    assert exit_info.value.code == 1
    assert "no Hub model me/nothing" in capsys.readouterr().err


def test_hat_eval_takes_hub_ids(hub, tiny_hat, tmp_path) -> None:
    from hat.cli.evaluate import EvalJob, run

    tiny_hat.push_to_hub("me/tiny-hat")
    text = tmp_path / "doc.txt"
    text.write_text("A short document to score.")
    results = run(EvalJob(models=["me/tiny-hat"], max_docs=0, texts=[str(text)], device="cpu"))
    expected = hat.evaluation.bits_per_byte(tiny_hat, [text.read_text()])
    assert results["models"]["me/tiny-hat"]["bits_per_byte"]["doc.txt"] == pytest.approx(expected)


def test_model_card_reports_the_training_run(tmp_path, tiny_hat, tiny_bpe) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra/config.yaml").write_text(
        "data:\n  sources:\n  - path: builtin:sample\n    weight: 1.0\n"
        "trainer:\n  steps: 400\n  row_bytes: 512\n  global_rows: 8\n"
    )
    records = [
        {"step": 390, "kind": "train", "loss": 1.7, "bytes_seen": 1_600_000},
        {"step": 400, "kind": "eval", "eval_bpb": 2.3312, "eval_bpb/en": 2.4, "eval_loss": 1.6},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    tiny_hat.save_pretrained(run / "model")
    loaded = hat.load_pretrained(run / "model")
    card = model_card(loaded, "me/tiny-hat", run)
    for needle in (
        "## Architecture",
        f"{tiny_hat.num_parameters():,} parameters",
        "| encoder |",
        "| backbone |",
        "`builtin:sample` (weight 1.0)",
        "optimizer steps: 400",
        "bytes of text per row: 512",
        "training bytes seen: 1,600,000",
        "final held-out bits per byte: **2.3312** (step 400)",
        "en: 2.4000",
        'hat.load_pretrained("me/tiny-hat")',
    ):
        assert needle in card, needle
    twin_card = model_card(tiny_bpe, "me/tiny-bpe")
    assert "Vocabulary 512 tokens" in twin_card and "Not recorded" in twin_card
    # the parts' counts add up to the model's (tied weights counted once)
    assert sum(_parameters_by_part(tiny_hat).values()) == tiny_hat.num_parameters()
    assert sum(_parameters_by_part(tiny_bpe).values()) == tiny_bpe.num_parameters()


def test_push_finds_the_run_of_an_exported_model(hub, tiny_hat, tmp_path) -> None:
    run = tmp_path / "run"
    tiny_hat.save_pretrained(run / "model")
    (run / "metrics.jsonl").write_text(
        json.dumps({"kind": "eval", "step": 5, "eval_bpb": 3.5}) + "\n"
    )
    hat.load_pretrained(run / "model").push_to_hub("me/run-model")
    card = (hub.store / "me/run-model/main/README.md").read_text()
    assert "final held-out bits per byte: **3.5000** (step 5)" in card


def test_an_intermediate_export_is_carded_as_it_stood_at_its_step(hub, tiny_hat, tmp_path) -> None:
    """exports/step_N of a longer run: the card gives the evaluation and bytes seen at step N,
    not the run's final ones (which the exported weights never reached)."""
    run = tmp_path / "run"
    tiny_hat.save_pretrained(run / "exports" / "step_00000400")
    records = [
        {"step": 400, "kind": "train", "bytes_seen": 1000},
        {"step": 400, "kind": "eval", "eval_bpb": 3.5},
        {"step": 1000, "kind": "train", "bytes_seen": 2500},
        {"step": 1000, "kind": "eval", "eval_bpb": 2.5},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    hat.load_pretrained(run / "exports" / "step_00000400").push_to_hub("me/step-400")
    card = (hub.store / "me/step-400/main/README.md").read_text()
    assert "final held-out bits per byte: **3.5000** (step 400)" in card
    assert "training bytes seen: 1,000" in card and "optimizer steps: 400" in card
    assert "2.5000" not in card


def test_transformers_style_dtype_on_load(hub, tiny_hat) -> None:
    tiny_hat.push_to_hub("me/tiny-hat")
    model = hat.load_pretrained("me/tiny-hat", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
