"""The registry of model kinds: the one place that maps a kind to its classes."""

from __future__ import annotations

import pytest

import hat
from hat.registry import KINDS, config_from_dict, kind_of


def test_every_way_of_naming_a_kind_agrees(tiny_hat, tiny_bpe) -> None:
    for model, name in ((tiny_hat, "hat"), (tiny_bpe, "bpe")):
        kind = KINDS[name]
        assert kind_of(name) is kind_of(model.config) is kind_of(model) is kind
        assert isinstance(model, kind.model_class) and isinstance(model.config, kind.config_class)
    assert (kind_of("hat").unit, kind_of("bpe").unit) == ("bytes", "tokens")
    with pytest.raises(ValueError, match=r"model_type must be one of \['bpe', 'hat'\]"):
        kind_of("gpt")


def test_configs_round_trip_through_plain_data(tiny_tokenizer) -> None:
    for name in ("tiny", "bpe_tiny"):
        config = hat.preset(name)
        assert config_from_dict(config.to_dict()) == config
        model = kind_of(config).build(config, tiny_tokenizer)
        assert type(model) is kind_of(config).model_class
    with pytest.raises(ValueError, match="model_type must be one of"):
        config_from_dict({"name": "x"}, "x.json")
    with pytest.raises(ValueError, match=r"x.json: .*keys missing"):
        config_from_dict({"model_type": "hat"}, "x.json")


def test_load_config_names_the_file(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        hat.load_config(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="is .* a saved hat model"):
        hat.load_config(tmp_path / "nothing" / "config.json")
