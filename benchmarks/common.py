"""Shared pieces of the benchmarks: machine description, the benchmark text, best-of-N timing."""

from __future__ import annotations

import os
import platform
import time


def machine() -> dict:
    import torch  # noqa: PLC0415

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def python_help_documents(repeat: int = 1) -> list[str]:
    """CPython's help topics (about 0.5 MB of English technical text), ``repeat`` times."""
    from deberta_pretrain.data.inputs import python_help_topics  # noqa: PLC0415

    return python_help_topics() * repeat


def best_time(fn, repeats: int = 3) -> float:
    """The fastest of ``repeats`` runs of ``fn()`` in seconds (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
