"""(b) Sampling throughput of a 2x512 LSTM (embedding 128, V = 65), through rnnlab's one sampler.

Prints characters/s, each the median of `--repeats` runs with its range:
  * single stream, progressive, with the engine `rnnlab sample` uses on CPU (CpuStepEngine);
  * single stream, progressive, through the model's own torch step (--no-fast), for reference;
  * 64 streams generated as one batch (--num-samples 64), counting every stream's characters;
  * single stream, windowed: every character re-reads the last 100 characters (Algorithm 4).
and the largest difference between the fast engine's and the fp32 model's next-character
distributions over 500 steps (the stated tolerance is 1e-4 in probability).
Targets: >= 8,000 chars/s single-stream, progressive >= 10x windowed.

    python benchmarks/sample_throughput.py [--repeats 5] [--length 4000]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import Timer, machine, summary

from rnnlab.config import ModelConfig, SampleConfig
from rnnlab.models.lm import RecurrentLM
from rnnlab.sampling import generate, make_stepper, start


def chars_per_second(stepper, config: SampleConfig, repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        with Timer() as t:
            count = sum(1 for _ in generate(stepper, [0, 1, 2], config))
        rates.append(count * config.num_samples / t.seconds)
    return rates


@torch.inference_mode()
def largest_probability_gap(model, engine, steps=500) -> float:
    gap = 0.0
    logits_a, state_a = start(model, [0, 1, 2], 1)
    logits_b, state_b = start(engine, [0, 1, 2], 1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        pa, pb = torch.softmax(logits_a.float(), -1), torch.softmax(logits_b.float(), -1)
        gap = max(gap, (pa - pb).abs().max().item())
        token = torch.multinomial(pa, 1, generator=generator)[:, 0]
        logits_a, state_a = model.step(token, state_a)
        logits_b, state_b = engine.step(token, state_b)
    return gap


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--length", type=int, default=4000)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(cell="lstm", num_layers=2, hidden_size=512, embedding_size=128), 65).eval()
    fast = make_stepper(model, SampleConfig())
    print(f"machine: {machine()}")
    print(f"model: 2x512 LSTM, {model.num_parameters():,} parameters; chars/s as median (range, n)")
    single = chars_per_second(fast, SampleConfig(length=args.length), args.repeats)
    print(f"  single stream, fast engine:      {summary(single)}")
    torch_step = chars_per_second(model, SampleConfig(length=max(args.length // 8, 200)), args.repeats)
    print(f"  single stream, torch model step: {summary(torch_step)}")
    batched = chars_per_second(fast, SampleConfig(length=args.length // 4, num_samples=64), args.repeats)
    print(f"  64 streams as one batch:         {summary(batched)}")
    windowed = chars_per_second(fast, SampleConfig(length=max(args.length // 16, 100), sampling="windowed",
                                                   window=100), args.repeats)
    print(f"  single stream, windowed (100):   {summary(windowed)}")
    print(f"progressive / windowed: {statistics.median(single) / statistics.median(windowed):.1f}x")
    print(f"fast engine vs fp32 model, largest next-character probability gap over 500 steps: "
          f"{largest_probability_gap(model, fast):.2e}")


if __name__ == "__main__":
    main()
