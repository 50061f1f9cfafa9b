"""The lm-evaluation-harness adapter (``--model hat``) and the greedy flag of ``score``.

The adapter's tests skip when lm-eval is absent (``pip install -e ".[eval]"``; CI installs it).
Tasks are written by the tests (a YAML and a local JSONL): nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import hat
from hat.evaluation import MultipleChoiceExample, bits_per_byte, load_bigbench, multiple_choice
from hat.tokenizer import BOS_ID

try:
    import lm_eval
    from lm_eval.api.instance import Instance

    from hat.integrations.lm_eval import HATEvalLM
except ImportError:
    lm_eval = None
needs_lm_eval = pytest.mark.skipif(lm_eval is None, reason="lm-eval not installed (.[eval])")


@pytest.fixture(params=["hat", "bpe"])
def model(request, tiny_hat, tiny_bpe):
    return tiny_hat if request.param == "hat" else tiny_bpe


def always(model, unit: int):
    """``model`` with its head replaced so that every position's argmax is ``unit``: its
    greedy continuation of anything is known."""
    old = model.decoder.head if model.config.model_type == "hat" else model.head
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[unit] = 5.0
    if model.config.model_type == "hat":
        model.decoder.head = head
    else:
        model.head = head
    return model


def _repeat_unit(model) -> tuple[int, str]:
    """A unit and its text: byte "a" for HAT; the twin's newline token (never merged)."""
    if model.config.model_type == "hat":
        return ord("a"), "a"
    (newline,) = model.tokenizer.encode("\n")
    return newline, "\n"


# ---- score(return_greedy=True): no lm-eval needed ---------------------------------------------
def test_is_greedy_on_a_known_case(model) -> None:
    unit, piece = _repeat_unit(model)
    always(model, unit)
    contexts = ["Once upon a time", "", "x"]
    texts = [piece * 4, piece * 2 + "b", "b" + piece]
    scored = model.score(texts, contexts, return_greedy=True)
    assert [greedy for _, greedy in scored] == [True, False, False]
    assert [s for s, _ in scored] == pytest.approx(model.score(texts, contexts))
    # rolling: greedy only if every window's targets are
    long = piece * 150  # three windows of 64 bytes
    (value, greedy), (_, broken) = model.score(
        [long, long + "b"], rolling=True, window_bytes=64, return_greedy=True
    )
    assert greedy and not broken
    assert value == pytest.approx(model.score([long], rolling=True, window_bytes=64)[0])


def test_is_greedy_matches_argmax_of_the_logits(tiny_hat) -> None:
    """On an untrained model: is_greedy is exactly "every target byte is the argmax"."""
    text, context = " the cat", "I saw"
    ((_, greedy),) = tiny_hat.score([text], [context], return_greedy=True)
    logprobs = tiny_hat.byte_logprobs(context + text)  # [bytes]
    batch = hat.collate_documents([hat.document_words(context + text, tiny_hat.splitter)])
    with torch.no_grad():
        logits = tiny_hat(**batch).logits[0]
    n_ctx = len(context.encode())
    targets = batch["labels"][0, n_ctx : n_ctx + len(text.encode())]
    assert greedy == bool((logits[n_ctx : n_ctx + len(text)].argmax(-1) == targets).all())
    assert logprobs.shape[0] == len((context + text).encode())


# ---- the adapter ----------------------------------------------------------------------------
def _requests(kind: str, args: list[tuple]) -> list:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@needs_lm_eval
def test_adapter_loglikelihood_equals_score(model) -> None:
    lm = HATEvalLM(model, batch_size=2)
    pairs = [("The cat", " sat."), ("", "Hello"), ("Zwölf", " Boxkämpfer"), ("Q: 1+1=", " 2")]
    expected = model.score([c for _, c in pairs], [x for x, _ in pairs], return_greedy=True)
    got = lm.loglikelihood(_requests("loglikelihood", pairs))
    assert [g for _, g in got] == [g for _, g in expected]
    assert [v for v, _ in got] == pytest.approx([v for v, _ in expected], rel=1e-5)  # batching
    # a context's trailing space belongs to the continuation (lm-eval's rule)
    (moved,) = lm.loglikelihood(_requests("loglikelihood", [("The cat ", "sat.")]))
    assert moved == pytest.approx(model.score([" sat."], ["The cat"], return_greedy=True)[0])
    # too long a context keeps its end
    long_context = "word " * 2000
    (cut,) = lm.loglikelihood(_requests("loglikelihood", [(long_context, " end")]))
    assert math.isfinite(cut[0])


@needs_lm_eval
def test_adapter_is_greedy(model) -> None:
    unit, piece = _repeat_unit(model)
    lm = HATEvalLM(always(model, unit))
    results = lm.loglikelihood(_requests("loglikelihood", [("x", piece * 3), ("x", "zz")]))
    assert [greedy for _, greedy in results] == [True, False]


@needs_lm_eval
def test_adapter_rolling_equals_rolling_score(model) -> None:
    lm = HATEvalLM(model, window_bytes=64)
    texts = ["short document", "a longer one " * 30]
    got = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(t,) for t in texts]))
    assert got == pytest.approx(model.score(texts, rolling=True, window_bytes=64))


@needs_lm_eval
def test_adapter_generation_stops_at_until(model) -> None:
    unit, piece = _repeat_unit(model)
    lm = HATEvalLM(always(model, unit), batch_size=2)
    raw = []
    generate = model.generate
    model.generate = lambda *a, **k: raw.extend(out := generate(*a, **k)) or out
    options = {"until": [piece * 3], "max_gen_toks": 40, "do_sample": False, "temperature": 0.0}
    results = lm.generate_until(
        _requests("generate_until", [("x", options), ("Once upon", options)])
    )
    assert raw == [piece * 3, piece * 3]  # generation stopped at the stop string ...
    assert results == ["", ""]  # ... which lm-eval's answer does not include
    never = {"until": ["never"], "max_gen_toks": 5}
    (text,) = lm.generate_until(_requests("generate_until", [("x", never)]))
    assert text == piece * 5  # max_gen_toks counts the model's units


@needs_lm_eval
def test_adapter_generation_with_backbone_wait(tiny_hat, tiny_bpe, tmp_path, monkeypatch) -> None:
    """``backbone_wait`` reaches generate() in generate_until's batches; greedy text is the
    same, with rows that did wait; the twin refuses it."""
    from hat.generation import HATCachedEngine

    waited = []
    schedule = HATCachedEngine._schedule
    monkeypatch.setattr(
        HATCachedEngine,
        "_schedule",
        lambda self: (schedule(self), waited.append(len(self.waiting)))[0],
    )
    calls = []
    generate = tiny_hat.generate
    tiny_hat.generate = lambda *a, **k: calls.append(k) or generate(*a, **k)
    options = {"until": ["\n\n"], "max_gen_toks": 24, "do_sample": False}
    contexts = ["Once upon a time", "x", "The quick brown fox", "It was"]
    requests = _requests("generate_until", [(c, options) for c in contexts])
    plain = HATEvalLM(tiny_hat, batch_size=4).generate_until(requests)
    waiting = HATEvalLM(tiny_hat, batch_size=4, backbone_wait=3).generate_until(requests)
    assert waiting == plain and max(waited) >= 2  # rows sat steps out
    assert "backbone_wait" not in calls[0] and calls[1]["backbone_wait"] == 3
    tiny_bpe.save_pretrained(tmp_path / "bpe")
    with pytest.raises(ValueError, match="backbone_wait is for HAT"):
        HATEvalLM.create_from_arg_string(f"pretrained={tmp_path / 'bpe'},backbone_wait=4", {})
    with pytest.raises(ValueError, match="backbone_wait must be 'auto' or a whole number"):
        HATEvalLM(tiny_hat, backbone_wait=0)  # at construction, not after an evaluation


@needs_lm_eval
def test_adapter_checks_window_bytes_at_construction(model) -> None:
    """A window_bytes out of range fails when the model is made, not at the first
    ``loglikelihood_rolling`` request, after the other tasks of a long run."""
    for bad in (4, model.max_window_bytes() + 1):
        with pytest.raises(ValueError, match=f"window_bytes={bad} must be in"):
            HATEvalLM(model, window_bytes=bad)
    assert HATEvalLM(model, window_bytes=64).window_bytes == 64


@needs_lm_eval
def test_adapter_generation_ignores_empty_stop_strings(model) -> None:
    """lm-eval ignores ``""`` in ``until`` (``postprocess_generated_text``; its seq2seq models
    add the empty EOS text): it must not end the evaluation with generate()'s empty-stop
    error."""
    unit, piece = _repeat_unit(model)
    lm = HATEvalLM(always(model, unit))
    options = {"until": ["", piece * 2], "max_gen_toks": 6, "do_sample": False}
    assert lm.generate_until(_requests("generate_until", [("x", options)])) == [""]
    (text,) = lm.generate_until(
        _requests("generate_until", [("x", {"until": "", "max_gen_toks": 3})])
    )
    assert text == piece * 3


@needs_lm_eval
def test_adapter_generation_ignores_the_saved_answer_count_and_word_limit(tiny_hat) -> None:
    """A saved generation config's ``num_return_sequences`` (several answers per prompt) and
    ``max_new_words`` must not reach lm-eval's requests: one answer each, of up to
    ``max_gen_toks`` bytes."""
    model = always(tiny_hat, ord("\n"))  # every newline is a new word
    model.generation_config = model.generation_config.update(
        do_sample=True, num_return_sequences=2, max_new_words=1
    )
    lm = HATEvalLM(model, batch_size=4)
    options = {"until": ["never"], "max_gen_toks": 5, "do_sample": False}
    got = lm.generate_until(_requests("generate_until", [(c, options) for c in ("x", "ab", "c d")]))
    assert got == ["\n" * 5] * 3
    sampled = {"until": ["never"], "max_gen_toks": 4, "do_sample": True, "temperature": 1e-3}
    got = lm.generate_until(_requests("generate_until", [(c, sampled) for c in ("x", "ab", "c d")]))
    assert got == ["\n" * 4] * 3


def _task_writer():
    """scripts/lm_eval_tasks.py: the YAML the docs' harness runs use."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "lm_eval_tasks.py"
    spec = importlib.util.spec_from_file_location("lm_eval_tasks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_tasks(directory, examples: list[MultipleChoiceExample], documents: list[str]) -> None:
    tasks = _task_writer()
    bigbench = {
        "examples": [
            {
                "input": e.input,
                # every fourth example has two right choices (BIG-bench allows several)
                "target_scores": {
                    c: int(i == e.answer or (k % 4 == 0 and i == (e.answer + 1) % len(e.choices)))
                    for i, c in enumerate(e.choices)
                },
            }
            for k, e in enumerate(examples)
        ]
    }
    (directory / "hat_test_mc.json").write_text(json.dumps(bigbench))
    tasks.write_bigbench(directory, directory / "hat_test_mc.json", None)
    data = tasks.write_jsonl(directory / "docs.jsonl", [{"text": d} for d in documents])
    (directory / "hat_test_ppl.yaml").write_text(
        tasks.ROLLING.format(name="hat_test_ppl", data=data)
    )


def _examples(sample_text: str) -> list[MultipleChoiceExample]:
    """Continue a sentence of the sample corpus: its next word, or another word."""
    words = sample_text.split()
    examples = []
    for i in range(12):
        at = 50 + 97 * i
        choices = list(dict.fromkeys(words[at + 5 : at + 90 : 7]))[:3]  # 3 different words
        examples.append(MultipleChoiceExample(" ".join(words[at : at + 5]), choices, i % 3))
    return examples


@needs_lm_eval
def test_simple_evaluate_equals_multiple_choice(model, tmp_path, sample_text) -> None:
    from lm_eval.tasks import TaskManager

    examples = _examples(sample_text)
    documents = [sample_text[:300], sample_text[300:900]]
    _write_tasks(tmp_path, examples, documents)
    model.save_pretrained(tmp_path / "model")
    results = lm_eval.simple_evaluate(
        model="hat",  # found in lm-eval's registry: `import hat` put it there
        model_args={"pretrained": str(tmp_path / "model"), "dtype": "float32"},
        tasks=["hat_test_mc", "hat_test_ppl"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        device="cpu",
        batch_size=4,
        bootstrap_iters=0,
        log_samples=False,
    )["results"]
    ours = multiple_choice(model, load_bigbench(tmp_path / "hat_test_mc.json"))
    assert any(ex.also_correct for ex in load_bigbench(tmp_path / "hat_test_mc.json"))
    assert results["hat_test_mc"]["acc,none"] == pytest.approx(ours.accuracy)
    expected_bpb = bits_per_byte(model, documents, rolling=True)
    assert results["hat_test_ppl"]["bits_per_byte,none"] == pytest.approx(expected_bpb, rel=1e-6)


@needs_lm_eval
def test_hat_lm_eval_command(tiny_hat, tmp_path, sample_text, capsys, monkeypatch) -> None:
    from lm_eval.tasks import TaskManager

    from hat.integrations.lm_eval import cli_main

    # lm-eval's CLI indexes its thousands of built-in tasks first (~30 s here): skip them
    index = TaskManager.__init__
    monkeypatch.setattr(
        TaskManager, "__init__", lambda self, *a, **k: index(self, *a, include_defaults=False, **k)
    )

    _write_tasks(tmp_path, _examples(sample_text)[:4], ["one document"])
    tiny_hat.save_pretrained(tmp_path / "model")
    cli_main(
        [
            "--model", "hat",
            "--model_args", f"pretrained={tmp_path / 'model'}",
            "--tasks", "hat_test_mc",
            "--include_path", str(tmp_path),
            "--device", "cpu",
            "--batch_size", "4",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "hat_test_mc" in out and "acc" in out


@needs_lm_eval
def test_registry_and_model_args(tiny_bpe, tmp_path) -> None:
    from lm_eval.api.registry import get_model

    assert get_model("hat") is HATEvalLM
    tiny_bpe.save_pretrained(tmp_path / "bpe")
    lm = HATEvalLM.create_from_arg_string(
        f"pretrained={tmp_path / 'bpe'},dtype=bfloat16,max_gen_toks=7",
        {"batch_size": "auto", "device": "cpu"},
    )
    assert lm.model.dtype == torch.bfloat16 and lm.batch_size == 16 and lm.max_gen_toks == 7
    assert lm.get_model_info()["model_type"] == "bpe"
    assert lm.model.tokenizer.encode("x")[0] != BOS_ID


def test_task_writer_refuses_two_tasks_of_one_name(tmp_path, capsys) -> None:
    """scripts/lm_eval_tasks.py: each file names its task (a YAML and a JSONL); two files of
    one name (BIG-bench's <task>/task.json) would leave only the last task, silently."""
    tasks = _task_writer()
    paths = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "task.json"
        path.write_text(json.dumps({"examples": [{"input": name, "target_scores": {"x": 1}}]}))
        paths.append(str(path))
    with pytest.raises(SystemExit):
        tasks.main([str(tmp_path / "out"), "--max-docs", "0", "--bigbench", *paths])
    assert "task files need different names" in capsys.readouterr().err
    assert not (tmp_path / "out" / "task.yaml").exists()
    tasks.main([str(tmp_path / "out"), "--max-docs", "0", "--bigbench", paths[0]])
    assert (tmp_path / "out" / "task.yaml").is_file()
