"""Data-parallel scaling on this machine: training tokens/s of 1 vs 2 CPU ranks (gloo, one thread each)
for the default 2x512 char LSTM, and the all-reduce's share of a 2-rank step.

* 1 rank, batch 16 (one process, --threads 1): the baseline.
* 2 ranks x 16 (global batch 32: each rank the baseline's work, "weak scaling") and 2 ranks x 8 (global
  batch 16, the baseline's batch split in two, "strong scaling"), each `python -m rnnlab train` with
  torchrun's environment, tokens/s of all ranks together as the run log reports it.
* The all-reduce's share: in 2 spawned ranks, the same training steps timed with DDP's gradient
  all-reduce and under DDP's no_sync() (no all-reduce); share = 1 - t(no_sync) / t(with).

Every figure is the median of --repeats runs with its range; tokens/s is each run's mean after its first
--warmup steps. Caveat: the 2 cores share one memory bus and cache, so 2 ranks on them cannot reach 2x
whatever the all-reduce costs.

    python benchmarks/ddp_scaling.py [--repeats 3] [--steps 60] [--device cuda]

With --device cuda (a machine with GPUs), each rank trains on its own GPU with NCCL (2 ranks need 2 GPUs;
on one GPU only the 1-rank figure is measured); the --preset option times another preset (e.g.
word_ptb_awd_lstm with --data pointing at PTB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, summary


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_environment(rank: int, world: int, port: int) -> dict:
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}


def run_tokens_per_second(folder: Path, world: int, batch: int, steps: int, warmup: int, extra: list[str]) -> float:
    args = [sys.executable, "-m", "rnnlab", "--quiet", "train", *extra, "--checkpoint-dir", str(folder), "--overwrite",
            "--batch-size", str(batch), "--max-steps", str(steps), "--eval-every", str(10 * steps),
            "--log-every", "5", "--threads", "1", "--sample-length", "0", "--no-progress", "--eval-tokens", "2048"]
    port = free_port()
    environments = [rank_environment(r, world, port) for r in range(world)] if world > 1 else \
        [{**os.environ, "OMP_NUM_THREADS": "1"}]
    processes = [subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL) for env in environments]
    if any(p.wait() for p in processes):
        raise SystemExit(f"a run failed: {' '.join(args)}")
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    rates = [r["tokens_per_s"] for r in records if r["event"] == "train" and r["step"] > warmup]
    return statistics.fmean(rates)


def _allreduce_share_worker(rank: int, port: int, steps: int, folder: str, queue, device: str) -> None:
    os.environ.update({k: v for k, v in rank_environment(rank, 2, port).items() if k in (
        "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")})
    import torch

    from rnnlab.training.distributed import leave_process_group
    from rnnlab.training.loop import train_batch
    from rnnlab.training.run import resolve_run

    torch.set_num_threads(1)
    run = resolve_run(None, {"train": {"checkpoint_dir": f"{folder}/{rank}", "overwrite": True, "threads": 1,
                                       "device": device}})
    run.model.train()

    def timed(context) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            with context():
                train_batch(run, 0.0)
        return time.perf_counter() - start

    import contextlib

    timed(contextlib.nullcontext)  # (warm-up)
    with_all_reduce = timed(contextlib.nullcontext)
    without = timed(run.step.forward.no_sync)
    if rank == 0:
        queue.put((with_all_reduce, without))
    leave_process_group()


def allreduce_share(steps: int, device: str) -> tuple[float, float, float]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        workers = [context.Process(target=_allreduce_share_worker, args=(r, port, steps, folder, queue, device))
                   for r in range(2)]
        for w in workers:
            w.start()
        with_all_reduce, without = queue.get(timeout=600)
        for w in workers:
            w.join()
    return 1.0 - without / with_all_reduce, with_all_reduce / steps, without / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--preset", default=None, help="a preset to time instead of the default model")
    parser.add_argument("--data", default=None, help="its corpus (default: the embedded one)")
    args = parser.parse_args()
    print(machine())
    extra = ["--device", args.device] + (["--config", args.preset] if args.preset else []) + \
        ([args.data] if args.data else [])
    two = args.device == "cpu" or __import__("torch").cuda.device_count() >= 2
    cases = {"1 rank x 16": (1, 16)}
    if two:
        cases.update({"2 ranks x 16 (global 32)": (2, 16), "2 ranks x 8 (global 16)": (2, 8)})
    rates = {name: [] for name in cases}
    shares = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # (cases interleaved: the machine's noise hits all)
            for name, (world, batch) in cases.items():
                rates[name].append(run_tokens_per_second(Path(tmp) / f"run{repeat}", world, batch, args.steps,
                                                         args.warmup, extra))
            if two:
                shares.append(allreduce_share(max(10, args.steps // 3), args.device))
    base = statistics.median(rates["1 rank x 16"])
    print("\n| run | training tokens/s (all ranks) | ratio to 1 rank |")
    print("| --- | --- | --- |")
    for name, values in rates.items():
        print(f"| {name} | {summary(values)} | {statistics.median(values) / base:.2f}x |")
    if not shares:
        return
    share = [s[0] for s in shares]
    print(f"\nall-reduce share of a 2-rank step (2x512 LSTM, batch 16 per rank): median {statistics.median(share):.1%} "
          f"(range {min(share):.1%}-{max(share):.1%}); step {statistics.median([s[1] for s in shares]) * 1e3:.0f} ms "
          f"with it, {statistics.median([s[2] for s in shares]) * 1e3:.0f} ms without")


if __name__ == "__main__":
    main()
