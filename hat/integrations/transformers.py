"""transformers' Auto classes for hat's models: model types ``hat`` (HAT) and ``bpe`` (its twin).

    import hat                       # registers them once transformers is imported
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained("outputs/small/model")          # HATTransformersConfig
    model = AutoModelForCausalLM.from_pretrained("outputs/small/model", dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained("outputs/small/model")    # HATTokenizer
    model(**tokenizer(["Hello"], return_tensors="pt"), labels=...)     # logits, loss
    model.generate(**tokenizer(["Hello"], return_tensors="pt"), max_new_tokens=20)

``AutoModelForCausalLM`` returns hat's own ``HATForCausalLM`` / ``BPEForCausalLM`` (one
implementation, not a copy): its forward, ``generate`` (``GenerationConfig``, ``max_length``,
``pad_token_id``, ``LogitsProcessor``s and streamers of transformers), ``save_pretrained``,
``push_to_hub`` and ``.to()`` follow transformers' conventions, but it is not a
``transformers.PreTrainedModel``: tools that need one (``Trainer``, ``pipeline``, PEFT) do not
take it. ``from_pretrained`` takes ``dtype`` / ``torch_dtype`` (a dtype, its name, or
``"auto"``: as saved, the default, as in transformers 5), ``device_map`` (one device, or
``"auto"``: a GPU if there is one), ``attn_implementation`` (``"sdpa"`` or
``"flex_attention"``) and the Hub arguments; anything that cannot apply is an error.

Loading with ``trust_remote_code=True`` where hat is not installed is not supported: the
model needs hat's package (splitter, kernels, generation engines), not a single modeling file,
so a saved directory writes no ``auto_map``; install hat (``pip install hat-lm``) and
``import hat`` instead.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import PreTrainedConfig

from hat.bpe import BPEForCausalLM
from hat.config import BPEConfig, HATConfig
from hat.hub import pop_hub_kwargs, resolve_model_dir
from hat.integrations import resolve_dtype
from hat.model import HATForCausalLM
from hat.modeling import CONFIG_FILE, WEIGHTS_FILE, PreTrainedLM

ATTN_IMPLEMENTATIONS = {"sdpa": "sdpa", "flex_attention": "flex"}
# from_pretrained arguments of transformers that change nothing for hat's models
_IGNORED_LOAD_ARGS = (
    "_from_auto",
    "_from_pipeline",
    "trust_remote_code",
    "adapter_kwargs",
    "low_cpu_mem_usage",
    "weights_only",
    "use_safetensors",
)


class _HatTransformersConfig(PreTrainedConfig):
    """A hat config as transformers sees it: the same fields as the hat dataclass
    (``to_hat_config()``), serialised exactly as hat's ``config.json``."""

    hat_config_class: ClassVar[type] = HATConfig

    def to_hat_config(self) -> HATConfig | BPEConfig:
        names = {f.name for f in dataclasses.fields(self.hat_config_class)}
        values = {k: v for k, v in vars(self).items() if k in names}
        return self.hat_config_class.from_dict(values).validate()

    def to_dict(self) -> dict[str, Any]:
        return self.to_hat_config().to_dict()

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()


class HATTransformersConfig(_HatTransformersConfig):
    """``AutoConfig`` for ``model_type: hat``."""

    model_type = "hat"
    hat_config_class = HATConfig


class BPETransformersConfig(_HatTransformersConfig):
    """``AutoConfig`` for ``model_type: bpe`` (the BPE twin)."""

    model_type = "bpe"
    hat_config_class = BPEConfig


class _HatAutoModel:
    """What ``AutoModelForCausalLM`` calls for a hat model type; builds hat's own model."""

    config_class: type
    model_class: type

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *model_args: Any,
        config: _HatTransformersConfig | None = None,
        **kwargs: Any,
    ) -> PreTrainedLM:
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no positional model arguments")
        hub = pop_hub_kwargs(kwargs)
        if kwargs.get("use_safetensors") is False:
            raise ValueError("hat models are stored as safetensors only; drop use_safetensors")
        dtype, device, attn = _load_options(kwargs, config)
        if kwargs.pop("subfolder", ""):
            raise ValueError("subfolder= is not supported: point at the model directory itself")
        if kwargs.pop("proxies", None):
            raise ValueError("proxies= is not supported; configure the Hub client's proxy instead")
        if kwargs:
            raise TypeError(
                f"from_pretrained got arguments a hat model does not take: {sorted(kwargs)}"
            )
        directory = resolve_model_dir(pretrained_model_name_or_path, **hub)
        hat_config = config.to_hat_config() if config is not None else None
        if attn is not None:
            hat_config = dataclasses.replace(
                hat_config or cls.model_class.config_class.from_dict(_read_config(directory)),
                attn_impl=attn,
            )
        model = cls.model_class.from_pretrained(
            directory,
            device=device,
            # transformers 5's default is dtype="auto": the weights' saved dtype, not float32
            dtype=resolve_dtype("auto" if dtype is None else dtype, directory / WEIGHTS_FILE),
            config=hat_config,
        )
        model.name_or_path = str(pretrained_model_name_or_path)
        return model.eval()

    @classmethod
    def _from_config(cls, config: _HatTransformersConfig, **kwargs: Any) -> PreTrainedLM:
        """``AutoModelForCausalLM.from_config``: a freshly initialised model (a twin built so
        has no tokenizer until you give it one)."""
        dtype, device, attn = _load_options(kwargs, config)
        if kwargs:
            raise TypeError(
                f"from_config got arguments a hat model does not take: {sorted(kwargs)}"
            )
        hat_config = config.to_hat_config()
        if attn is not None:
            hat_config = dataclasses.replace(hat_config, attn_impl=attn)
        return cls.model_class(hat_config).to(device=device, dtype=resolve_dtype(dtype))


def _load_options(kwargs: dict[str, Any], config: Any) -> tuple[Any, Any, str | None]:
    """Pop transformers' loading options: -> (dtype, device, hat's attn_impl or None)."""
    for name in _IGNORED_LOAD_ARGS:
        kwargs.pop(name, None)
    dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree: pass one")
    device = _device(kwargs.pop("device_map", None))
    attn = kwargs.pop("attn_implementation", None) or getattr(config, "_attn_implementation", None)
    if attn is not None and attn not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={attn!r}: hat models run {sorted(ATTN_IMPLEMENTATIONS)}"
        )
    return (dtype if dtype is not None else torch_dtype), device, ATTN_IMPLEMENTATIONS.get(attn)


# accelerate's placement strategies: for a model that is not split, they all mean "auto"
_DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _device(device_map: Any) -> str | torch.device | None:
    """``device_map`` as one device: hat models are not split across devices."""
    if device_map is None or isinstance(device_map, str | torch.device | int):
        if device_map in _DEVICE_MAP_STRATEGIES:
            return "cuda" if torch.cuda.is_available() else "cpu"
        return f"cuda:{device_map}" if isinstance(device_map, int) else device_map
    if isinstance(device_map, dict) and set(device_map) == {""}:
        return _device(device_map[""])
    raise ValueError(
        f"device_map={device_map!r}: hat models load whole onto one device; pass one device "
        "(e.g. 'cuda:0') or call .to(device)"
    )


def _read_config(directory: Path) -> dict[str, Any]:
    return json.loads((directory / CONFIG_FILE).read_text())


class HATAutoModelForCausalLM(_HatAutoModel):
    config_class = HATTransformersConfig
    model_class = HATForCausalLM


class BPEAutoModelForCausalLM(_HatAutoModel):
    config_class = BPETransformersConfig
    model_class = BPEForCausalLM


# ---- registration (called by hat.integrations when transformers' auto modules load) --------
def register_config() -> None:
    from transformers import AutoConfig

    for config in (HATTransformersConfig, BPETransformersConfig):
        AutoConfig.register(config.model_type, config, exist_ok=True)


def register_models() -> None:
    from transformers import AutoModelForCausalLM

    for auto in (HATAutoModelForCausalLM, BPEAutoModelForCausalLM):
        AutoModelForCausalLM.register(auto.config_class, auto, exist_ok=True)


class TwinTokenizerNotAuto:
    """What ``AutoTokenizer`` finds for the twin: an error naming its real tokenizer. Without
    it, transformers converts ``tokenizer.model`` into a generic tokenizer that adds no BOS:
    the twin's ``generate`` refuses those ids, and ``model(**batch, labels=...)`` silently
    scores the text without its document start (not what ``score`` measures)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(
            f"{pretrained_model_name_or_path} holds hat's BPE twin, whose tokenizer is not a "
            "transformers tokenizer: use the loaded model's model.tokenizer (a hat.BPETokenizer; "
            "rows start with its bos_id), or hat.BPETokenizer(<model dir>/tokenizer.model)"
        )


def register_tokenizer() -> None:
    """``AutoTokenizer`` gives ``HATTokenizer`` for HAT; the twin's sentencepiece model is
    loaded with the model (``model.tokenizer``, a ``hat.BPETokenizer``), and ``AutoTokenizer``
    says so."""
    from transformers import AutoTokenizer

    from hat.hf_tokenizer import HATTokenizer

    AutoTokenizer.register(HATTransformersConfig, tokenizer_class=HATTokenizer, exist_ok=True)
    AutoTokenizer.register(
        BPETransformersConfig, tokenizer_class=TwinTokenizerNotAuto, exist_ok=True
    )


def register() -> None:
    """All three registrations now (``import hat`` arranges them on its own)."""
    register_config()
    register_models()
    register_tokenizer()
