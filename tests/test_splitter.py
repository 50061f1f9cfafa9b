"""The splitter is where causality starts: exact round trip and prefix consistency."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hat.splitter import WhitespaceSplitter, as_text, cap_word, make_splitter

ADVERSARIAL = [
    "Hello, world! It's 3.14 and 1,000 people.",
    "can't won't I'm e.g. U.S.A. http://x.com/a?b=c foo_bar foo-bar",
    "   \n\n\t  x  y\r\n\r\nz",
    "HTMLParser getHTTPResponse iPhone XMLHttpRequest camelCase",
    "日本語のテキストと中文文本。한국어 텍스트",
    "👍🏽 👨‍👩‍👧 🇩🇪🇺🇸 é é naïve café — “quotes” ... !!!",
    "a" * 250 + " " + "ü" * 120,
    "x\x00y \x00\x00 z",
]

# characters that exercise every branch: letters, digits, punctuation, spaces, CJK, emoji, ZWJ
TEXT = st.text(
    alphabet=st.sampled_from(list("aZ3 .,'’-\n\t\x00日本é👍🏽\u200d🇩"))
    | st.characters(codec="utf-8"),
    max_size=60,
)


@pytest.fixture(params=["hat", "whitespace"])
def splitter(request: pytest.FixtureRequest):
    return make_splitter(request.param, max_word_bytes=16)


def boundaries(splitter, text: str) -> list[int]:
    out, pos = [], 0
    for word in splitter.split(text):
        out.append(pos)
        pos += len(word)
    return out


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_round_trip_and_caps(splitter, text: str) -> None:
    words = splitter.split(text)
    assert b"".join(words) == text.encode("utf-8")
    assert all(0 < len(w) <= splitter.max_word_bytes for w in words)
    assert all(w.decode("utf-8") for w in words)  # no word cuts a character


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_prefix_consistency_adversarial(splitter, text: str) -> None:
    full = boundaries(splitter, text)
    for i in range(1, len(text) + 1):
        prefix_len = len(text[:i].encode("utf-8"))
        assert boundaries(splitter, text[:i]) == [b for b in full if b < prefix_len], text[:i]


@settings(max_examples=150, deadline=None)
@given(text=TEXT, extra=TEXT)
def test_prefix_consistency_random(text: str, extra: str) -> None:
    for name in ("hat", "whitespace"):
        splitter = make_splitter(name, max_word_bytes=8)
        assert b"".join(splitter.split(text + extra)) == (text + extra).encode("utf-8")
        full = boundaries(splitter, text + extra)
        cut = len(text.encode("utf-8"))
        assert boundaries(splitter, text) == [b for b in full if b < cut]


def test_whitespace_splitter_attaches_trailing_space() -> None:
    assert WhitespaceSplitter().split("  the cat\n sat") == [b"  ", b"the ", b"cat\n ", b"sat"]


def test_cap_word_respects_characters() -> None:
    pieces = cap_word("ab日本語".encode(), 4)
    assert pieces == [b"ab", "日".encode(), "本".encode(), "語".encode()]


def test_empty_and_invalid_input() -> None:
    assert make_splitter("hat").split("") == []
    assert make_splitter("whitespace").split("") == []
    with pytest.raises(ValueError, match="not valid UTF-8"):
        as_text(b"abc\xff\xfe")
    with pytest.raises(ValueError, match="unknown splitter"):
        make_splitter("bpe")


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(
        alphabet=st.sampled_from(list(" \t\n\u3000a日.\u0301\u200d\u00ad\u20dd")), max_size=30
    )
)
def test_prefix_consistency_whitespace_then_combining_marks(text: str) -> None:
    """hat-splitter alone fails here ("a \\t" vs "a \\t\\u0301"): our wrapper must not."""
    splitter = make_splitter("hat", max_word_bytes=8)
    full = boundaries(splitter, text)
    assert b"".join(splitter.split(text)) == text.encode("utf-8")
    for i in range(1, len(text)):
        cut = len(text[:i].encode("utf-8"))
        assert boundaries(splitter, text[:i]) == [b for b in full if b < cut], repr(text[:i])


def test_the_reference_splitter_pickles() -> None:
    """DataLoader workers started by spawn or forkserver receive the dataset (and its
    splitter) pickled; the Rust splitter itself does not pickle, so it is rebuilt there."""
    import pickle

    from hat.splitter import HATWordSplitter

    splitter = HATWordSplitter(max_word_bytes=7)
    copy = pickle.loads(pickle.dumps(splitter))
    text = "Hello world, camelCase and a verylongword\u0301 \t\u0301 x"
    assert copy.max_word_bytes == 7 and copy.split(text) == splitter.split(text)
