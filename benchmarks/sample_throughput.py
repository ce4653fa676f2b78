"""(b) Sampling throughput of a 2x512 LSTM (embedding 128, V = 65), through rnnlab's one sampler.

Prints characters/s, each the median of `--repeats` runs with its range (runs interleaved):
  * single stream, progressive, with each CPU engine: the compiled step (fast_engine: int8, int12 or
    fp16 for the first layer and int8 above, int12, fp16), the NumPy engine (cpu_engine: fbgemm int8
    and exact fp32); the one `rnnlab sample` picks by default is the fastest whose probe on this
    checkpoint is within 1e-2 (int12 is tried with AVX-512 VNNI, for 1-2 or 8+ streams);
  * single stream, progressive, through the model's own torch step (--no-fast), for reference;
  * 64 streams generated as one batch (--num-samples 64), counting every stream's characters;
  * single stream, windowed: every character re-reads the last 100 characters (Algorithm 4).
and the largest difference between each engine's and the fp32 model's next-character
distributions over 500 steps (tolerance 1e-2; fp32 1e-4). With --checkpoint, the model is that
trained checkpoint (random weights give flat distributions, on which any error looks small); it
must be a 2x512 LSTM for the figures to compare.
Then each engine's speed as a ratio to the torch step measured in the same run, and where a
character's time goes: for the compiled step its own timers (rounding the inputs, matrix products,
gate math, output layer), the sampler's draw timed alone, and the rest (Python) as what the total
leaves; for the NumPy engine each part timed alone.
Targets: >= 8,000 chars/s single-stream and >= 4x the torch step; 64 streams >= 60,000 chars/s;
progressive >= 10x windowed.

    python benchmarks/sample_throughput.py [--repeats 5] [--length 4000] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import Timer, machine, summary

from rnnlab.config import ModelConfig, SampleConfig
from rnnlab.models.lm import RecurrentLM
from rnnlab.sampling import generate, largest_probability_gap, make_stepper, stepper_name


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


def compiled_split(engine, rate: float, length: int, streams: int = 1) -> list[tuple[str, float]]:
    """Microseconds per step of the compiled engine, from its own timers over one generation."""
    from rnnlab.sampling import TokenSampler

    engine.profile(True)
    sum(1 for _ in generate(engine, [0, 1, 2], SampleConfig(length=length, num_samples=streams)))
    spent = engine.profile(False)
    parts = [(f"compiled: {name}", seconds / length * 1e6) for name, seconds in spent.items()]
    import time

    import numpy as np
    sampler = TokenSampler(SampleConfig(), streams, seed=0)
    logits = np.random.default_rng(0).normal(size=(streams, engine.vocab_size)).astype(np.float32)
    sampler(logits)
    started = time.perf_counter()
    for _ in range(2000):
        sampler(logits)
    parts.append(("sampling the token (NumPy)", (time.perf_counter() - started) / 2000 * 1e6))
    total = 1e6 * streams / rate
    return parts + [("the rest: Python (generate, step wrapper)", max(total - sum(v for _, v in parts), 0.0))]


def print_split(parts, rate: float, streams: int = 1) -> None:
    per_step = 1e6 * streams / rate
    for part, micros in parts:
        print(f"  {part:<48} {micros:8.1f} us  ({100 * micros / per_step:4.1f}%)")


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
    from rnnlab.models import fast_engine
    from rnnlab.models.cpu_engine import step_engine

    engines = {}
    if fast_engine.supports(model):  # every rung the default may choose (with int12 or without), fastest first
        layers = model.layers.num_layers
        for weights in fast_engine.weight_ladder(layers, int12=True) + fast_engine.weight_ladder(layers)[1:-1]:
            engine = fast_engine.FastStepEngine(model, weights)
            engines[f"compiled {engine.weights}"] = engine
    engines["numpy int8"] = step_engine(model, "int8")
    engines["numpy fp32"] = step_engine(model, "fp32")
    chosen = make_stepper(model, SampleConfig())  # the default: the fastest within 1e-2 on this checkpoint
    chosen_many = make_stepper(model, SampleConfig(num_samples=64))  # (int12 is not tried for many streams)
    gaps = ", ".join(f"{w} {g:.2e}" for w, g in getattr(chosen, "probe_gaps", {}).items())
    print(f"machine: {machine()}")
    print(f"compiled step: {'kernels ' + fast_engine.cpu_kernels() if fast_engine.available() else 'not built'}; "
          f"torch threads: {torch.get_num_threads()}")
    print(f"model: {model.config.num_layers}x{model.config.hidden_size} {model.config.cell.upper()}, "
          f"{model.num_parameters():,} parameters, {'trained' if args.checkpoint else 'random'} weights; "
          f"the default (auto) engine chose {stepper_name(chosen)} (probe gaps: {gaps or 'none'}), for 64 "
          f"streams {stepper_name(chosen_many)}; chars/s as median (range, n)")
    single = interleaved(engines, SampleConfig(length=args.length), args.repeats)
    for name in engines:
        print(f"  single stream, {name + ':':<24} {summary(single[name])}")
    torch_step = chars_per_second(model, SampleConfig(length=max(args.length // 8, 200)), args.repeats)
    print(f"  single stream, {'torch model step:':<24} {summary(torch_step)}")
    batched = interleaved(engines, SampleConfig(length=args.length // 4, num_samples=64), args.repeats)
    for name in engines:
        print(f"  64 streams, {name + ':':<27} {summary(batched[name])}")
    default_name = next((n for n, e in engines.items() if stepper_name(e) == stepper_name(chosen)), "numpy fp32")
    many_name = next((n for n, e in engines.items() if stepper_name(e) == stepper_name(chosen_many)), "numpy fp32")
    windowed = chars_per_second(engines[default_name], SampleConfig(length=max(args.length // 16, 100),
                                                                    sampling="windowed", window=100), args.repeats)
    print(f"  single stream, windowed (100), {default_name}: {summary(windowed)}")
    print(f"progressive / windowed ({default_name}): "
          f"{statistics.median(single[default_name]) / statistics.median(windowed):.1f}x")
    for name, engine in engines.items():
        print(f"engine {name} vs fp32 model, largest next-character probability gap over 500 steps: "
              f"{largest_probability_gap(model, engine, [0, 1, 2], steps=500):.2e}")
    torch_rate = statistics.median(torch_step)
    print(f"the default engine ({default_name}): {statistics.median(single[default_name]) / torch_rate:.2f}x the "
          f"torch step single stream; for 64 streams ({many_name}): {statistics.median(batched[many_name]):,.0f} "
          f"chars/s")
    for name, engine in engines.items():
        rate = statistics.median(single[name])
        print(f"engine {name}: {rate / torch_rate:.2f}x the torch step; where a character's {1e6 / rate:.0f} us go:")
        if name.startswith("compiled"):
            print_split(compiled_split(engine, rate, max(args.length // 2, 500)), rate)
            batch_rate = statistics.median(batched[name])
            print(f"  ... and a step of 64 streams ({64e6 / batch_rate:.0f} us):")
            print_split(compiled_split(engine, batch_rate, max(args.length // 16, 100), 64), batch_rate, 64)
        elif model.config.cell == "lstm":
            print_split(where_the_time_goes(engine, 1e6 / rate), rate)


if __name__ == "__main__":
    main()
