"""Novelty on a big corpus: the time and peak memory of indexing a 100 MB training text, and of checking
a 10,000-character sample against it (cold: index built; warm: index read from the cache).

    python benchmarks/novelty.py --checkpoint /tmp/s512 [--megabytes 100]

The text is tinyshakespeare's lines shuffled (seeded) until it reaches the size. Each phase runs in
its own process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

PHASE = """
import resource, sys, time
from pathlib import Path
from rnnlab.novelty import build_index, novelty
started = time.perf_counter()
index = build_index(Path(sys.argv[1]), Path(sys.argv[2]))
built = time.perf_counter() - started
sample = Path(sys.argv[3]).read_text(encoding="utf-8")
started = time.perf_counter()
report = novelty(index, sample, (10, 20, 50))
checked = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{built:.1f} {checked:.2f} {peak:.0f} {len(report.longest)} {report.shares[20]:.3f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the model whose sample is checked")
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    from rnnlab.data.text import embedded_corpus_path

    print(f"machine: {machine()}")
    lines = embedded_corpus_path().read_text(encoding="utf-8").splitlines(keepends=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        rng, size, chunks = random.Random(0), 0, []
        while size < args.megabytes * 2 ** 20:
            rng.shuffle(lines)
            chunk = "".join(lines)
            chunks.append(chunk)
            size += len(chunk.encode("utf-8"))
        (scratch / "big.txt").write_text("".join(chunks), encoding="utf-8")
        sample = scratch / "sample.txt"
        subprocess.run([sys.executable, "-m", "rnnlab", "--quiet", "sample", args.checkpoint, "--length", "10000",
                        "--seed", "1"], stdout=open(sample, "w", encoding="utf-8"), check=True)
        print(f"text: {size / 2 ** 20:.0f} MB; sample: {len(sample.read_text(encoding='utf-8')):,} characters")
        for phase in ("cold (builds the index)", "warm (reads the cached index)"):
            done = subprocess.run([sys.executable, "-c", PHASE, str(scratch / "big.txt"), str(scratch / "cache"),
                                   str(sample)], capture_output=True, text=True, check=True)
            built, checked, peak, longest, share = done.stdout.split()
            print(f"{phase}: index {built} s, check {checked} s, peak RSS {peak} MB; longest copied span "
                  f"{longest} characters, 20-grams found {float(share):.1%}")


if __name__ == "__main__":
    main()
