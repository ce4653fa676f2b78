"""The compiled step's kernel sets on this CPU: chars/s of one stream and of 64 streams for each kernel set
the CPU can run (forced with FastStepEngine(kernels=...)), each weight layout of a 2-layer model (int8,
int12 or fp16 for the first layer and int8 above, int12, fp16), median of 3 runs through the one sampler.
A hint of what CPUs without AMX, AVX-512 or AVX2 get.

    python benchmarks/kernel_sets.py --checkpoint DIR   # a trained 2x512 LSTM
"""

from __future__ import annotations

import argparse
import statistics

from common import Timer, machine

from rnnlab.config import SampleConfig
from rnnlab.models import fast_engine
from rnnlab.sampling import generate
from rnnlab.training.checkpoint import load_checkpoint

KERNEL_SETS = ("amx", "avx512vnni", "avx512", "avx2", "generic")


def rate(engine, streams: int, length: int) -> float:
    runs = []
    for _ in range(3):
        with Timer() as t:
            count = sum(1 for _ in generate(engine, [0], SampleConfig(length=length, num_samples=streams)))
        runs.append(count * streams / t.seconds)
    return statistics.median(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint).build_model("cpu").eval()
    best = fast_engine.cpu_kernels()
    print(f"machine: {machine()}; this CPU's kernels: {best}")
    for kernels in KERNEL_SETS[KERNEL_SETS.index(best):] if best in KERNEL_SETS else ["generic"]:
        layers = model.layers.num_layers
        row = []
        for weights in fast_engine.weight_ladder(layers, int12=True) + fast_engine.weight_ladder(layers)[1:-1]:
            engine = fast_engine.FastStepEngine(model, weights, kernels)
            # (the portable kernels widen fp16 in software on x86; int12 outside VNNI is portable C)
            slow = kernels == "generic" or ("int12" in weights and kernels not in ("amx", "avx512vnni"))
            row.append(f"{engine.weights} 1 / 64 streams: {rate(engine, 1, 300 if slow else 2000):,.0f} / "
                       f"{rate(engine, 64, 20 if slow else 200):,.0f}")
        print(f"{kernels}: " + "; ".join(row), flush=True)


if __name__ == "__main__":
    main()
