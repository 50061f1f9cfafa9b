"""Bytes and UTF-8: the UTF-8 reader (``utf8_advance``, ``incomplete_tail``), the
``VocabAutomaton`` that keeps generated ids valid UTF-8, and what ids spell
(``token_byte_table``, ``ids_to_bytes_fn``)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hat.splitter import EOD, PAD

# States of a UTF-8 reader: 0 at a character boundary; 1/2/3 continuation bytes still needed;
# 4..7 the restricted second byte after E0, ED, F0, F4 (no overlongs, surrogates, > U+10FFFF).
UTF8_STATES = 8
UTF8_NEED = [0, 1, 2, 3, 2, 2, 3, 3]  # bytes still needed to finish the character, per state


def _utf8_table() -> list[list[int]]:
    nxt = [[-1] * 256 for _ in range(UTF8_STATES)]
    for b in range(256):
        if b < 0x80:
            nxt[0][b] = 0
        elif 0xC2 <= b <= 0xDF:
            nxt[0][b] = 1
        elif 0xE0 <= b <= 0xEF:
            nxt[0][b] = {0xE0: 4, 0xED: 5}.get(b, 2)
        elif 0xF0 <= b <= 0xF4:
            nxt[0][b] = {0xF0: 6, 0xF4: 7}.get(b, 3)
        if 0x80 <= b <= 0xBF:
            nxt[1][b], nxt[2][b], nxt[3][b] = 0, 1, 2
            nxt[4][b] = 1 if b >= 0xA0 else -1
            nxt[5][b] = 1 if b <= 0x9F else -1
            nxt[6][b] = 2 if b >= 0x90 else -1
            nxt[7][b] = 2 if b <= 0x8F else -1
    return nxt


UTF8_NEXT = _utf8_table()


def utf8_advance(state: int, data: bytes) -> int:
    """Run the UTF-8 reader over ``data``; -1 as soon as a byte is invalid."""
    for b in data:
        state = UTF8_NEXT[state][b]
        if state < 0:
            return -1
    return state


def incomplete_tail(data: bytes) -> int:
    """Length of the incomplete character at the end of ``data`` (0 if it ends on a boundary).

    Raises ValueError if ``data`` is not valid UTF-8 apart from that tail."""
    state, last_boundary = 0, 0
    for i, b in enumerate(data):
        state = UTF8_NEXT[state][b]
        if state < 0:
            raise ValueError(
                f"prompt is not valid UTF-8 (byte {i}: {bytes(data[i : i + 4])!r}); only an "
                "incomplete character at the very end is allowed"
            )
        if state == 0:
            last_boundary = i + 1
    return len(data) - last_boundary


class VocabAutomaton:
    """Which ids keep a row valid UTF-8, per reader state: ``allowed`` [S, V], ``next`` [S, V];
    which ids end a document: ``is_end`` [V].

    ``token_bytes[i]`` is what id i spells. End ids are allowed only at a character boundary;
    banned ids never; other ids that spell nothing (control tokens) leave the state alone.
    With a budget of ids left, an id is also refused if the character it starts cannot be
    finished in time (each later id adds at least one byte), so a row out of budget always
    ends on a character boundary.
    """

    def __init__(
        self,
        token_bytes: Sequence[bytes],
        end_ids: set[int],
        banned: set[int],
        device: torch.device,
    ) -> None:
        vocab, longest = len(token_bytes), max(1, max(map(len, token_bytes)))
        table = torch.tensor(UTF8_NEXT + [[-1] * 256])  # [S + 1, 256], row S = dead
        table[table < 0] = UTF8_STATES
        padded = bytearray(b"".join(bytes(b).ljust(longest, b"\0") for b in token_bytes))
        data = torch.frombuffer(padded, dtype=torch.uint8).long().view(vocab, longest)
        size = torch.tensor([len(b) for b in token_bytes])
        nxt = torch.arange(UTF8_STATES)[:, None].expand(-1, vocab).clone()  # [S, V]
        for j in range(longest):  # run all states x tokens through the reader at once
            nxt = torch.where(j < size, table[nxt, data[:, j]], nxt)
        allowed = nxt < UTF8_STATES
        ends, bans = list(end_ids & set(range(vocab))), list(banned & set(range(vocab)))
        allowed[:, ends] = False
        allowed[0, ends] = True  # end ids: only at a character boundary
        allowed[:, bans] = False
        nxt = torch.where(allowed, nxt, 0)
        self.allowed, self.next = allowed.to(device), nxt.to(device)
        self.need = torch.tensor(UTF8_NEED, device=device)
        self.need_after = self.need[self.next]  # [S, V] bytes missing after each id
        self.is_end = torch.zeros(vocab, dtype=torch.bool)  # [V]
        self.is_end[ends] = True
        self.is_end = self.is_end.to(device)

    def tables(self) -> list[torch.Tensor]:
        """Its constant tensors (built once per vocabulary, ends and bans: ``generate`` keeps
        the automaton, so they keep their addresses from call to call)."""
        return [self.allowed, self.next, self.need, self.need_after, self.is_end]

    def mask(
        self, scores: torch.Tensor, state: torch.Tensor, left: torch.Tensor | None = None
    ) -> torch.Tensor:
        """scores [B, V], state [B], ids left in each row's budget [B] -> scores with the
        refused ids at -inf. Continuing a character is always allowed (never all -inf)."""
        ok = self.allowed[state]  # [B, V]
        if left is not None:
            cap = torch.maximum(left - 1, self.need[state] - 1)  # [B]
            ok = ok & (self.need_after[state] <= cap[:, None])
        return scores.masked_fill(~ok, -float("inf"))

    def advance(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.next[state, tokens]


_BYTE_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_byte_table(tokenizer: Any) -> list[bytes]:
    """What each id of a sentencepiece ``BPETokenizer`` spells (control ids: b""); cached."""
    if tokenizer not in _BYTE_TABLES:
        sp, table = tokenizer.sp, []
        for i in range(len(tokenizer)):
            piece = sp.id_to_piece(i)
            if sp.is_control(i) or sp.is_unknown(i):
                table.append(b"")
            elif sp.is_byte(i):
                table.append(bytes([int(piece[3:5], 16)]))  # "<0xAB>"
            else:
                table.append(piece.replace("\u2581", " ").encode("utf-8"))
        _BYTE_TABLES[tokenizer] = table
    return _BYTE_TABLES[tokenizer]


def ids_to_bytes_fn(tokenizer: Any) -> Callable[[list[int]], bytes]:
    """ids -> content bytes for HAT (tokenizer None or ``HATTokenizer``) or a BPE tokenizer."""
    if tokenizer is None:
        return lambda ids: bytes(i for i in ids if i not in (EOD, PAD))
    if hasattr(tokenizer, "convert_ids_to_bytes"):
        return tokenizer.convert_ids_to_bytes
    table = token_byte_table(tokenizer)
    return lambda ids: b"".join(table[i] for i in ids if 0 <= i < len(table))
