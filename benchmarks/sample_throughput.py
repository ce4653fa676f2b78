"""(b) Sampling throughput of a 2x512 LSTM (embedding 128, V = 65), through rnnlab's one sampler.

Prints characters/s, each the median of `--repeats` runs with its range (runs interleaved):
  * single stream, progressive, with the engine `rnnlab sample` uses on CPU (CpuStepEngine), with
    its default int8 weights and with exact fp32 weights (--engine-weights fp32);
  * single stream, progressive, through the model's own torch step (--no-fast), for reference;
  * 64 streams generated as one batch (--num-samples 64), counting every stream's characters;
  * single stream, windowed: every character re-reads the last 100 characters (Algorithm 4).
and the largest difference between each engine's and the fp32 model's next-character
distributions over 500 steps (stated tolerances: 1e-4 for fp32, 1e-2 for int8). With
--checkpoint, the model is that trained checkpoint (random weights give flat distributions, on
which any error looks small); it must be a 2x512 LSTM for the figures to compare.
Then each engine's speed as a ratio to the torch step measured in the same run, and where a
character's time goes (matrix products, gate math, output layer, sampling, the rest).
Targets: >= 8,000 chars/s single-stream and >= 4x the torch step, progressive >= 10x windowed.

    python benchmarks/sample_throughput.py [--repeats 5] [--length 4000] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import Timer, machine, summary

from rnnlab.config import ModelConfig, SampleConfig
from rnnlab.models.lm import RecurrentLM
from rnnlab.sampling import generate, largest_probability_gap, make_stepper


def chars_per_second(stepper, config: SampleConfig, repeats: int) -> list[float]:
    return interleaved({"only": stepper}, config, repeats)["only"]


def interleaved(steppers: dict, config: SampleConfig, repeats: int) -> dict[str, list[float]]:
    """chars/s of several steppers, measured in turn within each repeat (the machine's noise hits all)."""
    rates = {name: [] for name in steppers}
    for _ in range(repeats):
        for name, stepper in steppers.items():
            with Timer() as t:
                count = sum(1 for _ in generate(stepper, [0, 1, 2], config))
            rates[name].append(count * config.num_samples / t.seconds)
    return rates


def where_the_time_goes(engine, total_us: float, steps: int = 2000) -> list[tuple[str, float]]:
    """Microseconds per character of one stream, split: the matrix products (per layer; for the last,
    without the output layer), the gate math, the output layer's product, the sampler's draw, and the
    rest (Python, NumPy calls, state handling) as what the total leaves. Each part timed alone, in a
    loop, on the engine's own arrays, with torch kept to one thread as the sampler keeps it."""
    import time

    import numpy as np

    from rnnlab.sampling import TokenSampler

    rng = np.random.default_rng(0)
    hidden, gw = engine.hidden, engine.gate_width
    h = rng.uniform(-1, 1, (1, hidden)).astype(np.float32)
    c = rng.uniform(-1, 1, (1, hidden)).astype(np.float32)
    gates = rng.uniform(-1, 1, (1, gw)).astype(np.float32)
    h_out, c_out = np.empty_like(h), np.empty_like(c)
    last = engine.num_layers - 1
    head = engine.stacked[last][:-gw]

    def timed(work) -> float:
        work()
        started = time.perf_counter()
        for _ in range(steps):
            work()
        return (time.perf_counter() - started) / steps * 1e6

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        products = 0.0
        for k in range(engine.num_layers):
            if engine.weights == "int8":
                products += timed(lambda k=k: engine._int8_product(k, h))
            elif k < last:
                products += timed(lambda k=k: engine._product(k, h))
            else:
                recurrent = engine.stacked[last][-gw:]
                products += timed(lambda recurrent=recurrent: np.dot(recurrent, h[0]))
        gate_math = engine.num_layers * timed(lambda: engine._lstm(gates.copy(), c, h_out, c_out))
        output = timed(lambda: h @ head.T)
        sampler = TokenSampler(SampleConfig(), 1, seed=0)
        logits = torch.from_numpy(rng.normal(size=(1, engine.vocab_size)).astype(np.float32))
        drawing = timed(lambda: sampler(logits))
    finally:
        torch.set_num_threads(previous)
    parts = [("matrix products (recurrent and between layers)", products), ("gate math", gate_math),
             ("output layer", output), ("sampling the token", drawing)]
    return parts + [("the rest: Python, NumPy calls, state", max(total_us - sum(v for _, v in parts), 0.0))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--length", type=int, default=4000)
    parser.add_argument("--checkpoint", help="a trained 2x512 LSTM checkpoint (default: random weights)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        from rnnlab.training.checkpoint import load_checkpoint
        model = load_checkpoint(args.checkpoint).build_model("cpu").eval()
    else:
        model = RecurrentLM(ModelConfig(cell="lstm", num_layers=2, hidden_size=512, embedding_size=128), 65).eval()
    int8 = make_stepper(model, SampleConfig(engine_weights="int8"))
    fp32 = make_stepper(model, SampleConfig(engine_weights="fp32"))
    chosen = make_stepper(model, SampleConfig())  # the default: int8 only where its probe is within 1e-2
    gap = getattr(chosen, "probe_gap", None)
    print(f"machine: {machine()}")
    print(f"model: {model.config.num_layers}x{model.config.hidden_size} {model.config.cell.upper()}, "
          f"{model.num_parameters():,} parameters, {'trained' if args.checkpoint else 'random'} weights; "
          f"int8 engine: {int8.weights}; the default (auto) engine chose {chosen.weights}"
          f"{f' (its probe measured an int8 gap of {gap:.2e})' if gap is not None else ''}; chars/s as median (range, n)")
    single = interleaved({"int8": int8, "fp32": fp32}, SampleConfig(length=args.length), args.repeats)
    print(f"  single stream, engine int8:           {summary(single['int8'])}")
    print(f"  single stream, engine fp32:           {summary(single['fp32'])}")
    torch_step = chars_per_second(model, SampleConfig(length=max(args.length // 8, 200)), args.repeats)
    print(f"  single stream, torch model step:      {summary(torch_step)}")
    batched = interleaved({"int8": int8, "fp32": fp32}, SampleConfig(length=args.length // 4, num_samples=64),
                          args.repeats)
    print(f"  64 streams as one batch, int8:        {summary(batched['int8'])}")
    print(f"  64 streams as one batch, fp32:        {summary(batched['fp32'])}")
    windowed = chars_per_second(int8, SampleConfig(length=max(args.length // 16, 100), sampling="windowed",
                                                   window=100), args.repeats)
    print(f"  single stream, windowed (100):        {summary(windowed)}")
    print(f"progressive / windowed: {statistics.median(single['int8']) / statistics.median(windowed):.1f}x")
    for name, engine in (("int8", int8), ("fp32", fp32)):
        print(f"engine {name} vs fp32 model, largest next-character probability gap over 500 steps: "
              f"{largest_probability_gap(model, engine, [0, 1, 2], steps=500):.2e}")
    torch_rate = statistics.median(torch_step)
    for name, engine in (("int8", int8), ("fp32", fp32)):
        rate = statistics.median(single[name])
        print(f"engine {name}: {rate / torch_rate:.2f}x the torch step; where a character's "
              f"{1e6 / rate:.0f} us go (each part timed alone):")
        if model.config.cell != "lstm":
            print("  (the split is measured for LSTM engines)")
            continue
        for part, micros in where_the_time_goes(engine, 1e6 / rate):
            print(f"  {part:<48} {micros:8.1f} us  ({100 * micros * rate / 1e6:4.1f}%)")


if __name__ == "__main__":
    main()
