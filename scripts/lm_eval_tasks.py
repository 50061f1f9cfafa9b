"""Write lm-evaluation-harness tasks that run offline from local files (a YAML + a JSONL each):

* ``hat_heldout``: bits per byte (``loglikelihood_rolling``) on the held-out documents of a
  hat data config (default: the built-in sample corpus, the split ``hat-train`` evaluates on);
* ``<name>`` for each BIG-bench JSON task given: multiple choice, each choice scored as
  " " + choice after the input (what ``hat.evaluation.multiple_choice`` and ``hat-eval`` do, so
  the harness's ``acc`` equals theirs).

    python scripts/lm_eval_tasks.py lm_eval_tasks/ --bigbench hyperbaton.json --limit 1000
    hat-lm-eval --model hat --model_args pretrained=outputs/small/model \\
        --include_path lm_eval_tasks/ --tasks hat_heldout,hyperbaton --batch_size 16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from hat.cli.common import config_dir
from hat.cli.evaluate import held_out_documents
from hat.data import DataConfig
from hat.evaluation import load_bigbench

MULTIPLE_CHOICE = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{input}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answers}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""

ROLLING = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def write_heldout(out: Path, data: DataConfig, max_docs: int | None, name: str) -> int:
    docs = held_out_documents(data, max_docs)["held_out"]
    data_file = write_jsonl(out / f"{name}.jsonl", [{"text": d} for d in docs])
    (out / f"{name}.yaml").write_text(ROLLING.format(name=name, data=data_file.resolve()))
    return len(docs)


def write_bigbench(out: Path, task: Path, limit: int | None) -> int:
    name = task.stem
    rows = [
        # every right choice (BIG-bench may give several the top score): lm-eval counts a
        # prediction in the list as correct
        {"input": ex.input, "choices": ex.choices, "answers": [ex.answer, *ex.also_correct]}
        for ex in load_bigbench(task, limit)
    ]
    data_file = write_jsonl(out / f"{name}.jsonl", rows)
    (out / f"{name}.yaml").write_text(MULTIPLE_CHOICE.format(name=name, data=data_file.resolve()))
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", help="directory for the task files (lm-eval's --include_path)")
    p.add_argument("--data", default="sample", help="a data config of configs/data (held-out)")
    p.add_argument("--max-docs", type=int, default=200, help="held-out documents (0: none)")
    p.add_argument("--bigbench", nargs="*", default=[], help="BIG-bench JSON task files")
    p.add_argument("--limit", type=int, help="examples per BIG-bench task (default: all)")
    args = p.parse_args(argv)
    stems = [Path(t).stem for t in args.bigbench]
    if len(set(stems)) < len(stems) or (args.max_docs and "hat_heldout" in stems):
        # one task (a YAML and a JSONL) per name: a second file of the same name would replace it
        p.error(
            f"--bigbench: task files need different names (each names its task), got {stems}; "
            "copy them to <task>.json first (BIG-bench's <task>/task.json)"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.max_docs:
        schema = OmegaConf.structured(DataConfig)
        data = OmegaConf.merge(
            schema, OmegaConf.load(Path(config_dir()) / "data" / f"{args.data}.yaml")
        )
        count = write_heldout(out, OmegaConf.to_object(data), args.max_docs, "hat_heldout")
        print(f"hat_heldout: {count} held-out documents of data={args.data}")
    for task in map(Path, args.bigbench):
        print(f"{task.stem}: {write_bigbench(out, task, args.limit)} examples")


if __name__ == "__main__":
    main()
