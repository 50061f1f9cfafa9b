"""Optional integrations, each active only when its library is installed.

* ``hat.integrations.lm_eval``: ``--model hat`` for lm-evaluation-harness (``pip install
  hat-lm[eval]``). ``import hat`` registers it in lm-eval's model registry (a lazy entry: the
  adapter module loads when lm-eval asks for it); ``hat-lm-eval`` is lm-eval's command line
  with it registered.
* ``hat.integrations.transformers``: ``AutoConfig`` / ``AutoModelForCausalLM`` /
  ``AutoTokenizer`` for the model types ``hat`` and ``bpe``. ``import hat`` registers them
  when transformers is imported (now, or later: an import hook), so neither library slows
  the other's import and transformers stays optional.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(value: Any, weights: Path | None = None) -> torch.dtype | None:
    """A dtype as frameworks spell it: None (keep), a ``torch.dtype``, a name (``"bfloat16"``,
    ``"bf16"``, ...) or ``"auto"`` (the dtype the weights were saved in)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if value == "auto":
        if weights is None or not weights.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            return f.get_tensor(next(iter(f.keys()))).dtype
    name = str(value).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype={value!r}: use one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[name]


def register_integrations() -> None:
    """Register hat with the installed libraries that look models up by name."""
    _register_lm_eval()
    _register_transformers()


def _register_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        return
    try:
        from lm_eval.api.registry import model_registry

        if "hat" not in model_registry:
            model_registry.register("hat", target="hat.integrations.lm_eval:HATEvalLM")
    except Exception as err:  # never break `import hat` (an lm-eval without this registry)
        warnings.warn(
            f"hat could not register --model hat with lm-eval ({type(err).__name__}: {err})",
            stacklevel=2,
        )


# transformers modules -> what to register once each has been imported
_TRANSFORMERS_HOOKS = {
    "transformers.models.auto.configuration_auto": "register_config",
    "transformers.models.auto.modeling_auto": "register_models",
    "transformers.models.auto.tokenization_auto": "register_tokenizer",
}


def _register_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:
        return
    hooks = {}
    for module, function in _TRANSFORMERS_HOOKS.items():
        hooks[module] = lambda function=function: _call_transformers_integration(function)
    when_imported(hooks)


def _call_transformers_integration(function: str) -> None:
    try:
        from hat.integrations import transformers as integration

        getattr(integration, function)()
    except Exception as err:  # never break the user's transformers import
        warnings.warn(
            f"hat could not register its models with transformers ({type(err).__name__}: {err})",
            stacklevel=2,
        )


def when_imported(hooks: dict[str, Callable[[], None]]) -> None:
    """Run each hook once its module has been imported: now, if it already is, else right
    after the import finishes (through a finder on ``sys.meta_path``)."""
    pending = {}
    for name, hook in hooks.items():
        if name in sys.modules:
            hook()
        else:
            pending[name] = hook
    if pending:
        sys.meta_path.insert(0, _AfterImport(pending))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of each watched module so its hook runs after
    the module has executed, then forgets it."""

    def __init__(self, hooks: dict[str, Callable[[], None]]) -> None:
        self.hooks = hooks
        self._finding: set[str] = set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.hooks or fullname in self._finding:
            return None
        self._finding.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)  # the real finders (this one says None)
        finally:
            self._finding.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RunAfterLoader(spec.loader, self.hooks.pop(fullname))
        if not self.hooks and self in sys.meta_path:
            sys.meta_path.remove(self)
        return spec


class _RunAfterLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, hook: Callable[[], None]) -> None:
        self.loader, self.hook = loader, hook

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader  # leave no trace
        self.hook()

    def __getattr__(self, name: str) -> Any:  # get_code, get_source, resource readers, ...
        return getattr(self.loader, name)
