"""hat.perturb: each perturbation's contract (rate, seeds, what it may touch, Unicode)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hat.perturb import (
    KEYBOARD_NEIGHBOURS,
    MISSPELLINGS_FILE,
    PAPER,
    PERTURBATIONS,
    WHOLE_TEXT,
    eligible_positions,
    misspellings,
    perturb,
    perturb_texts,
    select_positions,
)

from .conftest import SAMPLE_CORPUS

LONG = SAMPLE_CORPUS.read_text(encoding="utf-8")[:60_000]
MIXED = (
    "Café naïve Ærøskøbing, São Paulo and Zürich. 日本語のテキストと漢字。 "
    "Emoji 🥧👩‍👩‍👧🇸🇪 keep together; Привет, мир! Straße 3.14 x2y "
)
RATE_BASED = [name for name in PERTURBATIONS if name not in WHOLE_TEXT]


def paper_eligible(text: str) -> list[int]:
    """The paper's own definition, written out character by character."""
    return [i for i in range(1, len(text) - 1) if all(text[j].isalnum() for j in (i - 1, i, i + 1))]


def swapped_in_order(text: str, picks: list[int]) -> str:
    chars = list(text)
    for i in sorted(picks):
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def test_registry_has_the_papers_four_and_the_practical_ones() -> None:
    assert PAPER == ("permute", "replace", "delete", "uppercase")
    assert set(PAPER) < set(PERTURBATIONS)
    practical = {"lowercase", "random_case", "remove_space", "insert_space", "keyboard"}
    assert practical | {"strip_accents", "homoglyph", "misspell"} <= set(PERTURBATIONS)
    for name, fn in PERTURBATIONS.items():
        assert fn.__doc__ and perturb("abc def", name, 0.5, 3) == fn("abc def", 0.5, 3)


@pytest.mark.parametrize("text", [LONG, MIXED * 50])
def test_eligible_positions_follow_the_papers_definition(text: str) -> None:
    assert eligible_positions(text).tolist() == paper_eligible(text)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 1.0])
def test_paper_selection_is_int_of_eligible_times_rate(rate: float) -> None:
    picks = select_positions(LONG, rate, seed=5)
    eligible = set(paper_eligible(LONG))
    assert len(picks) == int(len(eligible) * rate)
    assert set(picks.tolist()) <= eligible and list(picks) == sorted(set(picks.tolist()))


def test_replace_touches_only_picked_characters_and_keeps_the_length() -> None:
    out = perturb(LONG, "replace", 0.1, seed=1)
    picks = set(select_positions(LONG, 0.1, seed=1).tolist())
    assert len(out) == len(LONG)
    changed = {i for i, (a, b) in enumerate(zip(LONG, out)) if a != b}
    assert changed <= picks and len(changed) >= 0.95 * len(picks)  # a draw may equal the old char
    assert all(33 <= ord(out[i]) <= 126 for i in picks)


def test_delete_removes_exactly_the_picked_characters() -> None:
    out = perturb(LONG, "delete", 0.1, seed=2)
    picks = set(select_positions(LONG, 0.1, seed=2).tolist())
    assert out == "".join(c for i, c in enumerate(LONG) if i not in picks)
    assert len(LONG) - len(out) == int(len(paper_eligible(LONG)) * 0.1)


def test_permute_swaps_each_pick_with_the_next_character() -> None:
    out = perturb(LONG, "permute", 0.1, seed=3)
    picks = select_positions(LONG, 0.1, seed=3).tolist()
    assert out == swapped_in_order(LONG, picks)
    isolated = [i for i in picks if i - 1 not in picks and i + 1 not in picks]
    assert isolated and all(out[i] == LONG[i + 1] and out[i + 1] == LONG[i] for i in isolated)
    # a run of adjacent picks, in text order: "abcd" with picks 1, 2 -> "acdb"
    assert perturb("abcd", "permute", 1.0) == swapped_in_order("abcd", [1, 2]) == "acdb"


@pytest.mark.parametrize("name", ["permute", "delete"])
def test_permute_and_delete_keep_the_non_alphanumeric_sequence(name: str) -> None:
    for text in (LONG, MIXED * 20):
        out = perturb(text, name, 0.3, seed=4)
        assert [c for c in out if not c.isalnum()] == [c for c in text if not c.isalnum()]
        if name == "permute":
            assert sorted(out) == sorted(text)


@pytest.mark.parametrize("name", RATE_BASED)
def test_same_seed_same_output_other_seed_other_output(name: str) -> None:
    a, b, c = (perturb(LONG, name, 0.1, seed=s) for s in (7, 7, 8))
    assert a == b and a != c and a != LONG


@pytest.mark.parametrize("name", sorted(WHOLE_TEXT))
def test_whole_text_perturbations_ignore_rate_and_seed(name: str) -> None:
    text = MIXED + LONG[:2000]
    assert perturb(text, name, 0.1, 1) == perturb(text, name, 0.9, 2) != text


@pytest.mark.parametrize("name", RATE_BASED)
def test_rate_zero_changes_nothing(name: str) -> None:
    assert perturb(LONG, name, 0.0, seed=1) == LONG


def test_practical_rates_count_exactly() -> None:
    spaces = sum(c.isspace() for c in LONG)
    assert len(LONG) - len(perturb(LONG, "remove_space", 0.2)) == int(spaces * 0.2)
    pairs = sum(a.isalnum() and b.isalnum() for a, b in zip(LONG, LONG[1:]))
    assert len(perturb(LONG, "insert_space", 0.2)) - len(LONG) == int(pairs * 0.2)
    letters = [i for i, c in enumerate(LONG) if c.isascii() and c.isalpha()]
    out = perturb(LONG, "keyboard", 0.2)
    assert sum(LONG[i] != out[i] for i in letters) == int(len(letters) * 0.2)
    out = perturb(LONG, "random_case", 0.2)
    cased = sum(c.swapcase() != c for c in LONG)
    assert sum(a != b for a, b in zip(LONG, out)) == int(cased * 0.2)
    out = perturb(LONG, "homoglyph", 0.5)
    assert sum(a != b for a, b in zip(LONG, out)) == int(
        sum(c in "acehijopsxyABCEHIJKMOPSTXY" for c in LONG) * 0.5
    )


def test_keyboard_typos_are_neighbouring_keys_in_the_same_case() -> None:
    out = perturb(LONG, "keyboard", 0.3, seed=9)
    for a, b in zip(LONG, out):
        if a != b:
            assert b.lower() in KEYBOARD_NEIGHBOURS[a.lower()] and a.isupper() == b.isupper()
    assert set(KEYBOARD_NEIGHBOURS["s"]) == set("awedxz")


def test_strip_accents() -> None:
    assert perturb("Café naïve Ångström São", "strip_accents") == "Cafe naive Angstrom Sao"
    assert perturb("Cafe\u0301", "strip_accents") == "Cafe"  # decomposed accents too
    assert perturb("ﬁne Ａ", "strip_accents") == "fine A"  # compatibility forms (NFKD)
    for text in ("नमस्ते दुनिया", "日本語 🥧", "Ærø Straße", LONG[:3000]):  # nothing to strip
        assert perturb(text, "strip_accents") == text


def test_homoglyphs_look_alike_and_come_back() -> None:
    out = perturb("ape", "homoglyph", 1.0)
    assert out == "\u0430\u0440\u0435" and out != "ape"
    assert perturb(out, "homoglyph", 1.0) == "ape"  # Cyrillic look-alikes go to Latin


def test_misspell_uses_the_shipped_list_and_keeps_case() -> None:
    table = misspellings()
    assert len(table) > 1000 and all(table.values())
    text = "Because the house was there, THE man believed it. " * 40
    out = perturb(text, "misspell", 0.5, seed=1)
    words, new = text.split(), out.split()
    assert len(words) == len(new)
    changed = [(a, b) for a, b in zip(words, new) if a != b]
    assert changed
    for a, b in changed:
        core_a, core_b = a.strip(",."), b.strip(",.")
        assert core_b.lower() in table[core_a.lower()]
        assert core_a.isupper() == core_b.isupper() and core_a[0].isupper() == core_b[0].isupper()
    licence = (MISSPELLINGS_FILE.parent / "README.md").read_text()
    assert "misspellings.tsv" in licence and "CC BY-SA 3.0" in licence


@pytest.mark.parametrize("name", list(PERTURBATIONS))
@pytest.mark.parametrize("rate", [0.1, 0.5, 1.0])
def test_mixed_script_input_gives_valid_utf8_with_emoji_intact(name: str, rate: float) -> None:
    text = MIXED * 10
    out = perturb(text, name, rate, seed=11)
    out.encode("utf-8")  # strict: no lone surrogates, nothing unencodable
    astral = [c for c in text if ord(c) > 0xFFFF or unicodedata.category(c) == "Cf"]
    assert [c for c in out if ord(c) > 0xFFFF or unicodedata.category(c) == "Cf"] == astral


@pytest.mark.parametrize(
    "name",
    [
        "keyboard",
        "homoglyph",
        "misspell",
        "strip_accents",
        "random_case",
        "remove_space",
        "uppercase",
        "lowercase",
    ],
)
def test_scripts_a_perturbation_does_not_apply_to_come_back_unchanged(name: str) -> None:
    text = "日本語のテキストと漢字。🥧👩‍👩‍👧🇸🇪"
    assert perturb(text, name, 0.5) == text
    assert perturb("🥧 👩‍👩‍👧, 🇸🇪!", "permute", 1.0) == "🥧 👩‍👩‍👧, 🇸🇪!"  # nothing alphanumeric


def test_uppercase_is_idempotent_and_whole_text() -> None:
    text = MIXED + LONG[:5000]
    once = perturb(text, "uppercase")
    assert once == text.upper() and perturb(once, "uppercase") == once
    assert perturb(perturb(text, "lowercase"), "lowercase") == text.lower()


def test_perturb_texts_gives_each_text_its_own_stream() -> None:
    texts = [LONG[:2000]] * 3
    out = perturb_texts(texts, "replace", 0.2, seed=4)
    assert len(set(out)) == 3
    assert out[1] == perturb(texts[1], "replace", 0.2, seed=(4, 1))
    assert perturb_texts(texts, "replace", 0.2, seed=4) == out


def test_bad_arguments_say_what_to_change() -> None:
    with pytest.raises(ValueError, match="unknown perturbation 'shout'; known: permute, replace"):
        perturb("abc", "shout")
    for rate in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"must be a number in \[0, 1\]"):
            perturb("abc", "delete", rate)
    with pytest.raises(TypeError, match="takes a str"):
        perturb(b"abc", "delete")


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(max_size=80), name=st.sampled_from(list(PERTURBATIONS)), seed=st.integers(0, 99)
)
def test_any_text_gives_valid_deterministic_text(text: str, name: str, seed: int) -> None:
    out = perturb(text, name, 0.5, seed)
    assert isinstance(out, str) and out == perturb(text, name, 0.5, seed)
    out.encode("utf-8")


def test_strip_accents_leaves_korean_syllables_whole() -> None:
    """Hangul has no diacritics, but NFKD takes every syllable apart into jamo (한 -> 3
    characters, 9 bytes): the syllables must come back as they were."""
    text = "한국어 텍스트, Café"
    assert perturb(text, "strip_accents") == "한국어 텍스트, Cafe"
    assert perturb("ｶﾞ が", "strip_accents") == "カ か"  # kana still lose the voicing mark
