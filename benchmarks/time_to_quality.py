"""(c) Time to quality: the default CPU preset on tinyshakespeare for a fixed wall-clock budget.

Runs `rnnlab train --val-frac 0.1 --test-frac 0 --max-minutes 6` (val = the last 10%, as nanoGPT's
shakespeare_char) with every other setting at its default, then prints the best validation loss
in nats/char. Target: <= 1.47 after 6 minutes on this machine.

    python benchmarks/time_to_quality.py [--minutes 6] [--out bench-out/ttq] [-- extra rnnlab train flags]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import machine


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--out", default="bench-out/time-to-quality")
    parser.add_argument("extra", nargs="*", help="extra flags for rnnlab train (after --)")
    args = parser.parse_args()
    out = Path(args.out)
    command = [sys.executable, "-m", "rnnlab", "--quiet", "train", "--val-frac", "0.1", "--test-frac", "0",
               "--max-minutes", str(args.minutes), "--checkpoint-dir", str(out), "--sample-length", "0",
               *args.extra]
    print(f"machine: {machine()}")
    print("command:", " ".join(command[1:]))
    subprocess.run(command, check=True)
    vals = [json.loads(line) for line in open(out / "log.jsonl") if '"event": "val"' in line]
    best = min(v["val_loss"] for v in vals)
    last = vals[-1]
    print(f"best val loss {best:.4f} nats/char ({best / 0.6931471805599453:.4f} bits/char); last at step "
          f"{last['step']}, epoch {last['epoch']:.2f}, {last['elapsed'] / 60:.1f} min (target <= 1.47)")


if __name__ == "__main__":
    main()
