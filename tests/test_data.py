"""The data pipeline: sources, mixing, lossless packing, lanes, resume, and model-ready batches."""

from __future__ import annotations

import gzip
import json
from itertools import islice
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hat.batching import IGNORE, document_words
from hat.data import (
    BPEFormat,
    DataConfig,
    HATFormat,
    SourceConfig,
    build_eval_batches,
    build_train_loader,
    iter_documents,
    pack_rows,
)
from hat.data.loader import concat_batches
from hat.splitter import EOD, PAD, make_splitter
from hat.tokenizer import BOS_ID, PAD_ID

SPLITTER = make_splitter("hat", max_word_bytes=32)
HAT_FORMAT = HATFormat(SPLITTER)

# documents that stress packing: empty, CJK, emoji, NUL, words over the cap, longer than a row
DOC = st.one_of(
    st.just(""),
    st.text(
        alphabet=st.sampled_from(list("ab .,\n\x00日本é👍🏽\u200d")) | st.characters(codec="utf-8"),
        max_size=120,
    ),
    st.text(alphabet="x日👍", min_size=10, max_size=40),  # one long word, cut by max_word_bytes
)


def lane_rows(batches: list, lane: int) -> list:
    return [rows[lane] for rows in batches]


def check_lane(
    rows: list, docs: list[tuple[list, int]], seq_len: int, pad: int, words: bool
) -> None:
    """A lane's rows are exactly its documents' units, in order, cut only between words.

    docs: per document, its words (each a list of units) and its end-of-document label.
    """
    want_ids = [u for doc, _ in docs for word in doc for u in word]
    want_labels = [v for doc, end in docs for v in [u for w in doc for u in w][1:] + [end]]
    got_ids, got_labels, got_words = [], [], []
    for i, row in enumerate(rows):
        real = row.labels != IGNORE
        n = int(real.sum())
        assert real[:n].all() and (row.ids[n:] == pad).all(), "padding only at the row's tail"
        got_ids += row.ids[:n].tolist()
        got_labels += row.labels[:n].tolist()
        if words:
            lengths = row.word_lengths.tolist()
            assert sum(lengths) == seq_len and all(lengths)
            if n < seq_len:  # one padding word, and the next word really did not fit
                assert lengths[-1] == seq_len - n
                lengths = lengths[:-1]
                upcoming = [len(w) for doc, _ in docs for w in doc][len(got_words) + len(lengths) :]
                assert not upcoming or upcoming[0] > seq_len - n
            got_words += lengths
        else:
            assert n == seq_len or all(r.labels[0] == IGNORE for r in rows[i + 1 :]), (
                "only the last row pads"
            )
    assert got_ids == want_ids, "no unit lost or duplicated"
    assert got_labels == want_labels, "next unit of the same document, end marker at its end"
    if words:
        assert got_words == [len(w) for doc, _ in docs for w in doc], "rows cut only between words"


@pytest.mark.parametrize("splitter_name", ["hat", "whitespace"])
@settings(max_examples=60, deadline=None)
@given(docs=st.lists(DOC, max_size=12), lanes=st.integers(1, 3), seq_len=st.integers(8, 40))
def test_hat_packing_is_lossless(
    splitter_name: str, docs: list[str], lanes: int, seq_len: int
) -> None:
    splitter = make_splitter(splitter_name, max_word_bytes=8)
    batches = list(pack_rows(docs, HATFormat(splitter), range(lanes), lanes, seq_len))
    for lane in range(lanes):
        words = [[list(w) for w in document_words(text, splitter)] for text in docs[lane::lanes]]
        check_lane(lane_rows(batches, lane), [(w, EOD) for w in words], seq_len, PAD, words=True)


@settings(max_examples=60, deadline=None)
@given(docs=st.lists(DOC, max_size=12), lanes=st.integers(1, 3), seq_len=st.integers(1, 24))
def test_bpe_packing_is_lossless(tiny_tokenizer, docs: list[str], lanes: int, seq_len: int) -> None:
    batches = list(pack_rows(docs, BPEFormat(tiny_tokenizer), range(lanes), lanes, seq_len))
    for lane in range(lanes):
        tokens = [
            [[t] for t in [BOS_ID, *tiny_tokenizer.encode(text)]] for text in docs[lane::lanes]
        ]
        check_lane(
            lane_rows(batches, lane), [(t, BOS_ID) for t in tokens], seq_len, PAD_ID, words=False
        )


def test_hat_rows_worked_example() -> None:
    """Two documents in one lane of 8 bytes: continuation label, EOD label, one padding word."""
    fmt = HATFormat(make_splitter("whitespace"))
    (row0,), (row1,) = pack_rows(["ab cd", "xyz"], fmt, [0], 1, 8)
    batch = fmt.collate([row0, row1])
    assert batch["input_ids"].tolist() == [
        [EOD, *b"ab cd", EOD, PAD],  # "xyz" (3 bytes) does not fit the 1 byte left
        [*b"xyz", PAD, PAD, PAD, PAD, PAD],
    ]
    assert batch["labels"].tolist() == [
        [*b"ab cd", EOD, ord("x"), IGNORE],  # "d" ends its document; EOD's label continues in row 1
        [*b"yz", EOD, *[IGNORE] * 5],
    ]
    assert batch["word_lengths"].tolist() == [[1, 3, 2, 1, 1], [3, 5, 0, 0, 0]]


# ---- sources -------------------------------------------------------------------------------
def write_lines(path: Path, lines: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_local_formats(tmp_path: Path) -> None:
    from datasets import Dataset

    (tmp_path / "a.txt").write_text("first para\nstill first\n\n\n\nsecond\n\n", encoding="utf-8")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write('{"body": "json one", "id": 1}\n\n{"body": "json two"}\n')
    (tmp_path / "c.json").write_text(
        json.dumps([{"body": "array one"}, {"body": ""}]), encoding="utf-8"
    )
    Dataset.from_dict({"body": ["pq one", "pq two"], "n": [1, 2]}).to_parquet(
        str(tmp_path / "d.parquet")
    )

    def docs(path: str, **kw) -> list[str]:
        cfg = DataConfig([SourceConfig(str(tmp_path / path), **kw)], eval_every=0)
        return list(iter_documents(cfg))

    assert docs("a.txt") == ["first para\nstill first", "second"]
    assert docs("a.txt", sample_by="line") == ["first para", "still first", "second"]
    assert docs("a.txt", sample_by="document") == ["first para\nstill first\n\n\n\nsecond\n\n"]
    assert docs("b.jsonl.gz", text_field="body") == ["json one", "json two"]
    assert docs("c.json", text_field="body") == ["array one"]  # empty documents are skipped
    assert docs("d.parquet", text_field="body") == ["pq one", "pq two"]
    assert docs("[bc].*", text_field="body") == ["json one", "json two", "array one"]
    (tmp_path / "e.txt").write_text("more\n", encoding="utf-8")
    assert docs("*.txt") == ["first para\nstill first", "second", "more"]


def test_invalid_utf8_is_an_error_or_replaced_on_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe text\n\nnext")
    (tmp_path / "bad.jsonl").write_bytes(
        b'{"text": "caf\xe9"}\n{"text": "lone \\ud800 surrogate"}\n'
    )

    def read(path: str, errors: str) -> list[str]:
        source = SourceConfig(str(tmp_path / path), encoding_errors=errors)
        return list(iter_documents(DataConfig([source], eval_every=0)))

    for path, where in (("bad.txt", "byte 3"), ("bad.jsonl", "line 1")):
        with pytest.raises(ValueError, match=f"bad.*{where}.*encoding_errors=replace"):
            read(path, "strict")
    docs = {path: read(path, "replace") for path in ("bad.txt", "bad.jsonl")}
    assert docs == {
        "bad.txt": ["ok \ufffd\ufffd text", "next"],
        "bad.jsonl": ["caf\ufffd", "lone ? surrogate"],
    }
    assert (
        "2 U+FFFD characters in 1 documents" in caplog.text
        and "1 lines were not valid" in caplog.text
    )
    assert list(pack_rows([*docs["bad.txt"], *docs["bad.jsonl"]], HATFormat(SPLITTER), [0], 1, 64))
    with pytest.raises(ValueError, match="encoding_errors='ignore' is not one of"):
        read("bad.txt", "ignore")


def test_config_errors_say_what_to_change(tmp_path: Path) -> None:
    def error(*sources: SourceConfig) -> str:
        with pytest.raises(ValueError) as info:
            list(iter_documents(DataConfig(list(sources), eval_every=0)))
        return str(info.value)

    assert "no file matches" in error(SourceConfig(str(tmp_path / "missing.txt")))
    (tmp_path / "x.csv").write_text("a,b\n")
    assert "unknown format" in error(SourceConfig(str(tmp_path / "x.csv")))
    (tmp_path / "y.txt").write_text("text\n")
    (tmp_path / "y.jsonl").write_text('{"text": "json"}\n')
    assert "several formats" in error(SourceConfig(str(tmp_path / "y.*")))
    assert "total weight is 0" in error(SourceConfig("builtin:sample", weight=0.0))
    assert "sample_by" in error(SourceConfig("builtin:sample", sample_by="sentence"))
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"text": "fine"}\n{"content": "oops"}\n')
    message = error(SourceConfig(str(jsonl)))
    assert (
        "'text'" in message
        and str(jsonl) in message
        and "line 2" in message
        and "content" in message
    )
    with pytest.raises(ValueError, match="divisible"):
        build_train_loader(DataConfig(), HAT_FORMAT, 64, global_rows=3, rank=0, world_size=2)
    with pytest.raises(ValueError, match="max_word_bytes"):
        build_train_loader(DataConfig(), HAT_FORMAT, 16, global_rows=2)


def test_mixing_follows_weights_deterministically(tmp_path: Path) -> None:
    a = write_lines(tmp_path / "a.txt", [f"a{i}" for i in range(50)])
    b = write_lines(tmp_path / "b.txt", [f"b{i}" for i in range(7)])  # small: repeats many epochs

    def stream(seed: int, n: int = 4000) -> list[str]:
        sources = [SourceConfig(a, weight=3.0, sample_by="line"), SourceConfig(b, sample_by="line")]
        docs = iter_documents(DataConfig(sources, eval_every=0, seed=seed), repeat=True)
        return [next(docs) for _ in range(n)]

    docs = stream(0)
    share_a = sum(d.startswith("a") for d in docs) / len(docs)
    assert abs(share_a - 0.75) < 0.03
    assert [d for d in docs if d.startswith("b")][:9] == [f"b{i}" for i in range(7)] + ["b0", "b1"]
    assert docs == stream(0) and docs != stream(1)


def test_held_out_split_is_disjoint() -> None:
    cfg = DataConfig(eval_every=10)
    train, held_out = list(iter_documents(cfg, "train")), list(iter_documents(cfg, "eval"))
    everything = list(iter_documents(DataConfig(eval_every=0)))
    assert held_out == everything[9::10]
    assert len(train) + len(held_out) == len(everything)


# ---- loaders -------------------------------------------------------------------------------
def take(loader, n: int) -> list[dict[str, torch.Tensor]]:
    return [next(loader) for _ in range(n)]


def assert_same_batches(xs: list[dict], ys: list[dict]) -> None:
    """Equal batches; ``word_lengths`` may differ only in trailing zero columns."""
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for key in x:
            width = max(x[key].shape[1], y[key].shape[1])
            pad = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in (x[key], y[key])]
            assert torch.equal(*pad), key


def test_world_size_and_workers_do_not_change_the_global_batch() -> None:
    cfg = DataConfig()
    whole = take(build_train_loader(cfg, HAT_FORMAT, 96, 4), 4)
    halves = [take(build_train_loader(cfg, HAT_FORMAT, 96, 4, rank, 2), 4) for rank in range(2)]
    assert all(len(b["input_ids"]) == 2 for b in halves[0])
    assert_same_batches(whole, [concat_batches(pair) for pair in zip(*halves)])
    with_workers = take(build_train_loader(DataConfig(num_workers=2), HAT_FORMAT, 96, 4), 4)
    assert_same_batches(whole, with_workers)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_gives_the_uninterrupted_batches(num_workers: int) -> None:
    cfg = DataConfig(num_workers=num_workers)
    uninterrupted = take(build_train_loader(cfg, HAT_FORMAT, 64, 2), 6)
    loader = build_train_loader(cfg, HAT_FORMAT, 64, 2)
    take(loader, 4)
    state = loader.state_dict()
    resumed = build_train_loader(cfg, HAT_FORMAT, 64, 2)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, 2), uninterrupted[4:])
    with pytest.raises(ValueError, match="seq_len"):
        build_train_loader(cfg, HAT_FORMAT, 128, 2).load_state_dict(state)


def lane_documents(batches: list[dict], lane: int, marker: int) -> list[list[int]]:
    """The documents of one lane, as unit lists, from its rows (padding dropped)."""
    units = torch.cat([b["input_ids"][lane][b["labels"][lane] != IGNORE] for b in batches]).tolist()
    docs: list[list[int]] = []
    for u in units:
        if u == marker:
            docs.append([])
        else:
            docs[-1].append(u)
    return docs


def test_hat_and_bpe_see_the_same_documents(tiny_tokenizer) -> None:
    cfg, rows = DataConfig(eval_every=20), 3
    loaders = {
        "hat": lambda split, **kw: split(cfg, HAT_FORMAT, 256, rows, **kw),
        "bpe": lambda split, **kw: split(cfg, BPEFormat(tiny_tokenizer), 96, rows, **kw),
    }
    decode = {"hat": lambda d: bytes(d).decode("utf-8"), "bpe": tiny_tokenizer.decode}
    marker = {"hat": EOD, "bpe": BOS_ID}

    def documents(kind: str, batches: list[dict], lane: int) -> list[str]:
        return [decode[kind](d) for d in lane_documents(batches, lane, marker[kind])]

    # train: the complete documents of the first batches (a lane's last one may be cut off)
    train = list(islice(iter_documents(cfg, "train", repeat=True), 300))
    seen = {kind: take(make(build_train_loader), 8) for kind, make in loaders.items()}
    for lane in range(rows):
        from_hat, from_bpe = (documents(kind, seen[kind], lane)[:-1] for kind in ("hat", "bpe"))
        n = min(len(from_hat), len(from_bpe))
        assert n >= 3 and from_hat[:n] == from_bpe[:n] == train[lane::rows][:n]

    # held out: all of it, so the bits-per-byte denominators agree exactly
    held_out = list(iter_documents(cfg, "eval"))
    evals = {kind: list(make(build_eval_batches)) for kind, make in loaders.items()}
    for lane in range(rows):
        assert documents("hat", evals["hat"], lane) == held_out[lane::rows]
        assert documents("bpe", evals["bpe"], lane) == held_out[lane::rows]
    text_bytes = sum(len(d.encode("utf-8")) for d in held_out)
    hat_text = [(b["labels"] != IGNORE) & (b["labels"] != EOD) for b in evals["hat"]]
    assert sum(int(t.sum()) for t in hat_text) == text_bytes
    assert sum(int(b["label_bytes"].sum()) for b in evals["bpe"]) == text_bytes


def test_batches_run_through_the_models(tiny_hat, tiny_bpe, tiny_tokenizer) -> None:
    hat_batch = next(build_train_loader(DataConfig(), tiny_hat.data_format(), 128, 2))
    bpe_batch = next(build_train_loader(DataConfig(), tiny_bpe.data_format(), 64, 2))
    assert hat_batch["word_lengths"].sum(1).tolist() == [128, 128]
    hat_out, bpe_out = tiny_hat(**hat_batch), tiny_bpe(**bpe_batch)
    assert torch.isfinite(hat_out.loss) and torch.isfinite(bpe_out.loss)
    # bits per byte count text only: every target but the documents' ends
    hat_text = (hat_batch["labels"] != IGNORE) & (hat_batch["labels"] != EOD)
    assert hat_out.text_bytes == hat_text.sum() < (hat_batch["labels"] != IGNORE).sum()
    assert bpe_out.text_bytes == bpe_batch["label_bytes"].sum() > 0
    assert hat_out.n_targets == (hat_batch["labels"] != IGNORE).sum()  # the loss counts ends


def test_weight_zero_sources_are_evaluated_not_trained(tmp_path: Path) -> None:
    """Continued pretraining: train on one language, still measure another's held-out split."""
    de = write_lines(tmp_path / "de" / "corpus.txt", [f"de{i}" for i in range(40)])
    en = write_lines(tmp_path / "en.txt", [f"en{i}" for i in range(40)])
    hub = SourceConfig("HuggingFaceFW/fineweb-edu", name="sample-10BT")
    assert hub.display_name() == "fineweb-edu-sample-10BT"
    assert SourceConfig(str(tmp_path / "de" / "*.txt")).display_name() == "de"
    sources = [
        SourceConfig(de, sample_by="line"),
        SourceConfig(en, weight=0.0, sample_by="line", label="english"),
    ]
    cfg = DataConfig(sources, eval_every=4)
    train = list(iter_documents(cfg, "train"))
    assert train and all(d.startswith("de") for d in train)
    sets = cfg.eval_sets()
    assert list(sets) == ["corpus", "english"]
    assert list(iter_documents(sets["english"], "eval")) == [f"en{i}" for i in range(3, 40, 4)]
    assert list(iter_documents(sets["corpus"], "eval")) == list(iter_documents(cfg, "eval"))
    assert sets["corpus"] is cfg  # the only trained source is the mixture: evaluated once
    assert DataConfig(sources[:1]).eval_sets() == {}  # one source: the mixture is all there is
    with pytest.raises(ValueError, match="no file matches"):  # weight 0 is still checked
        DataConfig([sources[0], SourceConfig(str(tmp_path / "nope.txt"), weight=0.0)]).validate()
