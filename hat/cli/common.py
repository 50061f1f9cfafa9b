"""What every command-line tool shares: one-line errors, rank 0, the configs and their schemas."""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from hat.config import preset, preset_names
from hat.errors import HatError
from hat.registry import KINDS
from hat.training.config import TrainConfig

# errors whose message is the whole story: bad settings, files, inputs (ValueError and
# OSError include FileNotFoundError, UnicodeDecodeError, JSONDecodeError, ...), a missing
# optional extra (ImportError: its message names the pip install)
USER_ERRORS = (ValueError, OSError, ImportError, HatError)


def verbose() -> bool:
    """Show tracebacks instead of one-line errors (``HYDRA_FULL_ERROR=1`` or ``HAT_VERBOSE=1``)."""
    return any(os.environ.get(k) == "1" for k in ("HYDRA_FULL_ERROR", "HAT_VERBOSE"))


@contextmanager
def cli_errors(prog: str) -> Iterator[None]:
    """Turn a user error raised inside into ``prog: error: message`` on stderr and exit code 1
    (printed by rank 0 only); anything else, or any error when ``verbose()``, propagates."""
    try:
        yield
    except USER_ERRORS as err:
        if verbose():
            raise
        if is_rank_zero():
            print(f"{prog}: error: {_user_message(err)}", file=sys.stderr)
        sys.exit(1)


def _user_message(err: BaseException) -> str:
    """``err``'s message on one line. An error raised in a DataLoader worker arrives as
    "Caught ValueError in DataLoader worker process 0. Original Traceback ...": keep only
    the error's own message, the last thing in it."""
    text = str(err)
    marker = f"\n{type(err).__name__}: "
    if text.startswith("Caught ") and "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return " ".join(text.split()) or type(err).__name__


def read_text_file(path: str, setting: str) -> str:
    """A UTF-8 text file (``-``: standard input) given by ``setting``; errors name the setting,
    the file and, for text that is not UTF-8, the first bad byte and how to convert."""
    name = "standard input" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as err:
        raise OSError(f"{setting}: {name}: {err.strerror or err}") from None
    # a leading byte order mark (Windows editors write one) is no text
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = skip + err.start  # in the file
        raise ValueError(
            f"{setting}: {name} is not UTF-8 text (byte {at}: {data[at : at + 4]!r}); convert "
            "it to UTF-8 first (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def resolve_device(device: str, setting: str) -> str:
    """``device`` (``auto``: cuda if available, else cpu), checked before a model loads: a
    device this machine lacks (``cuda`` without a GPU or without CUDA in torch, a misspelt
    name) is a ValueError naming ``setting`` instead of torch's traceback."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"{setting}: {device!r} is not a device (cpu, cuda, cuda:1, ...)"
        ) from None
    if kind.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{setting}: {device!r} but CUDA is not available here; use cpu")
        if kind.index is not None and kind.index >= count:
            raise ValueError(f"{setting}: {device!r} but this machine has {count} CUDA device(s)")
    elif kind.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{setting}: {device!r} but MPS is not available here; use cpu")
    return device


def is_rank_zero() -> bool:
    """Rank 0 of a torchrun / accelerate launch (or a single process); hydra runs before any
    process group exists, so ask the launcher's environment."""
    return int(os.environ.get("RANK", "0")) == 0


def config_dir() -> str:
    """The YAML configs: the installed ``hat.conf`` package, else the source checkout's configs/."""
    try:
        installed = resources.files("hat.conf")
        if installed.joinpath("train.yaml").is_file():
            return str(installed)
    except ModuleNotFoundError:
        pass
    checkout = Path(__file__).resolve().parents[2] / "configs"
    if (checkout / "train.yaml").is_file():
        return str(checkout)
    raise FileNotFoundError("hat's configs are missing: reinstall hat-lm (pip install hat-lm)")


def register_configs() -> None:
    """Hydra's typed schemas: the training config (``train_schema``), and every preset of
    ``hat.config.preset_names()`` as an option of the ``model`` group, typed by its config
    class (``configs/model/`` adds custom ones; ``base_hat``/``base_bpe`` are blank schemas)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig(model=MISSING))  # the model group fills it
    for kind in KINDS.values():
        store.store(group="model", name=f"base_{kind.name}", node=kind.config_class)
    for name in preset_names():
        store.store(group="model", name=name, node=preset(name))
    if not OmegaConf.has_resolver("hat.if_rank_zero"):
        # hydra writes .hydra/ and train.log on rank 0 only: `${hat.if_rank_zero:a,b}` is a there, b elsewhere
        OmegaConf.register_new_resolver(
            "hat.if_rank_zero", lambda a, b=None: a if is_rank_zero() else b
        )


def save_hydra_record(cfg: DictConfig, directory: Path) -> None:
    """hydra's record of the run in ``<directory>/.hydra``: ``config.yaml`` (the composed
    config), ``overrides.yaml`` (the command line), ``hydra.yaml``. Written here, once the run
    holds the directory: a run refused there (another run is live, or it is another run's
    directory) leaves the record of the run that is there untouched."""
    record = directory / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    hydra_cfg = HydraConfig.get()
    OmegaConf.save(cfg, record / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), record / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), record / "hydra.yaml")
