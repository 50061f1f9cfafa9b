"""``hat-generate``: continue prompts with a saved HAT (or BPE twin) model, streaming to stdout.

    hat-generate outputs/small/model --prompt "Once upon a time" --max-new-tokens 200
    hat-generate MODEL --prompt-file prompts.txt --do-sample --temperature 0.8 --top-p 0.95
    hat-generate MODEL --prompt "Q: why?" --stop $'\\n' --seed 0 --num-return-sequences 3
    hat-generate org/name@main --prompt "Hello"      # a model on the Hugging Face Hub

Defaults come from the model's ``generation_config.json`` (if saved), else from
``hat.generation.GenerationConfig``; every flag given here overrides them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from hat.auto import load_pretrained
from hat.cli.common import cli_errors, read_text_file, resolve_device
from hat.generation import TextStreamer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hat-generate", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "model",
        help="directory written by save_pretrained (HAT or BPE twin), or a Hub id org/name[@revision]",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="the prompt (default: empty, i.e. a new document)")
    src.add_argument("--prompt-file", help="one prompt per line ('-' reads stdin)")
    p.add_argument("--max-new-tokens", type=int, help="bytes for HAT, tokens for the twin")
    p.add_argument("--max-new-words", type=int, help="HAT: stop after this many new words")
    p.add_argument("--min-new-tokens", type=int)
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument("--do-sample", action="store_true", default=None, help="sample")
    sampling.add_argument("--greedy", dest="do_sample", action="store_false", help="argmax")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--eos-token-id", type=int, action="append", help="extra end id (repeat)")
    p.add_argument("--stop", action="append", dest="stop_strings", help="stop string (repeat)")
    p.add_argument("--num-return-sequences", type=int)
    p.add_argument(
        "--no-cache",
        dest="use_cache",
        action="store_false",
        default=None,
        help="recompute everything at every step (slow; the reference)",
    )
    p.add_argument(
        "--backbone-wait",
        type=backbone_wait,
        help="HAT, batched rows: a row that finished a word waits until this many rows wait "
        "(one backbone pass for all; pays for large models); 'auto' (the default) or K",
    )
    p.add_argument(
        "--compile-step",
        nargs="?",
        const=True,
        metavar="MODE",
        help="compile the cached step (static shapes; CUDA graphs on a GPU); MODE: a "
        "torch.compile mode instead (e.g. default: no CUDA graphs)",
    )
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--no-echo", action="store_true", help="print only the continuation")
    return p


def backbone_wait(value: str) -> str | int:
    """``--backbone-wait``: ``auto`` or a whole number (the model checks its range)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'auto' or a whole number, got {value!r}") from None


OPTIONS = (
    "max_new_tokens",
    "max_new_words",
    "min_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "eos_token_id",
    "stop_strings",
    "num_return_sequences",
    "use_cache",
    "backbone_wait",
    "compile_step",
)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """``--prompt``, or the lines of ``--prompt-file`` (``\n``, ``\r\n`` or ``\r`` ended)."""
    if args.prompt_file is None:
        return [args.prompt or ""]
    text = read_text_file(args.prompt_file, "--prompt-file")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":  # the end of the last line, not an empty prompt after it
        lines.pop()
    if not lines:
        name = "standard input" if args.prompt_file == "-" else args.prompt_file
        raise ValueError(f"--prompt-file: {name} is empty; give one prompt per line")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with cli_errors("hat-generate"):
        generate(args)


def generate(args: argparse.Namespace) -> None:
    prompts = read_prompts(args)  # before the model: a bad file fails at once
    device = resolve_device(args.device, "--device")
    model = load_pretrained(args.model, device=device, dtype=DTYPES[args.dtype])
    options = {k: getattr(args, k) for k in OPTIONS if getattr(args, k) is not None}
    if "eos_token_id" in options:
        options["eos_token_id"] = list(options["eos_token_id"])
    config = model.generation_config.update(**options).validate()
    for i, prompt in enumerate(prompts):
        if i:
            print()
        seed = None if args.seed is None else args.seed + i
        if config.num_return_sequences == 1:
            streamer = TextStreamer(skip_prompt=args.no_echo)
            model.generate(prompt, generation_config=config, streamer=streamer, seed=seed)
            continue
        for text in model.generate(prompt, generation_config=config, seed=seed):
            print(text if args.no_echo else prompt + text)


if __name__ == "__main__":
    main()
