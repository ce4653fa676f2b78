"""(d) Peak memory of `rnnlab prepare` on a generated 200 MB text (target: <= 250 MB peak RSS).

The text is tinyshakespeare repeated, with a few multi-byte characters mixed in, written to a
temporary folder; `rnnlab prepare` runs in a child process whose peak RSS (ru_maxrss) is printed
next to the file size. The baseline, a child that only imports rnnlab, is printed too.

    python benchmarks/prepare_memory.py [--megabytes 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine

from rnnlab.data.text import embedded_corpus_path


def child_peak_rss_mb(argv: list[str]) -> tuple[float, float]:
    """Run a command in a fresh process; return its peak RSS in MB and its wall time."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:]); "
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024; "
            "print(peak, time.perf_counter() - t, r.returncode)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout
    peak, seconds, returncode = out.split()[-3:]
    if returncode != "0":
        raise SystemExit(f"command failed: {' '.join(argv)}")
    return float(peak), float(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    base = embedded_corpus_path().read_text(encoding="utf-8") + "Ünïcödé — ✓ 🎭\n"
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "big.txt"
        with open(path, "w", encoding="utf-8") as handle:
            written = 0
            while written < args.megabytes * 1_000_000:
                handle.write(base)
                written += len(base.encode("utf-8"))
        size = path.stat().st_size
        print(f"machine: {machine()}")
        baseline, _ = child_peak_rss_mb([sys.executable, "-c", "import rnnlab.cli"])
        print(f"baseline (python -c 'import rnnlab.cli'): peak RSS {baseline:.0f} MB")
        peak, seconds = child_peak_rss_mb([sys.executable, "-m", "rnnlab", "prepare", str(path),
                                           "--cache-dir", str(Path(scratch) / "cache")])
        print(f"rnnlab prepare on {size / 1e6:.0f} MB: peak RSS {peak:.0f} MB, {seconds:.1f} s "
              f"(target <= 250 MB)")


if __name__ == "__main__":
    main()
