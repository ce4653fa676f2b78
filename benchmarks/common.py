"""Helpers shared by the benchmark scripts: repeated timing, medians and spreads, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"python {platform.python_version()}")


def summary(values: list[float]) -> str:
    """median (min-max, n) — the figure to quote and its spread."""
    return f"{statistics.median(values):,.0f} (range {min(values):,.0f}-{max(values):,.0f}, n={len(values)})"


def rate(work: float, seconds: float) -> float:
    return work / seconds


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
