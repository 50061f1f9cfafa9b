"""Whether ``torch.compile`` (inductor) can run here, for the options that use it
(``trainer.compile``, ``GenerationConfig.compile_step``): both fall back to eager, with a log
line saying why, where it cannot."""

from __future__ import annotations

import os
import shutil
import sys


def compile_unavailable(device_type: str) -> str | None:
    """Why inductor cannot compile for ``device_type`` here, or None when it can.

    Windows: inductor's support there is partial. CPU: it builds C++ kernels, so it needs a
    C++ compiler (``$CXX`` or ``c++`` / ``g++`` / ``clang++`` on PATH). GPUs compile with
    Triton, which ships with torch's CUDA wheels but does not run on every GPU.
    """
    if sys.platform == "win32":
        return "torch.compile is not supported on Windows by this project"
    if device_type == "cpu":
        candidates = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
        if not any(c and shutil.which(c) for c in candidates):
            return "no C++ compiler found (set $CXX or install g++), which inductor needs on CPU"
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton cannot compile for this GPU (is triton installed? is the GPU supported?)"
    return None
