"""What the trainer reports: metrics.jsonl (+ wandb through accelerate), throughput, MFU."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from hat.config import ModelConfig
from hat.flops import mfu as flops_mfu

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """metrics.jsonl on rank 0, plus accelerate's trackers (wandb) when configured."""

    def __init__(self, path: Path, accelerator: Accelerator) -> None:
        self.path, self.accelerator = path, accelerator

    def truncate_after(self, step: int, aside: Path | None = None) -> None:
        """Drop lines of steps after ``step`` (written by a run killed after its last
        checkpoint, or by the future a rollback abandons: appended to ``aside`` if given), and
        a line that is not JSON (cut short by a kill), with a warning."""
        if not self.accelerator.is_main_process or not self.path.is_file():
            return
        kept, later = [], []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                logger.warning(
                    f"{self.path}, line {n}: not complete JSON (cut by a kill?); dropped"
                )
                continue
            if record is not None:
                (kept if record["step"] <= step else later).append(line)
        if aside is not None and later:
            aside.parent.mkdir(parents=True, exist_ok=True)
            with open(aside, "a") as f:
                f.write("".join(line + "\n" for line in later))
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        # 7 significant digits, not 6 decimals: a warm-up's learning rate of 4e-7 is not 0
        record = {k: (float(f"{v:.7g}") if isinstance(v, float) else v) for k, v in record.items()}
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.accelerator.log(
            {k: v for k, v in record.items() if k not in ("step", "kind")}, step=record["step"]
        )


# peak dense bf16 FLOP/s per device, for MFU (by substring of torch.cuda.get_device_name())
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
}


def peak_flops(accelerator: Accelerator) -> float | None:
    if accelerator.device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(accelerator.device)
    per_device = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return per_device * accelerator.num_processes if per_device else None


def mfu(
    model_cfg: ModelConfig,
    row_bytes: int,
    n_bytes: float,
    n_units: float,
    bytes_per_s: float,
    peak: float | None,
) -> float | None:
    """Model FLOPs utilisation from hat.flops (None off GPU or on an unknown GPU).

    ``n_bytes / n_units``: the bytes per backbone position (word or token) measured in training.
    """
    if peak is None or n_units <= 0:
        return None
    return flops_mfu(model_cfg, n_bytes / n_units, bytes_per_s, peak, seq_len=row_bytes)


@dataclass
class Throughput:
    """Bytes and backbone positions (HAT words, twin tokens) per second of training time."""

    n_bytes: float = 0.0
    n_units: float = 0.0
    data_s: float = 0.0  # of which spent waiting for batches (this rank)
    start: float = field(default_factory=time.perf_counter)

    def add(self, n_bytes: float, n_units: float, data_s: float = 0.0) -> None:
        self.n_bytes += n_bytes
        self.n_units += n_units
        self.data_s += data_s

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    def rates(self) -> tuple[float, float]:
        elapsed = self.elapsed()
        return self.n_bytes / elapsed, self.n_units / elapsed

    def data_share(self) -> float:
        """The share of training time spent waiting for the data pipeline."""
        return min(self.data_s / self.elapsed(), 1.0)


class DataWaitAdvice:
    """Warns once when an accelerator waits for the data pipeline: packing (splitting words,
    tokenizing) runs on the CPU, in this process unless ``data.num_workers`` > 0, and a GPU
    step of a small model can be shorter than packing its batch. The first log interval is
    skipped (worker start-up). Not on a CPU, where workers would take the training's cores."""

    THRESHOLD = 0.1

    def __init__(self, device_type: str, num_workers: int) -> None:
        self.active = device_type != "cpu"
        self.num_workers = num_workers
        self.intervals = 0

    def check(self, share: float) -> str | None:
        """The warning for this log interval's ``share`` of time waiting for data, if any."""
        self.intervals += 1
        if not self.active or self.intervals < 2 or share < self.THRESHOLD:
            return None
        self.active = False
        where = (
            "in the training process" if not self.num_workers else f"in {self.num_workers} workers"
        )
        message = (
            f"{share:.0%} of the training time went to waiting for batches (packed {where}): "
            f"raise data.num_workers (now {self.num_workers}) so that packing keeps up"
        )
        logger.warning(message)
        return message
