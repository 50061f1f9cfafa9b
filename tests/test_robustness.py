"""hat.robustness and hat-robustness: measures, bootstrap intervals, the CLI end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import hat
from hat.cli.robustness import RobustnessJob, run
from hat.evaluation import MultipleChoiceExample, bits_per_byte, load_task, multiple_choice
from hat.perturb import perturb_texts
from hat.robustness import (
    CSV_COLUMNS,
    RobustnessResult,
    bootstrap_indices,
    evaluate_robustness,
    percentile_interval,
    prepare_documents,
    relative_degradation,
    split_halves,
)
from tests.helpers import check, cli, run_cli

LN2 = math.log(2)


class StubScorer:
    """A model whose log-likelihoods we choose: ``score`` asks ``loglik(text, context)``."""

    def __init__(self, loglik, model_type: str = "stub") -> None:
        self.loglik = loglik
        self.config = SimpleNamespace(model_type=model_type)
        self.calls = 0

    def score(self, texts, contexts=None, batch_size=16, rolling=False, window_bytes=None):
        self.calls += 1
        assert len(texts) <= batch_size
        contexts = contexts or [""] * len(texts)
        return [self.loglik(t, c) for t, c in zip(texts, contexts)]

    def max_window_bytes(self) -> int:
        return 4096

    def num_parameters(self) -> int:
        return 7


# four questions, two choices each; the answers are 0, 1, 1, 1
EXAMPLES = [
    MultipleChoiceExample(f"Question {i}: which one?", ["yes", "no"], answer)
    for i, answer in enumerate([0, 1, 1, 1])
]
CLEAN_INPUTS = {ex.input: ex.choices[ex.answer] for ex in EXAMPLES}


def knows_clean_questions(text: str, context: str) -> float:
    """Right on clean questions; on perturbed ones it always picks the first choice."""
    if context in CLEAN_INPUTS:
        return -1.0 if text == " " + CLEAN_INPUTS[context] else -9.0
    return -1.0 if text == " yes" else -9.0


def rows_by(result, **match):
    return [r for r in result.rows if all(getattr(r, k) == v for k, v in match.items())]


def test_task_accuracy_and_degradation_with_chosen_loglikelihoods() -> None:
    stub = StubScorer(knows_clean_questions)
    result = evaluate_robustness(
        {"stub": stub}, ["uppercase"], tasks={"qa": EXAMPLES}, batch_size=3, progress=False
    )
    (acc,) = rows_by(result, measure="accuracy")
    assert (acc.clean, acc.perturbed, acc.n) == (1.0, 0.25, 4)  # perturbed: only answer 0 right
    assert acc.degradation == pytest.approx(0.75)
    assert acc.degradation_low <= acc.degradation <= acc.degradation_high
    assert acc.ratio is None and acc.rate is None  # uppercase ignores the rate
    assert stub.calls == 2 * math.ceil(8 / 3)  # clean + perturbed, 8 choices in batches of 3


def test_byte_normalised_accuracy_prefers_likelier_bytes() -> None:
    example = MultipleChoiceExample("Pick:", ["a", "bbbb"], 1)  # " a" 2 bytes, " bbbb" 5 bytes
    stub = StubScorer(lambda t, c: -2.0 if t == " a" else -3.0)  # -1.0 vs -0.6 per byte
    result = evaluate_robustness({"s": stub}, ["permute"], tasks={"t": [example]}, progress=False)
    assert rows_by(result, measure="accuracy")[0].clean == 0.0
    assert rows_by(result, measure="accuracy_byte_normalised")[0].clean == 1.0


def test_bits_per_byte_measures_with_chosen_loglikelihoods() -> None:
    docs = ["The first half of this line and then the second half of it. " * 3] * 5
    firsts = {split_halves(d)[0] for d in docs}

    def loglik(text: str, context: str) -> float:
        n = len(text.encode())
        if context:  # a second half: 2 bits per byte after a clean first half, else 3
            return -(2.0 if context in firsts else 3.0) * n * LN2
        return -(2.0 if text in docs else 4.0) * n * LN2  # a whole document, clean or not

    result = evaluate_robustness(
        {"s": StubScorer(loglik)}, ["delete"], documents={"d": docs}, progress=False
    )
    (given,) = rows_by(result, measure="bpb_clean_given_perturbed")
    (whole,) = rows_by(result, measure="bpb_perturbed")
    assert (given.clean, given.perturbed) == pytest.approx((2.0, 3.0))
    assert given.degradation == pytest.approx(0.5)
    assert (whole.clean, whole.perturbed, whole.degradation) == pytest.approx((2.0, 4.0, 1.0))
    # every document degrades alike: every resample gives the same value, a zero-width interval
    assert given.degradation_low == pytest.approx(0.5) and given.degradation_high == pytest.approx(
        0.5
    )


def test_ratio_divides_by_the_reference_on_the_same_resamples() -> None:
    def answers_no_when_perturbed(text: str, context: str) -> float:
        if context in CLEAN_INPUTS:
            return knows_clean_questions(text, context)
        return -1.0 if text == " no" else -9.0

    base = StubScorer(knows_clean_questions)
    other = StubScorer(answers_no_when_perturbed)
    result = evaluate_robustness(
        {"base": base, "other": other}, ["uppercase"], tasks={"qa": EXAMPLES}, progress=False
    )
    ref, row = rows_by(result, measure="accuracy")
    assert ref.model == "base" and ref.ratio is None
    # perturbed, "other" always answers " no": 3 of 4 right, degradation 0.25 vs the base's 0.75
    assert row.degradation == pytest.approx(0.25) and row.ratio == pytest.approx(1 / 3)
    assert row.ratio_low <= row.ratio <= row.ratio_high


def test_bootstrap_interval_contains_the_estimate_and_narrows_like_one_over_sqrt_n() -> None:
    rng = np.random.default_rng(0)
    clean, perturbed = rng.random(200) < 0.8, rng.random(200) < 0.5

    def interval(c, p, seed=0):
        idx = bootstrap_indices(len(c), 2000, seed)
        samples = relative_degradation(c[idx].mean(1), p[idx].mean(1), True)
        return percentile_interval(samples, 0.95)

    point = relative_degradation(clean.mean(), perturbed.mean(), True)
    low, high = interval(clean, perturbed)
    assert low < point < high
    low4, high4 = interval(np.tile(clean, 4), np.tile(perturbed, 4))  # 4x the items
    assert 0.4 < (high4 - low4) / (high - low) < 0.6  # about 1 / sqrt(4)
    assert interval(clean, perturbed) == (low, high)  # seeded
    assert interval(clean, perturbed, seed=1) != (low, high)
    assert all(math.isnan(x) for x in percentile_interval(np.array([np.nan]), 0.95))


def test_documents_are_cut_at_whitespace_and_halves_join_back() -> None:
    text = ("Ünïcödé wörds and 日本語 sentences. " * 200).strip()
    docs = prepare_documents([text], max_bytes=3000, doc_bytes=256)
    assert docs and sum(len(d.encode()) for d in docs) >= 3000 - 256
    assert all(64 <= len(d.encode()) <= 256 for d in docs)
    assert "".join(docs).replace(" ", "") in text.replace(" ", "")
    for doc in docs:
        first, second = split_halves(doc)
        assert first + second == doc and second[0] == " " and first
        assert abs(len(first) - len(doc) / 2) < 40
    assert split_halves("abcdef") == ("abc", "def")  # no whitespace: the middle character


def test_real_models_clean_numbers_match_the_evaluation_api(tiny_hat, tiny_bpe) -> None:
    docs = prepare_documents(
        [(Path(hat.__file__).parent / "assets/sample_corpus.txt").read_text()[:6000]],
        max_bytes=1500,
        doc_bytes=300,
    )
    examples = [MultipleChoiceExample("The capital letter of a is", [" A", " b", " z"], 0)] * 3
    result = evaluate_robustness(
        {"hat": tiny_hat, "bpe": tiny_bpe},
        ["replace"],
        tasks={"t": examples},
        documents={"d": docs},
        rate=0.2,
        seed=3,
        progress=False,
    )
    window = min(tiny_hat.max_window_bytes(), tiny_bpe.max_window_bytes())
    assert result.settings["window_bytes"] == window
    halves = [split_halves(d) for d in docs]
    firsts, seconds = [h[0] for h in halves], [h[1] for h in halves]
    perturbed_firsts = perturb_texts(firsts, "replace", 0.2, (3, 1, 0))
    for name, model in (("hat", tiny_hat), ("bpe", tiny_bpe)):
        acc = rows_by(result, model=name, measure="accuracy")[0]
        assert acc.clean == multiple_choice(model, examples).accuracy
        given = rows_by(result, model=name, measure="bpb_clean_given_perturbed")[0]
        assert given.clean == pytest.approx(bits_per_byte(model, seconds, firsts), rel=1e-5)
        assert given.perturbed == pytest.approx(
            bits_per_byte(model, seconds, perturbed_firsts), rel=1e-5
        )
        whole = rows_by(result, model=name, measure="bpb_perturbed")[0]
        assert whole.clean == pytest.approx(bits_per_byte(model, docs), rel=1e-5)


def test_bad_input_errors_name_the_fix(tiny_hat, tmp_path: Path) -> None:
    model = str(tiny_hat.save_pretrained(tmp_path / "m"))
    text = tmp_path / "ok.txt"
    text.write_text("It is a truth universally acknowledged, that a single man. " * 5)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Café crème, déjà vu. ".encode("latin-1") * 5)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    no_choices = tmp_path / "nochoices.jsonl"
    no_choices.write_text(json.dumps({"context": "Q?", "choices": [], "label": 0}) + "\n")
    bigbench_empty = tmp_path / "bb.json"
    bigbench_empty.write_text(json.dumps({"examples": [{"input": "Q?", "target_scores": {}}]}))
    latin1_task = tmp_path / "latin1.jsonl"
    latin1_task.write_bytes(b'{"context": "caf\xe9", "choices": ["a"], "label": 0}\n')
    (tmp_path / "nomodel").mkdir()
    cases = [
        (dict(perturbations=["shout"]), "unknown perturbation 'shout'; known: permute, replace"),
        (dict(rate=1.5), r"rate=1.5 must be a number in \[0, 1\]"),
        (dict(rate=-0.1), r"must be a number in \[0, 1\]"),
        (dict(tasks=[str(empty)]), "has no examples: write one JSON object per line"),
        (dict(tasks=[str(no_choices)]), '"choices" must be a non-empty list'),
        (dict(tasks=[str(bigbench_empty)]), "non-empty 'target_scores'"),
        (dict(tasks=[str(latin1_task)]), "latin1.jsonl is not UTF-8: convert it"),
        (
            dict(models=[str(tmp_path / "nomodel")]),
            "config.json not found: is .* a saved hat model",
        ),
        (
            dict(models=[str(tmp_path / "missing")]),
            "model .* not found .neither a directory nor a Hub id",
        ),
        (dict(texts=[str(latin1)]), r"texts: .*latin1.txt is not UTF-8 text \(byte 3: b'\\xe9"),
        (dict(texts=[], tasks=[]), "nothing to evaluate"),
    ]
    for change, message in cases:
        job = RobustnessJob(models=[model], texts=[str(text)], output_dir=str(tmp_path / "o"))
        for key, value in change.items():
            setattr(job, key, value)
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            run(job)
    assert not (tmp_path / "o").exists()  # nothing written


@pytest.mark.slow
def test_hat_robustness_cli_end_to_end_equals_the_python_api(
    tiny_hat, tiny_bpe, tmp_path: Path
) -> None:
    hat_dir = tiny_hat.save_pretrained(tmp_path / "hat")
    bpe_dir = tiny_bpe.save_pretrained(tmp_path / "bpe")
    book = tmp_path / "book.txt"
    book.write_text((Path(hat.__file__).parent / "assets/sample_corpus.txt").read_text()[:5000])
    task = tmp_path / "task.jsonl"
    lines = [
        {
            "context": f"Item {i}: the word that is spelt right is",
            "choices": ["house", "hsoue"],
            "label": i % 2 and "house" or 0,
        }
        for i in range(4)
    ]
    task.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    args = [
        f"models=[{hat_dir},{bpe_dir}]",
        f"texts=[{book}]",
        f"tasks=[{task}]",
        "perturbations=[permute,uppercase]",
        "rate=0.2",
        "seed=1",
        "max_bytes=600",
        "doc_bytes=200",
        "n_bootstrap=200",
        f"output_dir={out}",
    ]
    proc = run_cli(cli(*args, module="hat.cli.robustness"), env={"MPLBACKEND": "Agg"}, cwd=tmp_path)
    check(proc)
    assert "| dataset | measure | perturbation | model |" in proc.stdout
    assert {p.name for p in out.iterdir()} == {
        "robustness.csv",
        "robustness.json",
        "robustness.png",
    }
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "robustness.json").read_text())
    with open(out / "robustness.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == CSV_COLUMNS == saved["columns"]
    assert len(table) == len(saved["rows"]) == 2 * 2 * (2 + 2)  # models x perturbations x measures

    expected = evaluate_robustness(
        {str(hat_dir): hat.load_pretrained(hat_dir), str(bpe_dir): hat.load_pretrained(bpe_dir)},
        ["permute", "uppercase"],
        tasks={"task": load_task(task)},
        documents={"book.txt": prepare_documents([book.read_text()], max_bytes=600, doc_bytes=200)},
        rate=0.2,
        seed=1,
        n_bootstrap=200,
        progress=False,
    )
    assert len(expected.rows) == len(saved["rows"])
    for want, got, line in zip(expected.to_dict()["rows"], saved["rows"], table):
        for key in CSV_COLUMNS:
            if isinstance(want[key], float):
                assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key
                assert float(line[key]) == pytest.approx(want[key], rel=1e-6, abs=1e-9), key
            else:
                assert got[key] == want[key], key
    assert any(r["ratio"] is not None for r in saved["rows"])
    assert RobustnessResult.load(out / "robustness.json").to_dict() == saved

    robustness = cli(
        f"models=[{hat_dir}]",
        f"texts=[{book}]",
        "perturbations=[shout]",
        module="hat.cli.robustness",
    )
    bad = run_cli(robustness, cwd=tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "hat-robustness: error: unknown perturbation 'shout'; known: "
        "permute, replace, delete, uppercase, lowercase, random_case, remove_space, "
        "insert_space, keyboard, strip_accents, homoglyph, misspell"
    ]


def test_a_saved_result_with_undefined_degradations_loads_and_plots_again(tmp_path: Path) -> None:
    """A model that is always wrong on clean questions has degradation 0 / 0 (NaN, written as
    null); ``RobustnessResult.load`` must give rows that plot and print as before."""
    always_no = StubScorer(lambda t, c: -1.0 if t == " no" else -9.0)
    examples = [MultipleChoiceExample(f"Q{i}: which one?", ["yes", "no"], 0) for i in range(4)]
    result = evaluate_robustness(
        {"s": always_no, "t": always_no},
        ["uppercase"],
        tasks={"qa": examples},
        n_bootstrap=20,
        progress=False,
    )
    assert all(math.isnan(r.degradation) for r in result.rows)
    result.write(tmp_path, plot=False)
    back = RobustnessResult.load(tmp_path / "robustness.json")
    assert back.markdown() == result.markdown()
    assert back.to_dict() == result.to_dict()
    pytest.importorskip("matplotlib")
    assert back.write(tmp_path / "again")[-1].read_bytes()[:4] == b"\x89PNG"


def test_window_bytes_zero_is_not_silently_replaced_by_the_default(tiny_hat) -> None:
    docs = ["It is a truth universally acknowledged, that a single man in want. " * 2]
    with pytest.raises(ValueError, match="window_bytes=0 must be in"):
        evaluate_robustness(
            {"m": tiny_hat}, ["uppercase"], documents={"d": docs}, window_bytes=0, progress=False
        )


def test_cli_datasets_with_the_same_name_are_an_error_not_overwritten(tmp_path: Path) -> None:
    """Two text files called book.txt (or task files with one stem) were one dataset: the
    first file's documents were silently dropped."""
    from hat.cli.robustness import load_inputs

    text = "It is a truth universally acknowledged, that a single man. " * 5
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "book.txt").write_text(text)
        (tmp_path / sub / "qa.jsonl").write_text(
            json.dumps({"context": "Q?", "choices": ["x", "y"], "label": 0}) + "\n"
        )
    for change in (
        dict(texts=[str(tmp_path / "a/book.txt"), str(tmp_path / "b/book.txt")]),
        dict(tasks=[str(tmp_path / "a/qa.jsonl"), str(tmp_path / "b/qa.jsonl")]),
    ):
        job = RobustnessJob(models=[str(tmp_path)], **change)
        with pytest.raises(ValueError, match="twice"):
            load_inputs(job)


def test_cli_checks_the_bootstrap_settings_before_loading_models(tmp_path: Path) -> None:
    (tmp_path / "nomodel").mkdir()  # loading it would fail: the settings must be checked first
    text = tmp_path / "ok.txt"
    text.write_text("It is a truth universally acknowledged, that a single man. " * 5)
    for change in (dict(confidence=1.5), dict(n_bootstrap=0)):
        job = RobustnessJob(models=[str(tmp_path / "nomodel")], texts=[str(text)], **change)
        with pytest.raises(ValueError, match="n_bootstrap must be >= 1 and confidence in"):
            run(job)


def test_a_device_this_machine_lacks_stops_before_loading(tiny_hat, tmp_path: Path) -> None:
    """device=cuda on a machine without CUDA (or a misspelt device) names the setting, not
    torch's traceback after the inputs are read."""
    import torch

    text = tmp_path / "book.txt"
    text.write_text("It is a truth universally acknowledged, that a single man. " * 5)
    model = str(tiny_hat.save_pretrained(tmp_path / "m"))
    bad = "gpu" if torch.cuda.is_available() else "cuda"
    job = RobustnessJob(models=[model], texts=[str(text)], device=bad)
    with pytest.raises(ValueError, match=f"device: '{bad}'"):
        run(job)


def test_tool_submodules_load_on_first_use_after_import_hat() -> None:
    """README's `hat.perturb.perturb(...)` / `hat.robustness...` / `hat.evaluation...` after a
    plain `import hat` (they raised AttributeError: not imported by hat/__init__)."""
    import subprocess
    import sys

    code = (
        "import sys, hat\n"
        "assert 'hat.robustness' not in sys.modules  # not loaded until used\n"
        "assert hat.perturb.perturb('Hi there', 'uppercase') == 'HI THERE'\n"
        "assert callable(hat.robustness.evaluate_robustness)\n"
        "assert callable(hat.evaluation.compare_models) and callable(hat.flops.mfu)\n"
        "try:\n    hat.no_such_thing\nexcept AttributeError:\n    pass\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
