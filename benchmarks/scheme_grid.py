"""The paper's experiment grid at a CPU budget, on tinyshakespeare and PTB characters.

    python benchmarks/scheme_grid.py --out /tmp/scheme-grid [--steps 200 --repeats 2]

Two `rnnlab experiment grid` runs (each continues where an earlier one stopped):
1. architectures (r x γ in {1,2} x {128}, schemes 1 and 2) and schemes (1-4 at 1x128) on both corpora,
   k1 in {20, 100}, `--repeats` seeds each;
2. k2 in {20, 60, 100} with k1 = k2, 2k2/3, k2/3 for every scheme on PTB characters, one seed.
Prints the wall time of each and where grid.md and the figures are. Run it with nothing else on the CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def grid(out: Path, *flags: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "rnnlab", "--quiet", "experiment", "grid", "--out", str(out), *flags],
                   check=True)
    return (time.monotonic() - started) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=DATA, help="the shared corpora folder")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--test-chars", type=int, default=5000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    corpora = ["--corpus", f"tinyshakespeare={args.data / 'tinyshakespeare' / 'input.txt'}",
               "--corpus", f"ptb_char={args.data / 'ptb-char' / 'ptb.char.train.txt'}"]
    common = ["--steps", str(args.steps), "--points", str(args.points), "--test-chars", str(args.test_chars)]
    minutes = grid(args.out / "grid", *corpora, *common, "--parts", "architectures,schemes",
                   "--architectures", "1x128,2x128", "--curve-architecture", "1x128", "--k1", "20,100",
                   "--repeats", str(args.repeats))
    print(f"architectures + schemes: {minutes:.1f} minutes; {args.out / 'grid' / 'grid.md'}")
    minutes = grid(args.out / "k2", corpora[2], corpora[3], *common, "--parts", "k2", "--curve-architecture",
                   "1x128", "--k2-values", "20,60,100", "--repeats", "1")
    print(f"k2: {minutes:.1f} minutes; {args.out / 'k2' / 'grid.md'}")


if __name__ == "__main__":
    main()
