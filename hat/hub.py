"""The Hugging Face Hub: load a saved model by its Hub id, push one with a generated model card.

Everywhere a saved model directory is accepted (``from_pretrained``, ``hat.load_pretrained``,
``hat-eval``, ``hat-generate``, ``model.init_from``, the lm-eval adapter), a Hub id works too:
``org/name``, optionally ``org/name@revision`` (a branch, tag or commit), or ``revision=``.
A local directory always wins over a Hub id of the same name. Downloads go through
``huggingface_hub.snapshot_download`` into its usual cache, so ``HF_HUB_OFFLINE=1`` (or
``local_files_only=True``) loads from that cache without any network call, and a model that is
not cached then is a clear error.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from hat.manifest import checkpoint_step

HUB_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.model",
    "tokenizer_config.json",
    "generation_config.json",
    "manifest.json",  # the files' checksums: a damaged download is caught on load
    "README.md",
]
MODEL_CARD_FILE = "README.md"
# a repository id: "name" parts of letters, digits, "-", "_", "."; exactly one "/"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` (without an ``@revision``) has the form of a Hub repository id."""
    return bool(_REPO_ID.match(name)) and ".." not in name and not name.endswith(".")


def split_revision(name: str, revision: str | None = None) -> tuple[str, str | None]:
    """``"org/name@v1"`` -> ``("org/name", "v1")``; an explicit ``revision`` must agree."""
    repo_id, at, rev = name.partition("@")
    if not at:
        return name, revision
    if revision is not None and revision != rev:
        raise ValueError(f"{name!r} names revision {rev!r} but revision={revision!r} was passed")
    return repo_id, rev


def resolve_model_dir(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> Path:
    """The local directory of a saved model: ``name_or_path`` itself when it exists, else the
    Hub snapshot of the repository it names (downloaded, or read from the cache when offline)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    repo_id, revision = split_revision(name, revision)
    if not is_hub_id(repo_id):
        raise FileNotFoundError(
            f"{path / 'config.json'} not found: {path} does not exist (a model on the Hugging "
            "Face Hub is named org/name or org/name@revision)"
        )
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise ImportError(
            f"{name} is not a local directory; to load it from the Hugging Face Hub, "
            "pip install huggingface_hub"
        ) from None
    offline = local_files_only or hub_offline()
    try:
        snapshot = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=offline,
            force_download=force_download,
            allow_patterns=HUB_FILES,
            library_name="hat-lm",
        )
    except errors.LocalEntryNotFoundError:
        why = "offline mode (HF_HUB_OFFLINE=1 or local_files_only)" if offline else "no network"
        raise FileNotFoundError(
            f"{name}: no such directory, and the Hub model {repo_id}"
            f"{'@' + revision if revision else ''} is not in the local Hugging Face cache "
            f"({why}); download it once online, or pass a local directory"
        ) from None
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(
            f"{repo_id}: the Hub repository has no revision {revision!r}"
        ) from None
    except errors.RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{name}: no such directory, and no Hub model {repo_id} (if it is private or gated, "
            "log in with `hf auth login` or pass token=)"
        ) from None
    return Path(snapshot)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now, or when the Hub client
    was imported."""
    now = any(
        os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    try:
        from huggingface_hub import constants
    except ImportError:
        return now
    return now or bool(constants.HF_HUB_OFFLINE)


def pop_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the Hub arguments of ``resolve_model_dir`` out of ``kwargs``."""
    names = ("revision", "cache_dir", "token", "local_files_only", "force_download")
    return {k: kwargs.pop(k) for k in names if k in kwargs}


# ---- push ---------------------------------------------------------------------------------
def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    run_dir: str | os.PathLike | None = None,
) -> Any:
    """Upload ``model`` to the Hub repository ``repo_id`` (created if needed): weights,
    ``config.json``, tokenizer, ``generation_config.json`` and a generated ``README.md`` model
    card. ``run_dir``: the training run's output directory, for the card's training section
    (default: the run that exported the model, when it was loaded from ``<run>/model``).
    Returns ``huggingface_hub``'s commit info."""
    import huggingface_hub

    if not is_hub_id(repo_id):
        raise ValueError(f"repo_id={repo_id!r}: expected org/name (or user/name)")
    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
    source = getattr(model, "name_or_path", None)
    if run_dir is None:
        run_dir = _run_dir_of(source)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        card = model_card(
            model, repo_id, run_dir, up_to_step=checkpoint_step(source) if source else None
        )
        Path(tmp, MODEL_CARD_FILE).write_text(card)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            commit_message=commit_message or f"Upload {type(model).__name__}",
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


def _run_dir_of(model_dir: str | None) -> Path | None:
    """The trainer's output directory when ``model_dir`` is its ``model/`` or ``exports/*``."""
    if not model_dir or not Path(model_dir).is_dir():
        return None
    for run in (Path(model_dir).parent, Path(model_dir).parent.parent):
        if (run / "metrics.jsonl").is_file():
            return run
    return None


# ---- model card ---------------------------------------------------------------------------
def model_card(
    model: Any,
    repo_id: str,
    run_dir: str | os.PathLike | None = None,
    up_to_step: int | None = None,
) -> str:
    """A README.md for the Hub: architecture, parameters, training data and final held-out bits
    per byte (from ``run_dir``'s ``metrics.jsonl`` and hydra config, when known; of an
    intermediate export, only what the run had recorded by its step ``up_to_step``), usage."""
    cfg, facts = model.config, model.card_facts()
    training = training_summary(run_dir, up_to_step) if run_dir else {}
    tags = facts["tags"]
    lines = [
        "---",
        "library_name: hat-lm",
        "pipeline_tag: text-generation",
        "tags:",
        *(f"- {t}" for t in tags),
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        facts["summary"],
        f"Trained with the `hat` library (package `hat-lm`); preset `{cfg.name}`.",
        "",
        "## Architecture",
        "",
        f"{model.num_parameters():,} parameters ({model.num_parameters() / 1e6:.2f} M).",
        "",
        "| part | parameters | dim | layers | heads (kv) | window |",
        "|---|---|---|---|---|---|",
    ]
    for part, count in _parameters_by_part(model).items():
        stack = getattr(cfg, part, None)
        if hasattr(stack, "n_layers"):
            shape = f"{stack.dim} | {stack.n_layers} | {stack.n_heads} ({stack.kv_heads}) | {stack.window or 'full'}"
        else:
            shape = "| | |"
        lines.append(f"| {part} | {count:,} | {shape} |")
    lines += ["", facts["inputs"]]
    lines += ["", "## Training", ""]
    lines += _training_lines(training)
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import hat",
        "",
        f'model = hat.load_pretrained("{repo_id}")',
        'model.generate("It is a truth", max_new_tokens=100)',
        'model.score([" sat."], contexts=["The cat"])  # log-likelihood in nats',
        "```",
        "",
        "```bash",
        f'hat-generate {repo_id} --prompt "It is a truth"',
        f"hat-lm-eval --model hat --model_args pretrained={repo_id} --tasks <task>",
        "```",
        "",
        "With `transformers` installed, `import hat` registers the model type for "
        "`AutoConfig` / `AutoModelForCausalLM`.",
        "",
    ]
    return "\n".join(lines)


def _parameters_by_part(model: Any) -> dict[str, int]:
    """Parameters of each top-level component; a tied weight counts once, where it first appears."""
    seen: set[int] = set()
    parts: dict[str, int] = {}
    for name, child in model.named_children():
        count = 0
        for p in child.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                count += p.numel()
        if count:
            parts[name] = count
    return parts


def _training_lines(training: dict[str, Any]) -> list[str]:
    if not training:
        return ["Not recorded: the model was pushed without its training run directory."]
    lines = []
    if training.get("sources"):
        lines.append("Data (weight: share of training documents; 0: held out only):")
        lines += [f"- `{s['path']}` (weight {s.get('weight', 1.0)})" for s in training["sources"]]
        lines.append("")
    for key, label in (
        ("steps", "optimizer steps"),
        ("row_bytes", "bytes of text per row"),
        ("global_rows", "rows per step"),
        ("bytes_seen", "training bytes seen"),
    ):
        if training.get(key) is not None:
            lines.append(f"- {label}: {training[key]:,}")
    if training.get("eval_bpb") is not None:
        lines.append(
            f"- final held-out bits per byte: **{training['eval_bpb']:.4f}** "
            f"(step {training.get('eval_step')})"
        )
        for source, bpb in training.get("eval_bpb_by_source", {}).items():
            lines.append(f"  - {source}: {bpb:.4f}")
    return lines


def training_summary(run_dir: str | os.PathLike, up_to_step: int | None = None) -> dict[str, Any]:
    """What a trainer output directory records: data sources and run length (hydra's
    ``.hydra/config.yaml``) and the last evaluation (``metrics.jsonl``); with ``up_to_step``
    (an intermediate export), the run as it stood at that step."""
    run = Path(run_dir)
    out: dict[str, Any] = {}
    config = run / ".hydra" / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=False)
        out["sources"] = [
            {"path": s.get("path"), "weight": s.get("weight", 1.0)}
            for s in (cfg.get("data") or {}).get("sources") or []
        ]
        trainer = cfg.get("trainer") or {}
        out.update({k: trainer.get(k) for k in ("steps", "row_bytes", "global_rows")})
    if up_to_step is not None:
        out["steps"] = up_to_step
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if up_to_step is not None and record.get("step", 0) > up_to_step:
                continue  # recorded after the exported model
            if record.get("bytes_seen") is not None:
                out["bytes_seen"] = int(record["bytes_seen"])
            if record.get("kind") == "eval" and _finite(record.get("eval_bpb")):
                out["eval_bpb"], out["eval_step"] = record["eval_bpb"], record.get("step")
                out["eval_bpb_by_source"] = {
                    k.split("/", 1)[1]: v
                    for k, v in record.items()
                    if k.startswith("eval_bpb/") and _finite(v)
                }
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
