"""Rolling scoring: documents longer than the model's context, scored in windows."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hat.evaluation import bits_per_byte
from hat.modeling import rolling_windows


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(min_size=0, max_size=300),
    context_chars=st.integers(0, 300),
    window=st.integers(8, 120),
)
def test_windows_cover_every_target_once_and_fit(
    text: str, context_chars: int, window: int
) -> None:
    context_chars = min(context_chars, len(text))
    doc = text.encode("utf-8")
    first = len(text[:context_chars].encode("utf-8"))
    pieces = rolling_windows(doc, first, window)
    covered = [b for _, start, end in pieces for b in range(start, end)]
    assert covered == list(range(first, len(doc)))  # each target once, in order
    for context_start, start, end in pieces:
        assert end - context_start <= window and context_start <= start < end
        for offset in (context_start, start, end):  # every cut on a character start
            assert offset == len(doc) or (doc[offset] & 0xC0) != 0x80
        doc[context_start:end].decode("utf-8")  # each piece is valid text
    if len(doc) <= window:  # a document that fits is one piece with all its context
        assert pieces == ([(0, first, len(doc))] if first < len(doc) else [])


@pytest.fixture(params=["hat", "bpe"])
def model(request, tiny_hat, tiny_bpe):
    return tiny_hat if request.param == "hat" else tiny_bpe


def test_rolling_equals_plain_when_it_fits(model) -> None:
    texts, contexts = ["The cat sat on the mat.", "ünïcödé 日本"], ["Once,", ""]
    plain = model.score(texts, contexts)
    assert model.score(texts, contexts, rolling=True) == pytest.approx(plain, rel=1e-6)


def test_rolling_is_the_sum_of_its_windows(model) -> None:
    text = "Emma Woodhouse, handsome, clever, and rich — 日本語 👍🏽. " * 8
    window = 64
    doc = text.encode("utf-8")
    pieces = rolling_windows(doc, 0, window)
    assert len(pieces) > 3
    expected = sum(model.score([doc[s:e].decode()], [doc[c:s].decode()])[0] for c, s, e in pieces)
    (rolled,) = model.score([text], rolling=True, window_bytes=window)
    assert rolled == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(rolled) and rolled < 0


def test_long_document_without_spaces_gets_a_result(model) -> None:
    """Too long for the context: an error that names the way out, or a score with rolling=True."""
    text = "x" * (model.max_window_bytes() * 3)
    with pytest.raises(ValueError, match="rolling=True"):
        model.score([text])
    (value,) = model.score([text], rolling=True, batch_size=4)
    assert math.isfinite(value) and value < 0
    bpb = bits_per_byte(model, [text], rolling=True)
    assert bpb == pytest.approx(-value / math.log(2) / len(text))


def test_window_bytes_is_checked(model) -> None:
    with pytest.raises(ValueError, match="window_bytes"):
        model.score(["abc"], rolling=True, window_bytes=model.max_window_bytes() + 1)
    with pytest.raises(ValueError, match="window_bytes"):
        model.score(["abc"], rolling=True, window_bytes=4)
