"""Generation speed: HAT (``small``) vs its BPE twin (``bpe_small``, same backbone), cached vs
uncached, batch 1 and 32, in bytes of new text per second. Prints JSON.

    python scripts/bench_generate.py                 # 1 KB per row (slow on a CPU: minutes)
    python scripts/bench_generate.py --quick         # CPU smoke run: 96 bytes per row, < 2 min
    python scripts/bench_generate.py --device cuda --dtype bfloat16
    python scripts/bench_generate.py --compare-ref ee44999 --threads 1   # old vs this tree

Random-init weights (speed does not depend on the weights, but on the text: HAT runs its
backbone once per word, so the words per byte matter). ``--text corpus`` (the default) makes
both models write the same real text, the built-in corpus's continuation of each prompt (a
logits processor leaves only the text's next id: ~0.2 words per byte for HAT, the tokenizer's
real tokens for the twin). ``--text sampled`` samples (seeded) with the end of document
suppressed instead: a random-init HAT then writes random characters (their words are short;
more backbone steps per byte than real text), a random-init twin random tokens (its
vocabulary's mean length, longer than real text's tokens). The twin's budget is set in tokens
(``corpus``: the fewest any row's continuation takes; ``sampled``: from its vocabulary's mean
token length), and the bytes it actually produced are what counts. ``--text greedy`` decodes
greedily (end of document suppressed): no processor, so with ``--compile-step`` the step's
graph also picks the next id (``hat.generation.choose``), which a forcing processor (read on
the host) rules out; what a random-init model writes greedily is repetitive. With
``--choice-outside`` the compiled step also runs with the choice outside its graph (a
processor that changes nothing keeps it there), taking turns with the fused one.
For HAT the report also says how often its backbone ran, counted from the text written
(``backbone``: the share of byte steps at which some row started a new word, i.e. finished
one, and the rows per such step): at batch 32 that is nearly every byte step, for a few rows,
where the twin runs its backbone once per token step (~3.9 bytes) for every row.
Uncached means a full forward over everything at every step (``use_cache=False``); its cost
grows with the length, so the cached/uncached ratio at 96 bytes understates the one at 1 KB.

``--compare-ref REV`` measures cached generation (bytes/s per model and batch) of git revision
REV and of this tree, interleaved measurement by measurement (``scripts/compare_ref.py``); reports
every round, the medians and the new/old ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import hat
from hat.generation import token_byte_table
from hat.generation.lean import compile_mode
from hat.generation.words import word_starts
from hat.splitter import EOD
from hat.tokenizer import BOS_ID, EOS_ID

CORPUS = Path(hat.__file__).parent / "assets" / "sample_corpus.txt"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--new-bytes", type=int, default=1024, help="new text per row (bytes)")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--prompt-bytes", type=int, default=64)
    p.add_argument("--hat", default="small", help="HAT preset")
    p.add_argument("--bpe", default="bpe_small", help="BPE twin preset")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-uncached", action="store_true", help="skip the (slow) reference")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: --new-bytes 96")
    p.add_argument("--models", default="hat,bpe", help="which of hat,bpe to run")
    p.add_argument(
        "--compile-step",
        nargs="?",
        const=True,
        default=False,
        metavar="MODE",
        help="also generate(compile_step=True): CUDA graphs on a GPU; MODE: a torch.compile "
        "mode instead (e.g. default: compiled without CUDA graphs)",
    )
    p.add_argument(
        "--choice-outside",
        action="store_true",
        help="with --compile-step and --text greedy/sampled: also the compiled step with the "
        "next id chosen outside its graph (as before the choice was fused), taking turns",
    )
    p.add_argument(
        "--backbone-wait",
        type=int,
        default=1,
        metavar="K",
        help="also HAT's cached generation with generate(backbone_wait=K), taking turns with K=1",
    )
    p.add_argument(
        "--text",
        choices=["corpus", "sampled", "greedy"],
        default="corpus",
        help="write the corpus's continuation of each prompt (real words and tokens), sample, "
        "or decode greedily",
    )
    p.add_argument(
        "--compare-ref",
        metavar="REV",
        help="cached generation of git revision REV vs this tree, interleaved rounds",
    )
    p.add_argument("--rounds", type=int, default=7, help="rounds of --compare-ref")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="fastest of this many calls (in the main mode the paths of a model and batch "
        "take turns)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--output", help="also write the JSON here")
    args = p.parse_args()
    if args.quick:
        args.new_bytes = min(args.new_bytes, 96)
    if args.choice_outside and (not args.compile_step or args.text == "corpus"):
        p.error(
            "--choice-outside needs --compile-step and --text greedy or sampled (forcing "
            "the corpus's text is a processor: its choice is outside the graph anyway)"
        )
    return args


def passages(n: int, prompt_bytes: int, new_bytes: int) -> list[tuple[str, str]]:
    """n (prompt, continuation) pairs of ~prompt_bytes and ~new_bytes (cut at characters),
    from n evenly spaced line starts of the built-in corpus."""
    data = CORPUS.read_bytes()
    step = (len(data) - 4 * (prompt_bytes + new_bytes)) // max(n, 1)
    out = []
    for i in range(n):
        start = data.index(b"\n", i * step) + 1
        prompt = data[start : start + prompt_bytes].decode("utf-8", errors="ignore")
        end = start + len(prompt.encode())
        out.append((prompt, data[end : end + new_bytes].decode("utf-8", errors="ignore")))
    return out


class ForceText:
    """A logits processor that leaves each row only the next id of its given continuation
    (every other score -inf): ``generate`` then writes known text at the cost of real decoding.
    A row's next id is the one after the ids it has written since the start of a ``generate``
    call (the narrowest input). With ``per_row`` each row's ids are counted (``backbone_wait``:
    rows that wait for HAT's backbone fall behind the others, their input ending in padding);
    without, every row has written as many as the input is wide, and the processor costs two
    small ops a step (a scatter into a copy of a -inf table): HAT pays it per byte, the twin
    per token, so it is kept as cheap as the per-step work of ``generate`` itself."""

    def __init__(self, ids: list[list[int]], device: str, pad_id: int) -> None:
        self.ids = torch.tensor([row[: min(map(len, ids))] for row in ids], device=device)
        self.pad_id = pad_id
        self.start: int | None = None
        self.per_row = True  # run() sets it from the call's backbone_wait
        self.blank: torch.Tensor | None = None  # -inf scores [B, V]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None or input_ids.shape[1] < self.start:
            self.start = input_ids.shape[1]
        last = self.ids.shape[1] - 1
        if self.per_row:
            written = (input_ids[:, self.start :] != self.pad_id).sum(1, keepdim=True)  # [B, 1]
            forced = self.ids.gather(1, written.clamp(max=last))  # [B, 1]
        else:
            step = min(input_ids.shape[1] - self.start, last)
            forced = self.ids[:, step : step + 1]  # [B, 1], a view
        if self.blank is None or self.blank.shape != scores.shape:
            self.blank = torch.full_like(scores, -float("inf"))
        return self.blank.scatter(1, forced, 0.0)


def pass_through(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return scores


def new_word_starts(splitter, prompt: str, text: str) -> set[int]:  # noqa: ANN001
    """Offsets into ``text``, written after ``prompt``, of the bytes that start a word (and so
    finish the one before it), as the model's splitter splits the whole document."""
    offset = 1 + len(prompt.encode())  # EOD + prompt
    starts = word_starts(bytes([EOD]) + prompt.encode() + text.encode(), splitter)
    return {s - offset for s in starts if s >= offset}


def backbone_steps(model, prompts: list[str], outputs: list[str]) -> dict:  # noqa: ANN001
    """How often HAT's cached backbone runs in a call, from the text it wrote: the share of
    byte steps at which at least one row starts a word (so finishes the one before: a backbone
    step), and the rows per such step. Of a row's N new bytes the engine steps bytes 0..N-2
    (the last is sampled, then the call ends), each step running the backbone if its byte
    starts a word."""
    per_row = [
        {s for s in new_word_starts(model.splitter, p, out) if s < len(out.encode()) - 1}
        for p, out in zip(prompts, outputs)
    ]
    steps = max(len(out.encode()) for out in outputs) - 1
    union = set().union(*per_row)
    return {
        "step_share": round(len(union) / max(steps, 1), 3),
        "rows_per_step": round(sum(map(len, per_row)) / max(len(union), 1), 2),
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


WARMUP_S: list[float] = []  # seconds of each run()'s warm-up call


def run(model, work, cache, device, repeats=1, **kw):  # noqa: ANN001, ANN201
    """Timed generate() calls of one ``workload`` (the fastest of ``repeats``) -> (new bytes,
    seconds, texts).

    The untimed warm-up is a short call; with ``compile_step`` a full one (compiling every
    shape the timed call meets), its time in ``WARMUP_S[-1]``."""
    texts, units, options = work
    kwargs = dict(use_cache=cache, **options, **kw)
    for processor in options.get("logits_processor", []):
        if isinstance(processor, ForceText):  # rows keep pace unless they may wait
            processor.per_row = kw.get("backbone_wait", 1) != 1
    start = time.perf_counter()
    model.generate(texts, max_new_tokens=units if kw.get("compile_step") else 4, **kwargs)
    sync(device)
    WARMUP_S.append(time.perf_counter() - start)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = model.generate(texts, max_new_tokens=units, **kwargs)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return sum(len(t.encode("utf-8")) for t in out), best, out


def workload(name: str, setup: tuple, batch: int, args: argparse.Namespace) -> tuple:
    """(prompts, max_new_tokens, generate options) of one model at one batch size."""
    model, units, suppress = setup
    pairs = passages(batch, args.prompt_bytes, args.new_bytes)
    texts = [prompt for prompt, _ in pairs]
    if args.text == "sampled":
        return texts, units, {"do_sample": True, "seed": 0, "suppress_tokens": suppress}
    if args.text == "greedy":
        return texts, units, {"do_sample": False, "suppress_tokens": suppress}
    if name == "hat":
        ids = [list(text.encode("utf-8")) for _, text in pairs]
    else:
        ids = [model.tokenizer.encode(text) for _, text in pairs]
    force = ForceText(ids, args.device, model.generation_spec().pad_id)
    return texts, force.ids.shape[1], {"do_sample": False, "logits_processor": [force]}


def build_models(args: argparse.Namespace, tmp: Path):  # noqa: ANN201
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    hat_model = hat.HATForCausalLM.from_name(args.hat).to(args.device, dtype).eval()
    cfg = hat.BPEConfig.from_name(args.bpe)
    text = CORPUS.read_text(encoding="utf-8")
    # at most the vocabulary (the sample supports ~36k pieces; the model keeps its full head)
    tok = hat.BPETokenizer.train([text], cfg.vocab_size, tmp / "tok.model", hard_vocab_limit=False)
    bpe_model = hat.BPEForCausalLM(cfg, tok).to(args.device, dtype).eval()
    return hat_model, bpe_model


def setups(args: argparse.Namespace) -> dict:
    """name -> (model, new units per row, ids to suppress) for the models asked for."""
    with tempfile.TemporaryDirectory() as tmp:
        hat_model, bpe_model = build_models(args, Path(tmp))
    lengths = [len(b) for b in token_byte_table(bpe_model.tokenizer) if b]
    bytes_per_token = sum(lengths) / len(lengths)  # a random-init twin samples ~uniformly
    every = {
        "hat": (hat_model, args.new_bytes, [EOD]),
        "bpe": (bpe_model, math.ceil(args.new_bytes / bytes_per_token), [BOS_ID, EOS_ID]),
    }
    return {name: every[name] for name in args.models.split(",")}


def worker(args: argparse.Namespace) -> None:
    """One side of --compare-ref: cached bytes/s per model and batch, on demand, with a short
    hash of the generated text (both sides should do the same work)."""
    from compare_ref import serve

    models = setups(args)
    extra = {"compile_step": args.compile_step} if args.compile_step else {}

    def measurement(name: str, batch: int):  # noqa: ANN202
        work = workload(name, models[name], batch, args)
        # HAT's engine as such, rows not waiting (an old revision has no backbone_wait)
        wait = {"backbone_wait": 1} if name == "hat" and _has_backbone_wait() else {}

        def measure() -> tuple[float, str]:
            new_bytes, seconds, out = run(
                models[name][0], work, True, args.device, args.repeats, **extra, **wait
            )
            digest = hashlib.sha1("\0".join(out).encode()).hexdigest()[:12]
            return round(new_bytes / seconds, 1), digest

        return measure

    serve(
        {
            f"{name}_b{batch}_bytes_per_s": measurement(name, batch)
            for batch in (int(b) for b in args.batch_sizes.split(","))
            for name in models
        }
    )


def _has_backbone_wait() -> bool:
    from hat.generation import GenerationConfig

    return hasattr(GenerationConfig(), "backbone_wait")


def compare(args: argparse.Namespace) -> dict:
    from compare_ref import compare as interleave

    forward = ["--new-bytes", str(args.new_bytes), "--batch-sizes", args.batch_sizes]
    forward += ["--prompt-bytes", str(args.prompt_bytes), "--hat", args.hat, "--bpe", args.bpe]
    forward += ["--device", args.device, "--dtype", args.dtype, "--models", args.models]
    forward += ["--text", args.text]
    forward += ["--threads", str(args.threads)] if args.threads else []
    if args.compile_step:
        forward += ["--compile-step"] + (
            [args.compile_step] if args.compile_step is not True else []
        )
    forward += ["--repeats", str(args.repeats)]
    report = interleave(__file__, forward, args.compare_ref, args.rounds, higher_is_better=True)
    return {
        "benchmark": "cached generation, bytes of new text per second",
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "new_bytes_per_row": args.new_bytes,
        "prompt_bytes": args.prompt_bytes,
        **report,
    }


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    if args.compare_ref:
        sys.path.insert(0, str(Path(__file__).parent))
        text = json.dumps(compare(args), indent=2)
        print(text)
        if args.output:
            Path(args.output).write_text(text + "\n")
        return None
    batches = [int(b) for b in args.batch_sizes.split(",")]
    models = setups(args)
    results = []
    for batch in batches:
        for name, setup in models.items():
            work, model = workload(name, setup, batch, args), setup[0]
            # (use_cache, compile_step, backbone_wait, choice outside the graph): with
            # --compile-step the eager cached step is measured too, right before the compiled
            # one, for the compiled / eager ratio; with --backbone-wait HAT's eager cached step
            # also with waiting rows
            compiling = bool(args.compile_step)
            paths = [(True, False, 1, False)] + [(True, True, 1, False)] * compiling
            paths += [(True, True, 1, True)] * args.choice_outside
            if name == "hat" and args.backbone_wait > 1:
                paths += [
                    (True, c, args.backbone_wait, False) for c in (False, True)[: 1 + compiling]
                ]
            paths += [] if args.no_uncached else [(False, False, 1, False)]
            best: dict[tuple, tuple[int, float]] = {}
            warmups: dict[tuple, float] = {}
            texts: dict[tuple, list[str]] = {}
            for rep in range(args.repeats):  # paths interleaved, alternating order: fastest
                for path in paths[:: -1 if rep % 2 else 1]:
                    cache, compiled, wait, outside = path
                    extra = {"compile_step": args.compile_step} if compiled else {}
                    extra |= {"backbone_wait": wait} if name == "hat" else {}  # not "auto"
                    # a processor that changes nothing keeps the choice out of the graph
                    extra |= {"logits_processor": [pass_through]} if outside else {}
                    new_bytes, seconds, texts[path] = run(model, work, cache, args.device, **extra)
                    warmups.setdefault(path, WARMUP_S[-1])  # the first: compiles
                    if seconds < best.get(path, (0, float("inf")))[1]:
                        best[path] = (new_bytes, seconds)
            written = texts[paths[0]]
            if any(t != written for t in texts.values()) and args.text == "corpus":
                raise SystemExit(f"{name}: the paths wrote different text")
            if name == "hat":  # from the text written (the same on every path)
                backbone = backbone_steps(model, work[0], written)
            for path in paths:
                (cache, compiled, wait, outside), (new_bytes, seconds) = path, best[path]
                results.append(
                    {
                        "model": name,
                        "preset": args.hat if name == "hat" else args.bpe,
                        "batch": batch,
                        "use_cache": cache,
                        "compile_step": compiled,
                        **({"choice_outside": True} if outside else {}),
                        **({"backbone_wait": wait} if name == "hat" else {}),
                        "max_new_tokens": work[1],
                        "new_bytes": new_bytes,
                        "seconds": round(seconds, 3),
                        "bytes_per_s": round(new_bytes / seconds, 1),
                        "warmup_s": round(warmups[path], 2),
                        **({"backbone": backbone} if name == "hat" else {}),
                    }
                )
                print(json.dumps(results[-1]), flush=True)
    report = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "new_bytes_per_row": args.new_bytes,
        "prompt_bytes": args.prompt_bytes,
        "text": args.text,
        "quick": args.quick,
        "compile_step": args.compile_step,
        # what compile_step ran as here: True is "reduce-overhead" (CUDA graphs) on a GPU
        "compile_mode": compile_mode(args.compile_step, torch.device(args.device).type)
        if args.compile_step
        else None,
        "params": {name: m.num_parameters() for name, (m, _, _) in models.items()},
        "results": results,
        "ratios": ratios(results),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


def ratios(results: list[dict]) -> dict[str, float]:
    """cached / uncached per model and batch; HAT / BPE bytes per second per batch (cached);
    with --compile-step also compiled / eager and HAT / BPE with both compiled; with
    --choice-outside the choice fused into the compiled step / chosen outside it."""
    compiled = {
        (r["model"], r["batch"]): r["bytes_per_s"]
        for r in results
        if r["compile_step"] and r.get("backbone_wait", 1) == 1 and "choice_outside" not in r
    }
    speed = {
        (r["model"], r["batch"], r["use_cache"]): r["bytes_per_s"]
        for r in results
        if not r["compile_step"] and r.get("backbone_wait", 1) == 1
    }
    out = {}
    for r in results:
        wait = r.get("backbone_wait", 1)
        if wait > 1:  # HAT with waiting rows, against K = 1 and the twin on the same path
            batch = r["batch"]
            if r["compile_step"]:
                key, twin = f"wait{wait}_compiled", "bpe_compiled"
                hat_1, bpe_1 = compiled.get(("hat", batch)), compiled.get(("bpe", batch))
            else:
                key, twin = f"wait{wait}", "bpe_cached"
                hat_1, bpe_1 = speed.get(("hat", batch, True)), speed.get(("bpe", batch, True))
            if hat_1:
                out[f"hat_b{batch}_{key}_over_wait1"] = round(r["bytes_per_s"] / hat_1, 2)
            if bpe_1:
                out[f"b{batch}_hat_{key}_over_{twin}"] = round(r["bytes_per_s"] / bpe_1, 2)
    for r in results:  # the choice inside the compiled graph vs outside it
        if "choice_outside" in r:
            fused = compiled[r["model"], r["batch"]]
            out[f"{r['model']}_b{r['batch']}_fused_over_outside"] = round(
                fused / r["bytes_per_s"], 3
            )
    for (model, batch), value in compiled.items():
        out[f"{model}_b{batch}_compiled_over_eager"] = round(value / speed[model, batch, True], 2)
        if model == "hat" and ("bpe", batch) in compiled:
            out[f"b{batch}_hat_over_bpe_compiled"] = round(value / compiled["bpe", batch], 2)
    for (model, batch, cache), value in speed.items():
        if cache and (model, batch, False) in speed:
            out[f"{model}_b{batch}_cached_over_uncached"] = round(
                value / speed[(model, batch, False)], 2
            )
        if cache and model == "hat" and ("bpe", batch, True) in speed:
            out[f"b{batch}_hat_over_bpe_cached"] = round(value / speed[("bpe", batch, True)], 2)
    return out


if __name__ == "__main__":
    main()
