"""QRNN vs LSTM at equal size: training tokens/s and sampling chars/s, in one process.

Both: embedding 128 -> 2 layers x 512 -> linear, V = 65; training on random batches of 32 x 128
with Adam through `TrainingStep` (fp32 and bf16 autocast); sampling a single stream through
`rnnlab.sampling.generate` with the stepper `rnnlab sample` would use (the NumPy step engines,
int8: `CpuStepEngine` for the LSTM, `QrnnStepEngine` for the QRNN). Alternating repeats; medians
with ranges. Last, the QRNN pooling alone: `linear_scan` (forward + backward, one 32 x 128 x 512 layer) against the
per-time-step loop it is tested against.

    python benchmarks/qrnn_vs_lstm.py [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
from common import Timer, machine, summary

from rnnlab.config import ModelConfig, SampleConfig, TrainConfig
from rnnlab.models.lm import RecurrentLM
from rnnlab.models.qrnn import linear_scan, reference_pool
from rnnlab.sampling import generate, make_stepper
from rnnlab.training.optim import build_optimizer
from rnnlab.training.step import TrainingStep

BATCH, SEQ, STEPS = 32, 128, 6


def model(cell: str) -> RecurrentLM:
    torch.manual_seed(0)
    return RecurrentLM(ModelConfig(cell=cell, num_layers=2, hidden_size=512, embedding_size=128, dropout=0.0), 65)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    batches = [(torch.randint(0, 65, (BATCH, SEQ)), torch.randint(0, 65, (BATCH, SEQ))) for _ in range(STEPS)]
    runs = {}
    for cell in ("lstm", "qrnn"):
        for precision in ("fp32", "bf16"):
            m = model(cell)
            step = TrainingStep(m, build_optimizer(m.parameters(), TrainConfig(), torch.device("cpu")), precision,
                                5.0, torch.device("cpu"))
            runs[f"{cell} {precision}"] = step
            print(f"{cell}: {m.num_parameters():,} parameters") if precision == "fp32" else None
    rates = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, step in runs.items():
            state = None
            with Timer() as t:
                for x, y in batches:
                    loss, state = step(x, y, state)
                    loss.item()
            rates[name].append(BATCH * SEQ * STEPS / t.seconds)
    print("\ntraining tokens/s, median (range):")
    for name, values in rates.items():
        print(f"  {name:10s} {summary(values)}")
    sampling = {cell: [] for cell in ("lstm", "qrnn")}
    steppers = {cell: make_stepper(model(cell).eval(), SampleConfig()) for cell in sampling}
    for _ in range(args.repeats):
        for cell, stepper in steppers.items():
            with Timer() as t:
                count = sum(1 for _ in generate(stepper, [1, 2, 3], SampleConfig(length=1000)))
            sampling[cell].append(count / t.seconds)
    print("\nsampling chars/s (single stream), median (range):")
    for cell, values in sampling.items():
        print(f"  {cell:10s} {summary(values)}  ({type(steppers[cell]).__name__})")
    time_pooling(args.repeats)


def time_pooling(repeats: int):
    torch.manual_seed(0)
    a = torch.sigmoid(torch.randn(BATCH, SEQ, 512)).requires_grad_()
    b = torch.randn(BATCH, SEQ, 512).requires_grad_()
    c0 = torch.randn(BATCH, 512).requires_grad_()
    weights = torch.randn(BATCH, SEQ, 512)
    times = {"linear_scan": [], "reference loop": []}
    for _ in range(repeats):
        for name, pool in (("linear_scan", linear_scan), ("reference loop", reference_pool)):
            with Timer() as t:
                (pool(a, b, c0) * weights).sum().backward()
            times[name].append(t.seconds * 1000)
    error = (linear_scan(a, b, c0) - reference_pool(a, b, c0)).abs().max().item()
    print(f"\nQRNN pooling, forward + backward of one {BATCH} x {SEQ} x 512 layer, ms, median (range):")
    for name, values in times.items():
        print(f"  {name:15s} {summary(values)}")
    print(f"  largest difference between the two: {error:.1e}")


if __name__ == "__main__":
    main()
