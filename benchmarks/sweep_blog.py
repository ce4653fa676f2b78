"""The blog's odyssey on tinyshakespeare: a sweep of the built-in blog space, then its best configuration
against the default preset at the same training budget, both trained in this same run of the machine.

    python benchmarks/sweep_blog.py --out /tmp/sweep-blog [--trials 16 --trial-minutes 3 --minutes 6 --repeats 2]

1. `rnnlab sweep --space blog --trials N --trial-minutes T` (TPE, median pruning: the defaults);
2. `rnnlab train --max-minutes M` (the README's main job) and `rnnlab train --config DIR/best.toml
   --max-minutes M`, alternated `--repeats` times so both see the same machine.
Prints each run's best validation loss and the ratio best/default per repeat, with the median. Run
it with nothing else on the CPU. A sweep already in --out is continued, not redone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402


def rnnlab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rnnlab", "--quiet", *args], check=True)


def best_val_loss(folder: Path) -> tuple[float, int]:
    """(the run's best validation loss in nats/char, its steps) from its run log."""
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    vals = [r for r in records if r.get("event") == "val"]
    return min(r["val_loss"] for r in vals), vals[-1]["step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--trial-minutes", type=float, default=3.0)
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget of the comparison")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    sweep = args.out / "sweep"
    started = time.monotonic()
    rnnlab("sweep", "--space", "blog", "--trials", str(args.trials), "--trial-minutes", str(args.trial_minutes),
           "--out", str(sweep))
    print(f"sweep: {args.trials} trials of {args.trial_minutes:g} minutes in {(time.monotonic() - started) / 60:.1f} "
          f"minutes; report: {sweep / 'report.md'}")
    print((sweep / "best.toml").read_text(encoding="utf-8").splitlines()[0])
    ratios = []
    for repeat in range(args.repeats):
        losses = {}
        for name, preset in (("default", []), ("best", ["--config", str(sweep / "best.toml")])):
            folder = args.out / f"{name}-{repeat}"
            rnnlab("train", *preset, "--max-minutes", str(args.minutes), "--checkpoint-dir", str(folder),
                   "--overwrite", "--sample-length", "0", "--no-progress")
            losses[name] = best_val_loss(folder)
            print(f"repeat {repeat}: {name}: best val loss {losses[name][0]:.4f} nats/char "
                  f"({losses[name][0] / 0.693147:.4f} bits/char) after {losses[name][1]} steps")
        ratios.append(losses["best"][0] / losses["default"][0])
        print(f"repeat {repeat}: val loss best/default = {ratios[-1]:.4f}")
    print(f"median ratio best/default over {len(ratios)} repeats: {statistics.median(ratios):.4f} "
          f"(range {min(ratios):.4f}-{max(ratios):.4f})")


if __name__ == "__main__":
    main()
