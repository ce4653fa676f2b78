"""Corpora larger than RAM: peak RSS of `prepare`, `train` (200 steps) and `eval` on a generated 2 GB
text against the same commands on a 20 MB text (target: none more than 300 MB above), and a word-level
`prepare` of a 500 MB text (peak RSS and time).

The texts are sentences drawn (seeded) from a 2,000-word vocabulary with some punctuation and
multi-byte characters, written to --folder (default: a temporary folder; 2.5 GB of disk). Each
command runs in its own child process; its peak RSS is ru_maxrss (which counts the memory-mapped
token pages the command touched). Training is a small model (1x64) validating 2,000 tokens, with
--val-frac 0.001, so the figures measure what reading the corpus costs rather than the model.

    python benchmarks/large_corpus.py [--gigabytes 2] [--small-megabytes 20] [--word-megabytes 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine
from prepare_memory import child_peak_rss_mb

TARGET_MB = 300


def generate_text(path: Path, megabytes: float, seed: int = 0) -> None:
    """About `megabytes` of sentence-like UTF-8 text, written in chunks (never held whole)."""
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyzéüß")
    words = ["".join(rng.choice(letters, size=rng.integers(2, 9))) for _ in range(2000)]
    ranks = 1.0 / np.arange(1, len(words) + 1)  # (Zipf-like: a few words are frequent)
    weights = ranks / ranks.sum()
    target = int(megabytes * 1e6)
    with open(path, "w", encoding="utf-8") as handle:
        written = 0
        while written < target:
            picks = rng.choice(len(words), size=200_000, p=weights)
            lines = [" ".join(words[i] for i in picks[j:j + 12]) + (". " if j % 96 else ".\n")
                     for j in range(0, len(picks), 12)]
            chunk = "".join(lines)
            handle.write(chunk)
            written += len(chunk.encode("utf-8"))


def rnnlab(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "rnnlab", "--quiet", *args]


def measure(text: Path, work: Path) -> dict[str, tuple[float, float]]:
    cache, folder = work / f"cache-{text.stem}", work / f"ck-{text.stem}"
    common = ["--cache-dir", str(cache), "--val-frac", "0.001", "--test-frac", "0.001"]
    figures = {"prepare": child_peak_rss_mb(rnnlab("prepare", str(text), *common))}
    figures["train"] = child_peak_rss_mb(rnnlab(
        "train", str(text), *common, "--checkpoint-dir", str(folder), "--overwrite", "--hidden-size", "64",
        "--num-layers", "1", "--embedding-size", "16", "--batch-size", "16", "--seq-length", "64",
        "--max-steps", "200", "--eval-every", "100", "--eval-tokens", "2000", "--sample-length", "0",
        "--no-progress", "--threads", "1"))
    figures["eval"] = child_peak_rss_mb(rnnlab("eval", str(folder), "--split", "val"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--small-megabytes", type=float, default=20.0)
    parser.add_argument("--word-megabytes", type=float, default=500.0)
    parser.add_argument("--folder", default=None, help="where the texts go (default: a temporary folder)")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        work = Path(tmp)
        small, large = work / "small.txt", work / "large.txt"
        started = time.perf_counter()
        generate_text(small, args.small_megabytes, seed=1)
        generate_text(large, args.gigabytes * 1000, seed=2)
        print(f"texts: {small.stat().st_size / 1e6:,.0f} MB and {large.stat().st_size / 1e6:,.0f} MB "
              f"(generated in {time.perf_counter() - started:.0f} s)")
        baseline = child_peak_rss_mb(rnnlab("--version"))
        print(f"baseline (python -m rnnlab --version): peak RSS {baseline[0]:.0f} MB")
        figures = {name: measure(path, work) for name, path in (("small", small), ("large", large))}
        print(f"\n| command | peak RSS, {args.small_megabytes:g} MB text | peak RSS, {args.gigabytes:g} GB text | "
              f"difference (target <= {TARGET_MB} MB) | time, large |")
        print("| --- | --- | --- | --- | --- |")
        for command in ("prepare", "train", "eval"):
            (a, _), (b, seconds) = figures["small"][command], figures["large"][command]
            verdict = "met" if b - a <= TARGET_MB else "NOT met"
            print(f"| {command} | {a:,.0f} MB | {b:,.0f} MB | {b - a:+,.0f} MB ({verdict}) | {seconds:,.0f} s |")
        small.unlink()
        large.unlink()
        words = work / "words.txt"
        generate_text(words, args.word_megabytes, seed=3)
        peak, seconds = child_peak_rss_mb(rnnlab("prepare", str(words), "--tokenizer", "word", "--cache-dir",
                                                 str(work / "cache-words")))
        print(f"\nword-level prepare of {words.stat().st_size / 1e6:,.0f} MB: peak RSS {peak:,.0f} MB, {seconds:,.0f} s")


if __name__ == "__main__":
    main()
