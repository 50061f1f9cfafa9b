"""transformers interop: Auto classes load saved HAT and twin models (same logits as ours),
transformers' loading options, GenerationConfig, LogitsProcessors and streamers plug in."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import hat
from hat.hf_tokenizer import HATTokenizer
from hat.integrations import when_imported
from hat.registry import load_config
from hat.splitter import EOD

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    TextIteratorStreamer,
    TextStreamer,
)

from hat.integrations.transformers import (  # noqa: E402
    BPETransformersConfig,
    HATTransformersConfig,
)

TEXTS = ["The cat sat on the mat.", "Zwölf Boxkämpfer"]


@pytest.fixture
def saved(tmp_path, tiny_hat, tiny_bpe) -> dict:
    tiny_hat.save_pretrained(tmp_path / "hat")
    tiny_bpe.save_pretrained(tmp_path / "bpe")
    return {"hat": (tiny_hat, tmp_path / "hat"), "bpe": (tiny_bpe, tmp_path / "bpe")}


def _batch(model) -> dict:
    """A padded batch as each model's tokenizer gives it."""
    if model.config.model_type == "hat":
        return dict(HATTokenizer()(TEXTS, return_tensors="pt", padding=True))
    rows = [[1, *model.tokenizer.encode(t)] for t in TEXTS]  # BOS + tokens
    width = max(map(len, rows))
    return {"input_ids": torch.tensor([r + [3] * (width - len(r)) for r in rows])}


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_auto_classes_load_our_models_with_equal_logits(saved, kind) -> None:
    ours, directory = saved[kind]
    config = AutoConfig.from_pretrained(directory)
    assert isinstance(config, HATTransformersConfig if kind == "hat" else BPETransformersConfig)
    assert config.to_hat_config() == ours.config
    model = AutoModelForCausalLM.from_pretrained(directory)
    assert type(model) is type(ours) and not model.training
    batch = _batch(ours)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, ours(**batch).logits, rtol=0, atol=0)
    # config kwargs override the saved config, as in transformers
    longer = AutoModelForCausalLM.from_pretrained(directory, logit_softcap=30.0)
    assert longer.config.logit_softcap == 30.0
    # a config saved by transformers is a hat config.json again
    config.save_pretrained(directory.parent / f"{kind}-config")
    assert load_config(directory.parent / f"{kind}-config" / "config.json") == ours.config
    fresh = AutoModelForCausalLM.from_config(config)
    assert type(fresh) is type(ours) and fresh.config == ours.config


def test_dtype_device_and_attention_options(saved) -> None:
    ours, directory = saved["hat"]
    assert AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16).dtype == (
        torch.bfloat16
    )
    assert AutoModelForCausalLM.from_pretrained(directory, torch_dtype="bfloat16").dtype == (
        torch.bfloat16
    )
    half = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    half.save_pretrained(directory.parent / "bf16")
    auto = AutoModelForCausalLM.from_pretrained(directory.parent / "bf16", dtype="auto")
    assert auto.dtype == torch.bfloat16  # "auto": as saved
    back = auto.to(torch.float32)  # .to() works as on any module
    expected = hat.HATForCausalLM.from_pretrained(directory, dtype=torch.bfloat16).float()
    batch = _batch(ours)
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, expected(**batch).logits)
    on_cpu = AutoModelForCausalLM.from_pretrained(directory, device_map="cpu")
    assert on_cpu.device.type == "cpu"
    sdpa = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa")
    assert sdpa.config.attn_impl == "sdpa"
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager")
    with pytest.raises(ValueError, match="one device"):
        AutoModelForCausalLM.from_pretrained(directory, device_map={"encoder": 0, "decoder": 1})
    with pytest.raises(TypeError, match="quantization_config"):
        AutoModelForCausalLM.from_pretrained(directory, quantization_config={"bits": 4})


def test_from_pretrained_defaults_to_the_saved_dtype(saved) -> None:
    """transformers 5 loads weights in the dtype they were saved in (``dtype="auto"`` is its
    default): a bf16 export comes back bf16, not upcast to float32; accelerate's device_map
    strategies name one device here."""
    ours, directory = saved["hat"]
    assert AutoModelForCausalLM.from_pretrained(directory).dtype == torch.float32
    ours.to(torch.bfloat16).save_pretrained(directory.parent / "bf16")
    assert AutoModelForCausalLM.from_pretrained(directory.parent / "bf16").dtype == torch.bfloat16
    as_asked = AutoModelForCausalLM.from_pretrained(directory.parent / "bf16", dtype="float32")
    assert as_asked.dtype == torch.float32
    for strategy in ("auto", "balanced", "balanced_low_0", "sequential"):
        model = AutoModelForCausalLM.from_pretrained(directory, device_map=strategy)
        assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_auto_tokenizer_and_loss(saved) -> None:
    ours, directory = saved["hat"]
    tok = AutoTokenizer.from_pretrained(directory)
    assert isinstance(tok, HATTokenizer) and tok.model_max_length == ours.config.max_seq_bytes
    model = AutoModelForCausalLM.from_pretrained(directory)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    assert loss.item() == pytest.approx(-sum(ours.score(TEXTS)) / n_bytes, rel=1e-5)


def test_auto_tokenizer_for_the_twin_says_where_its_tokenizer_is(saved) -> None:
    """Left to itself, transformers converts the twin's tokenizer.model into a generic
    tokenizer that adds no BOS: the twin's generate refuses its ids and its loss silently
    differs from score(). AutoTokenizer says to use the twin's own tokenizer instead."""
    _, directory = saved["bpe"]
    with pytest.raises(ValueError, match="model.tokenizer"):
        AutoTokenizer.from_pretrained(directory)


def test_generation_config_max_length_and_pad_token_id(tiny_hat) -> None:
    batch = HATTokenizer()(["Hello", "Hi"], return_tensors="pt", padding=True)
    width = batch["input_ids"].shape[1]
    hf_config = transformers.GenerationConfig(max_new_tokens=6, do_sample=True, top_k=5)
    a = tiny_hat.generate(**batch, generation_config=hf_config, seed=0)
    b = tiny_hat.generate(**batch, max_new_tokens=6, do_sample=True, top_k=5, seed=0)
    assert torch.equal(a, b)
    # max_length counts the (padded) prompt, as in transformers; max_new_tokens wins over it
    full = tiny_hat.generate(**batch, max_length=width + 3, suppress_tokens=[EOD])
    assert full.shape == (2, width + 3)
    assert tiny_hat.generate(**batch, max_length=4, max_new_tokens=2).shape == (2, width + 2)
    # pad_token_id fills a finished row's new columns; the prompt comes back as given
    out = tiny_hat.generate(
        **batch, max_new_tokens=5, logits_processor=[EndRowAt(row=1, step=1)], pad_token_id=0
    )
    assert torch.equal(out[:, :width], batch["input_ids"])
    assert out[1, width + 1].item() == EOD and out[1, width + 2 :].tolist() == [0, 0, 0]
    # left padding of any id (here 0, marked by the attention mask) comes back as given too
    zeros = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 0)
    out = tiny_hat.generate(zeros, attention_mask=batch["attention_mask"], max_new_tokens=2)
    assert (zeros == 0).any() and torch.equal(out[:, :width], zeros)
    # call flags carried by a transformers GenerationConfig
    result = tiny_hat.generate(
        **batch,
        generation_config=transformers.GenerationConfig(
            max_new_tokens=2, return_dict_in_generate=True, output_scores=True
        ),
    )
    assert len(result.scores) == 2
    # what cannot apply to this decoding says so; its "off" values are accepted
    with pytest.raises(ValueError, match="beam search"):
        tiny_hat.generate(**batch, generation_config=transformers.GenerationConfig(num_beams=3))
    with pytest.raises(ValueError, match="min_new_tokens"):
        tiny_hat.generate(**batch, min_length=5)
    assert tiny_hat.generate(**batch, num_beams=1, max_new_tokens=1).shape == (2, width + 1)


def test_a_transformers_generation_config_as_the_models_default(tiny_hat) -> None:
    """``model.generation_config = transformers.GenerationConfig(...)`` (as one sets it on a
    transformers model) becomes the default of later calls (it crashed in generate)."""
    expected = tiny_hat.generate("Hello", max_new_tokens=3, do_sample=True, top_k=5, seed=0)
    tiny_hat.generation_config = transformers.GenerationConfig(
        max_new_tokens=3, do_sample=True, top_k=5
    )
    assert isinstance(tiny_hat.generation_config, hat.GenerationConfig)
    assert tiny_hat.generate("Hello", seed=0) == expected
    with pytest.raises(ValueError, match="output_scores"):
        tiny_hat.generation_config = transformers.GenerationConfig(output_scores=True)
    with pytest.raises(TypeError, match="generation_config must be"):
        tiny_hat.generation_config = {"max_new_tokens": 3}
    with pytest.raises(ValueError, match="top_p"):
        tiny_hat.generation_config = hat.GenerationConfig(top_p=2.0)


def test_sampling_options_take_transformers_off_values(tiny_hat) -> None:
    """top_k=0 is transformers' "no top-k" (its generate adds no warper), and greedy decoding
    ignores temperature (transformers warns, e.g. for lm-eval's greedy temperature=0.0); with
    do_sample=True a temperature of 0 stays an error, as in transformers."""
    greedy = tiny_hat.generate("Hello", max_new_tokens=6)
    assert tiny_hat.generate("Hello", max_new_tokens=6, temperature=0.0) == greedy
    hf_greedy = transformers.GenerationConfig(max_new_tokens=6, temperature=0.0, top_k=0)
    assert tiny_hat.generate("Hello", generation_config=hf_greedy) == greedy
    sampled = tiny_hat.generate("Hello", max_new_tokens=6, do_sample=True, seed=0)
    assert tiny_hat.generate("Hello", max_new_tokens=6, do_sample=True, top_k=0, seed=0) == sampled
    hf_sampling = transformers.GenerationConfig(max_new_tokens=6, do_sample=True, top_k=0)
    assert tiny_hat.generate("Hello", generation_config=hf_sampling, seed=0) == sampled
    with pytest.raises(ValueError, match="temperature must be > 0"):
        tiny_hat.generate("Hello", do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        tiny_hat.generate("Hello", do_sample=True, top_k=-1)
    # top_p=0 keeps only the most likely id: sampling from it is greedy decoding
    assert tiny_hat.generate("Hello", max_new_tokens=6, do_sample=True, top_p=0.0) == greedy
    with pytest.raises(ValueError, match="top_p must be in"):
        tiny_hat.generate("Hello", do_sample=True, top_p=1.5)


def test_an_empty_stop_string_is_an_error(tiny_hat) -> None:
    """Every text ends with "": an empty stop string would end each row after its first id."""
    for stops in ("", ["", "\n"]):
        with pytest.raises(ValueError, match="stop_strings"):
            tiny_hat.generate("Hello", max_new_tokens=6, stop_strings=stops)
    assert tiny_hat.generate("Hello", max_new_tokens=6, stop_strings=[]) == tiny_hat.generate(
        "Hello", max_new_tokens=6
    )


class EndRowAt(LogitsProcessor):
    """A transformers LogitsProcessor: ends one row (EOD) at a given step."""

    def __init__(self, row: int, step: int) -> None:
        self.row, self.step, self.calls = row, step, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.calls == self.step:
            scores[self.row] = -float("inf")
            scores[self.row, EOD] = 0.0
        self.calls += 1
        return scores


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_transformers_logits_processor_sees_the_sequence(kind, tiny_hat, tiny_bpe) -> None:
    """A transformers processor that reads input_ids (3-gram blocking) takes effect: the
    prompt's content and the new ids are one contiguous sequence, as in transformers."""
    model = tiny_hat if kind == "hat" else tiny_bpe
    prompt = "ab ab ab"
    plain = model.generate(
        prompt, max_new_tokens=24, suppress_tokens=[EOD] if kind == "hat" else None
    )
    blocked = model.generate(
        prompt,
        max_new_tokens=24,
        logits_processor=[NoRepeatNGramLogitsProcessor(3)],
        suppress_tokens=[EOD] if kind == "hat" else None,
    )
    ids = _content_ids(model, prompt + blocked)
    grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
    new_grams = grams[len(_content_ids(model, prompt)) - 2 :]
    assert len(set(new_grams)) == len(new_grams)  # no 3-gram made by new ids repeats
    assert not set(new_grams) & set(grams[: len(_content_ids(model, prompt)) - 2])
    assert plain != blocked  # the untrained model repeats itself without it


def _content_ids(model, text: str) -> list[int]:
    return list(text.encode()) if model.config.model_type == "hat" else model.tokenizer.encode(text)


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_transformers_streamers(kind, tiny_hat, tiny_bpe) -> None:
    model = tiny_hat if kind == "hat" else tiny_bpe
    tok = HATTokenizer() if kind == "hat" else model.tokenizer
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    text = model.generate("Once upon", max_new_tokens=20, streamer=streamer)
    assert "".join(streamer) == text and text

    class Printed(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            shown.append(text)

    shown: list[str] = []  # a prompt ending in a newline: transformers decodes a single id
    text = model.generate(
        "Chapter 1\n", max_new_tokens=20, streamer=Printed(tok, skip_special_tokens=True)
    )
    assert "".join(shown) == "Chapter 1\n" + text


def test_hooks_run_after_their_module_is_imported(tmp_path, monkeypatch) -> None:
    (tmp_path / "hat_probe_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    calls = []
    when_imported({"hat_probe_module": lambda: calls.append(sys.modules["hat_probe_module"])})
    assert calls == []
    import hat_probe_module  # noqa: F401

    assert len(calls) == 1 and calls[0].VALUE == 1
    assert type(calls[0].__loader__).__name__ != "_RunAfterLoader"  # no trace left
    when_imported({"hat_probe_module": lambda: calls.append("again")})  # imported: runs now
    assert calls[-1] == "again"


def test_import_hat_registers_without_importing_transformers(saved) -> None:
    _, directory = saved["hat"]
    script = textwrap.dedent(
        f"""
        import sys
        import hat
        assert "transformers" not in sys.modules, "import hat imported transformers"
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(directory)!r})
        print(type(model).__name__)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "HATForCausalLM"
