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


@pytest.mark.parametrize("name", ["hat", "whitespace"])
@pytest.mark.parametrize("max_word_bytes", [0, -1])
def test_a_word_cap_below_one_byte_is_a_clear_error(name: str, max_word_bytes: int) -> None:
    """cap_word(word, 0) looped forever and hat-splitter panicked (a BaseException that
    ``except Exception`` does not catch); a cap below 1 is a ValueError up front."""
    with pytest.raises(ValueError, match="max_word_bytes must be >= 1"):
        make_splitter(name, max_word_bytes=max_word_bytes)
    with pytest.raises(ValueError, match="max_bytes must be >= 1"):
        cap_word(b"ab", max_word_bytes)


def _online_one_split_per_character(splitter, text: str) -> list[bytes]:
    """The online rule written plainly: character i starts a word iff hat-splitter, given the
    text from the last complete word's start to i, ends with i as a word of its own."""
    starts = [0]
    for i in range(1, len(text)):
        context = starts[-2] if len(starts) > 1 else 0
        if len(splitter._splitter.split(text[context : i + 1])[-1]) == 1:
            starts.append(i)
    words = [text[a:b].encode() for a, b in zip(starts, starts[1:] + [len(text)])]
    return [piece for word in words for piece in cap_word(word, splitter.max_word_bytes)]


RUNS = st.lists(
    st.tuples(st.sampled_from(list("-1aA日.é \t\u0301\u200b")), st.integers(1, 150)), max_size=7
)


@settings(max_examples=60, deadline=None)
@given(runs=RUNS)
def test_online_split_of_long_runs_equals_one_split_per_character(runs) -> None:
    splitter = make_splitter("hat", max_word_bytes=16)
    text = "".join(c * n for c, n in runs) + " \u200b"  # whitespace + format char: online path
    assert splitter.split(text) == _online_one_split_per_character(splitter, text)


def test_a_long_word_with_a_mark_after_whitespace_splits_in_linear_time() -> None:
    """One split per character of a long word was quadratic: 20,000 dashes and one " \\u200b"
    took 64 s, a 1 MB run hours. Count the characters handed to hat-splitter instead (at
    most 64 single steps per word, each over the previous word and the current one)."""
    from hat.splitter import HATWordSplitter

    class Counting:
        def __init__(self, inner) -> None:
            self.inner, self.chars = inner, 0

        def split(self, text: str) -> list[str]:
            self.chars += len(text)
            return self.inner.split(text)

    for run in ("-", "1", "a"):
        splitter = HATWordSplitter(max_word_bytes=100)
        text = run * 5000 + " \u200b" + run * 5000
        expected = _online_one_split_per_character(splitter, text) if run == "-" else None
        splitter._splitter = counting = Counting(splitter._splitter)
        words = splitter.split(text)
        assert b"".join(words) == text.encode() and all(len(w) <= 100 for w in words)
        assert counting.chars < 100 * len(text), (run, counting.chars)  # was ~3,700x
        assert expected is None or words == expected
