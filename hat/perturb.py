"""Seeded, deterministic text perturbations for robustness evaluation.

    from hat.perturb import PERTURBATIONS, perturb
    perturb("It is a truth universally acknowledged", "permute", rate=0.1, seed=0)
    PERTURBATIONS["keyboard"]("It is a truth", rate=0.2, seed=1)   # the same function

Every perturbation is a pure function ``fn(text, rate=0.1, seed=0) -> str``: the same text,
rate and seed always give the same output (numpy's ``default_rng(seed)``; ``seed`` may also be
a tuple of ints, which ``perturb_texts`` uses to give each text its own stream). ``rate`` is
the fraction of the *eligible* characters (or words) that are changed: exactly
``int(eligible * rate)`` of them, drawn without replacement, as the HAT paper does. Eligibility
is per perturbation (its docstring says which); where nothing is eligible (``keyboard`` on
Chinese text, ``misspell`` on German) the text comes back unchanged. ``uppercase``,
``lowercase`` and ``strip_accents`` act on the whole text and ignore ``rate`` (``WHOLE_TEXT``).

The paper's four (HAT paper, section 4.4; ``PAPER``): among letters/digits (``str.isalnum``)
that have a letter/digit on both sides, sample ``rate`` of them and

- ``permute``: swap each with the next character (in text order: a run of adjacent picks
  carries the first character of the run to its end),
- ``replace``: replace each with a random printable ASCII character (33-126),
- ``delete``: delete each,
- ``uppercase``: uppercase everything (``str.upper``).

What users meet in practice: ``lowercase``, ``random_case``, ``remove_space``,
``insert_space``, ``keyboard`` (QWERTY-neighbour typos), ``strip_accents`` (NFKD, combining
marks dropped), ``homoglyph`` (Latin/Cyrillic look-alikes) and ``misspell`` (real English
misspellings from ``hat/assets/misspellings.tsv``, CC BY-SA 3.0, see ``hat/assets/README.md``).

Unicode: texts are handled as arrays of code points, so no UTF-8 sequence is ever split and
nothing invalid is produced (replacements are ASCII, look-alikes or whole characters).
Character-level perturbations are vectorised with numpy (tens of MB/s on one CPU core;
``scripts/bench_perturb.py``).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

Seed = int | Sequence[int]
Perturbation = Callable[..., str]

MISSPELLINGS_FILE = Path(__file__).parent / "assets" / "misspellings.tsv"

# ---- code point arrays ---------------------------------------------------------------------


def _codes(text: str) -> np.ndarray:
    """The text's code points: uint8 for ASCII text (4x less memory), else uint32."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    # surrogatepass: a str holding a lone surrogate (not valid text) goes through unchanged
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _text(codes: np.ndarray) -> str:
    if codes.dtype == np.uint8:
        return codes.tobytes().decode("latin-1")  # code points 0-255, one byte each
    return codes.astype(np.uint32, copy=False).tobytes().decode("utf-32-le", "surrogatepass")


def _table(predicate: Callable[[str], bool], size: int = 128) -> np.ndarray:
    return np.array([predicate(chr(i)) for i in range(size)])


@functools.lru_cache(maxsize=8)
def _bmp_table(predicate: Callable[[str], bool]) -> np.ndarray:
    """``predicate`` of every code point below 0x10000 (64 KB, built once, ~20 ms)."""
    return _table(predicate, 0x10000)


def _has(
    codes: np.ndarray, predicate: Callable[[str], bool], ascii_table: np.ndarray
) -> np.ndarray:
    """``predicate(chr(c))`` for every code point: a table for ASCII text, a table of the
    Basic Multilingual Plane otherwise, one call per distinct character above it (emoji)."""
    if codes.dtype == np.uint8:
        return ascii_table[codes]
    bmp = codes < 0x10000
    if bmp.all():
        return _bmp_table(predicate)[codes]
    result = np.zeros(len(codes), dtype=bool)
    result[bmp] = _bmp_table(predicate)[codes[bmp]]
    distinct, inverse = np.unique(codes[~bmp], return_inverse=True)
    values = np.fromiter((predicate(chr(c)) for c in distinct.tolist()), bool, len(distinct))
    result[~bmp] = values[inverse]
    return result


def _map(codes: np.ndarray, positions: np.ndarray, fn: Callable[[str], str]) -> np.ndarray:
    """A copy of ``codes`` with the characters at ``positions`` replaced by ``fn(char)`` (one
    character each), ``fn`` called once per distinct character."""
    distinct, inverse = np.unique(codes[positions], return_inverse=True)
    new = np.array([ord(fn(chr(c))) for c in distinct.tolist()], dtype=np.uint32)
    out = codes.astype(np.uint32) if new.size and new.max() > 255 else codes.copy()
    out[positions] = new[inverse]
    return out


_ALNUM = _table(str.isalnum)
_SPACE = _table(str.isspace)


def _rng(seed: Seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def _sample(mask: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions: ``int(count * rate)`` of the True positions, without replacement."""
    candidates = np.flatnonzero(mask)
    k = int(len(candidates) * rate)
    if k == 0:
        return candidates[:0]
    if k == len(candidates):
        return candidates
    # shuffle=False: the draw's order is not needed (sorted below), which saves a pass
    return candidates[np.sort(rng.choice(len(candidates), size=k, replace=False, shuffle=False))]


# ---- the paper's four ----------------------------------------------------------------------


def _inner_alnum(codes: np.ndarray) -> np.ndarray:
    """Letters/digits with a letter/digit on both sides (the paper's eligible characters)."""
    alnum = _has(codes, str.isalnum, _ALNUM)
    eligible = np.zeros(len(codes), dtype=bool)
    eligible[1:-1] = alnum[1:-1] & alnum[:-2] & alnum[2:]
    return eligible


def eligible_positions(text: str) -> np.ndarray:
    """Indices (code points) of the characters ``permute``/``replace``/``delete`` may touch:
    ``str.isalnum`` with an ``isalnum`` character on both sides."""
    return np.flatnonzero(_inner_alnum(_codes(text)))


def select_positions(text: str, rate: float = 0.1, seed: Seed = 0) -> np.ndarray:
    """The sorted indices (code points) that ``permute``, ``replace`` and ``delete`` change
    for this text, rate and seed: ``int(len(eligible_positions(text)) * rate)`` of them."""
    return _sample(_inner_alnum(_codes(text)), rate, _rng(seed))


def permute(text: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Swap ``rate`` of the inner letters/digits with the character after them (paper).

    Swaps are applied in text order, so picks at i and i+1 turn ``abc`` into ``bca``. Only
    letters/digits move (the character after an inner one is a letter/digit too), so the
    sequence of all other characters is unchanged. Unchanged when no character is eligible
    (fewer than three letters/digits in a row, e.g. emoji or punctuation only)."""
    codes = _codes(text)
    chosen = _sample(_inner_alnum(codes), rate, _rng(seed))
    if not len(chosen):
        return text
    out = codes.copy()
    out[chosen] = codes[chosen + 1]
    picked = np.zeros(len(codes) + 1, dtype=bool)
    picked[chosen] = True
    # a run of picks s..e-1 rotates s..e left by one: the run's first character lands at e
    starts = chosen[~picked[chosen - 1]]
    ends = chosen[~picked[chosen + 1]] + 1
    out[ends] = codes[starts]
    return _text(out)


def replace(text: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Replace ``rate`` of the inner letters/digits by a random printable ASCII character
    (33-126; it may by chance equal the old one), keeping the length (paper). Unchanged
    when no character is eligible."""
    codes = _codes(text)
    rng = _rng(seed)
    chosen = _sample(_inner_alnum(codes), rate, rng)
    if not len(chosen):
        return text
    out = codes.copy()
    out[chosen] = rng.integers(33, 127, size=len(chosen))
    return _text(out)


def delete(text: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Delete ``rate`` of the inner letters/digits (paper). Unchanged when none is eligible."""
    codes = _codes(text)
    chosen = _sample(_inner_alnum(codes), rate, _rng(seed))
    return _text(np.delete(codes, chosen)) if len(chosen) else text


def uppercase(text: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Uppercase the whole text (paper; ``str.upper``, so ``ß`` becomes ``SS``). Ignores
    ``rate`` and ``seed``; idempotent; unchanged for scripts without case (CJK, emoji)."""
    return text.upper()


# ---- what users meet in practice -------------------------------------------------------------


def lowercase(text: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Lowercase the whole text (``str.lower``). Ignores ``rate`` and ``seed``."""
    return text.lower()


def _swappable(c: str) -> bool:
    s = c.swapcase()
    return len(s) == 1 and s != c and s.swapcase() == c


_SWAPPABLE = _table(_swappable)


def random_case(text: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Swap the case of ``rate`` of the cased letters (those whose swapped case is one
    character that swaps back: ``ß`` and ligatures are left alone). Unchanged when there is
    no such letter (CJK, digits, emoji)."""
    codes = _codes(text)
    chosen = _sample(_has(codes, _swappable, _SWAPPABLE), rate, _rng(seed))
    return _text(_map(codes, chosen, str.swapcase)) if len(chosen) else text


def remove_space(text: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Delete ``rate`` of the whitespace characters (``str.isspace``: spaces, tabs, newlines,
    no-break and ideographic spaces). Unchanged when there is none (e.g. Chinese)."""
    codes = _codes(text)
    chosen = _sample(_has(codes, str.isspace, _SPACE), rate, _rng(seed))
    return _text(np.delete(codes, chosen)) if len(chosen) else text


def insert_space(text: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Insert a space between two letters/digits (``str.isalnum``) after ``rate`` of the
    letters/digits that are followed by one: words are split, never a character (a letter
    followed by a combining mark is not split from it). Unchanged when no two letters/digits
    are adjacent."""
    codes = _codes(text)
    alnum = _has(codes, str.isalnum, _ALNUM)
    eligible = np.zeros(len(codes), dtype=bool)
    eligible[:-1] = alnum[:-1] & alnum[1:]
    chosen = _sample(eligible, rate, _rng(seed))
    return _text(np.insert(codes, chosen + 1, ord(" "))) if len(chosen) else text


_QWERTY = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """Keys touching each letter on a QWERTY keyboard (rows are staggered by half a key)."""
    where = {ch: (r, c) for r, row in enumerate(_QWERTY) for c, ch in enumerate(row)}
    near = {}
    for ch, (r, c) in where.items():
        spots = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c - 1), (r + 1, c)]
        near[ch] = "".join(
            _QWERTY[i][j] for i, j in spots if 0 <= i < 3 and 0 <= j < len(_QWERTY[i])
        )
    return near


KEYBOARD_NEIGHBOURS = _keyboard_neighbours()
_NEIGHBOUR_COUNT = np.zeros(128, dtype=np.int64)
_NEIGHBOUR_TABLE = np.zeros((128, max(map(len, KEYBOARD_NEIGHBOURS.values()))), dtype=np.uint8)
for _ch, _near in KEYBOARD_NEIGHBOURS.items():
    _NEIGHBOUR_COUNT[ord(_ch)] = len(_near)
    _NEIGHBOUR_TABLE[ord(_ch), : len(_near)] = np.frombuffer(_near.encode(), dtype=np.uint8)


def _is_ascii_letter(c: str) -> bool:
    return c.isascii() and c.isalpha()


_ASCII_LETTER = _table(_is_ascii_letter)


def keyboard(text: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Replace ``rate`` of the ASCII letters by a neighbouring key on a QWERTY keyboard, in
    the same case (a fat-finger typo). Other characters are never touched: text without
    ASCII letters comes back unchanged."""
    codes = _codes(text)
    rng = _rng(seed)
    chosen = _sample(_has(codes, _is_ascii_letter, _ASCII_LETTER), rate, rng)
    if not len(chosen):
        return text
    old = codes[chosen].astype(np.int64)
    lower = old | 0x20
    pick = rng.integers(0, _NEIGHBOUR_COUNT[lower])
    new = _NEIGHBOUR_TABLE[lower, pick].astype(np.int64) - (old & 0x20 == 0) * 0x20
    out = codes.copy()
    out[chosen] = new
    return _text(out)


@functools.lru_cache(maxsize=4096)
def _without_marks(c: str) -> str:
    """``c`` in NFKD with its combining marks dropped (``é`` -> ``e``, ``ﬁ`` -> ``fi``), then
    recomposed (NFC): NFKD takes a Hangul syllable apart into jamo, which carry no mark and
    must come back as the syllable."""
    kept = "".join(ch for ch in unicodedata.normalize("NFKD", c) if not unicodedata.combining(ch))
    return unicodedata.normalize("NFC", kept)


def strip_accents(text: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Strip diacritics from the whole text: each character whose compatibility decomposition
    (NFKD) differs from it becomes that decomposition without its combining marks (``é`` ->
    ``e``, ``Å`` -> ``A``, ``ﬁ`` -> ``fi``, ``が`` -> ``か``, full-width ``Ａ`` -> ``A``). The text
    is first put in NFC, so decomposed accents are stripped too; combining marks that belong
    to no precomposed character (Devanagari vowel signs, for instance) stay, and so do Korean
    syllables (NFKD's jamo are recomposed). Ignores ``rate`` and ``seed``. ASCII text comes
    back unchanged."""
    if text.isascii():
        return text
    text = unicodedata.normalize("NFC", text)
    codes = _codes(text)
    distinct = np.unique(codes[codes >= 128]).tolist()
    changed = {c: _without_marks(chr(c)) for c in distinct if not unicodedata.combining(chr(c))}
    changed = {c: new for c, new in changed.items() if new != chr(c)}
    if not changed:
        return text
    if any(len(new) != 1 for new in changed.values()):  # ligatures, fractions: rare
        return text.translate(changed)
    keys = np.array(sorted(changed), dtype=np.uint32)
    values = np.array([ord(changed[k]) for k in keys.tolist()], dtype=np.uint32)
    hit = np.isin(codes, keys)
    out = codes.copy()
    out[hit] = values[np.searchsorted(keys, codes[hit])]
    return _text(out)


# Latin letters and the Cyrillic letters that look the same in most fonts (both directions)
_LATIN_CYRILLIC = {
    "a": "а", "c": "с", "e": "е", "h": "һ", "i": "і", "j": "ј", "o": "о", "p": "р", "s": "ѕ",
    "x": "х", "y": "у", "A": "А", "B": "В", "C": "С", "E": "Е", "H": "Н", "I": "І", "J": "Ј",
    "K": "К", "M": "М", "O": "О", "P": "Р", "S": "Ѕ", "T": "Т", "X": "Х", "Y": "Ү",
}  # fmt: skip
HOMOGLYPHS = {**_LATIN_CYRILLIC, **{v: k for k, v in _LATIN_CYRILLIC.items()}}
_HOMOGLYPH_FROM = np.array(sorted(map(ord, HOMOGLYPHS)), dtype=np.uint32)
_HOMOGLYPH_TO = np.array([ord(HOMOGLYPHS[chr(c)]) for c in _HOMOGLYPH_FROM], dtype=np.uint32)


def homoglyph(text: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Replace ``rate`` of the letters that have a look-alike in the other script (Latin
    ``a c e h i j o p s x y A B C E H I J K M O P S T X Y`` and their Cyrillic twins) by that
    look-alike: the text looks the same and its bytes differ. Unchanged when no such letter
    occurs (CJK, emoji, Greek)."""
    codes = _codes(text)
    eligible = np.isin(codes, _HOMOGLYPH_FROM)
    chosen = _sample(eligible, rate, _rng(seed))
    if not len(chosen):
        return text
    out = codes.astype(np.uint32)
    out[chosen] = _HOMOGLYPH_TO[np.searchsorted(_HOMOGLYPH_FROM, codes[chosen])]
    return _text(out)


@functools.lru_cache(maxsize=1)
def misspellings() -> dict[str, tuple[str, ...]]:
    """``{correct word: its misspellings}`` from ``hat/assets/misspellings.tsv`` (lowercase)."""
    table: dict[str, list[str]] = {}
    for line in MISSPELLINGS_FILE.read_text(encoding="utf-8").splitlines():
        correct, wrong = line.split("\t")
        table.setdefault(correct, []).append(wrong)
    return {k: tuple(v) for k, v in table.items()}


_WORDS = re.compile(r"\b([A-Za-z]+)\b")  # split() keeps the words at the odd indices


def _same_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    return word.capitalize() if template[0].isupper() else word


def misspell(text: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Replace ``rate`` of the words found in the shipped list of real English misspellings
    (1,896 common words, 10,458 misspellings; ``misspellings()``) by one of their
    misspellings, keeping lower, Capitalised or UPPER case. Only whole ASCII words are
    looked up (``because`` but not ``Because1`` nor ``naïve``); a text with none of these words
    (any non-English text, most likely) comes back unchanged."""
    table = misspellings()
    parts = _WORDS.split(text)
    found = [i for i in range(1, len(parts), 2) if parts[i].lower() in table and _cased(parts[i])]
    if int(len(found) * rate) == 0:
        return text
    rng = _rng(seed)
    chosen = _sample(np.ones(len(found), dtype=bool), rate, rng)
    for i, u in zip(chosen.tolist(), rng.random(len(chosen)).tolist()):
        word = parts[found[i]]
        options = table[word.lower()]
        parts[found[i]] = _same_case(word, options[int(u * len(options))])
    return "".join(parts)


def _cased(word: str) -> bool:
    """lower, Capitalised or UPPER (not camelCase): the case ``_same_case`` can reproduce."""
    return word.islower() or word.isupper() or (word[0].isupper() and word[1:].islower())


# ---- the registry --------------------------------------------------------------------------

PERTURBATIONS: dict[str, Perturbation] = {
    "permute": permute,
    "replace": replace,
    "delete": delete,
    "uppercase": uppercase,
    "lowercase": lowercase,
    "random_case": random_case,
    "remove_space": remove_space,
    "insert_space": insert_space,
    "keyboard": keyboard,
    "strip_accents": strip_accents,
    "homoglyph": homoglyph,
    "misspell": misspell,
}
PAPER = ("permute", "replace", "delete", "uppercase")  # the HAT paper's robustness set
WHOLE_TEXT = frozenset({"uppercase", "lowercase", "strip_accents"})  # rate and seed ignored


def check(name: str, rate: float) -> None:
    """Raise ``ValueError`` naming the fix for an unknown perturbation or a rate outside [0, 1]."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate={rate!r} must be a number in [0, 1] (0.1 changes 10 %)")


def perturb(text: str, name: str, rate: float = 0.1, seed: Seed = 0) -> str:
    """Apply the perturbation called ``name`` (a key of ``PERTURBATIONS``) to ``text``."""
    check(name, rate)
    if not isinstance(text, str):
        raise TypeError(f"perturb() takes a str, got {type(text).__name__}")
    return PERTURBATIONS[name](text, rate, seed)


def perturb_texts(texts: Sequence[str], name: str, rate: float = 0.1, seed: Seed = 0) -> list[str]:
    """``perturb`` each text with its own random stream, seeded by ``(*seed, index)``: texts
    that happen to be equal are perturbed differently, and one text's output never depends
    on the others."""
    check(name, rate)
    fn = PERTURBATIONS[name]
    base = (seed,) if isinstance(seed, int) else tuple(seed)
    return [fn(text, rate, (*base, i)) for i, text in enumerate(texts)]
