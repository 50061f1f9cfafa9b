"""Unknown settings are errors, not silently dropped: hydra's ``+key=value`` adds keys that the
typed schema does not have, and OmegaConf would carry them along unread."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def check_known_keys(node: Any, where: str = "") -> None:
    """Raise ValueError for the first key of ``node`` (a hydra/OmegaConf config, walked
    recursively) that its dataclass schema does not define, naming the closest known key."""
    if isinstance(node, ListConfig):
        if node._is_none():  # a null list (e.g. replay.sources: null) holds no keys
            return
        for i, item in enumerate(node):
            check_known_keys(item, f"{where}{i}.")
        return
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        fields = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in fields:
                close = difflib.get_close_matches(str(key), fields, n=1)
                hint = f"did you mean {where}{close[0]}?" if close else f"known keys: {fields}"
                raise ValueError(f"unknown setting {where}{key}; {hint}")
    for key in node.keys():
        check_known_keys(node._get_node(key), f"{where}{key}.")
