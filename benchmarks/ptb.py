"""Penn Treebank benchmarks: word-level AWD-LSTM (CPU preset), its regularizer ablation, char-level
bits per character, and bf16 vs fp32 training speed. Not a test: it trains for real.

    python benchmarks/ptb.py word      --data ../shared/data/ptb      [--epochs 6]
    python benchmarks/ptb.py ablation  --data ../shared/data/ptb      [--epochs 1]
    python benchmarks/ptb.py char      --data ../shared/data/ptb-char [--epochs 2]
    python benchmarks/ptb.py precision --data ../shared/data/ptb      [--steps 30 --repeats 3]

Budgets are stated in epochs (optimizer steps follow from them), so a figure does not depend on
how busy the machine was; the wall time each run took is printed next to it. Test perplexity is
scored on ptb.test.txt with 10 parallel streams of 70 tokens, the state carried across chunks.
Every run prints one JSON line, then a Markdown table row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from rnnlab.config import build_run_config  # noqa: E402
from rnnlab.data.corpus import prepare_from_config  # noqa: E402
from rnnlab.evaluation import evaluate_tokens  # noqa: E402
from rnnlab.training.checkpoint import load_checkpoint  # noqa: E402
from rnnlab.training.loop import train, train_batch  # noqa: E402
from rnnlab.training.run import resolve_run  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
WORD_PRESET = CONFIGS / "word_ptb_awd_lstm_cpu.toml"
CHAR_PRESET = CONFIGS / "char_ptb_awd_lstm_cpu.toml"
# Each row of the ablation switches one regularizer of the CPU preset off.
ABLATIONS = {
    "all regularizers (preset)": {},
    "no embedding dropout": {"dropout_embedding": 0.0},
    "no input dropout": {"dropout_input": 0.0},
    "no hidden (between-layer) dropout": {"dropout_hidden": 0.0},
    "no output dropout": {"dropout_output": 0.0},
    "no weight drop": {"weight_drop": 0.0},
    "no AR": {"activation_regularization": 0.0},
    "no TAR": {"temporal_activation_regularization": 0.0},
    "none of them": {"dropout_embedding": 0.0, "dropout_input": 0.0, "dropout_hidden": 0.0, "dropout_output": 0.0,
                     "weight_drop": 0.0, "activation_regularization": 0.0,
                     "temporal_activation_regularization": 0.0},
}


def run_and_test(preset: Path, data: str, epochs: float, model_overrides: dict, label: str, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="rnnlab-ptb-") as folder:
        overrides = {"data": {"path": data}, "model": model_overrides,
                     "train": {"max_epochs": epochs, "checkpoint_dir": folder, "sample_length": 0, "seed": seed}}
        config = build_run_config(str(preset), overrides)
        started = time.perf_counter()
        result = train(config, progress_bar=False)
        minutes = (time.perf_counter() - started) / 60
        ckpt = load_checkpoint(result.best_checkpoint)
        model = ckpt.build_model("cpu")
        splits = prepare_from_config(config.data).splits(0, 0)
        test = evaluate_tokens(model, np.asarray(splits.test), 10, 70, "cpu", char_lengths=splits.lengths("test"))
        val = ckpt.metrics
    row = {"label": label, "epochs": epochs, "steps": result.steps, "minutes": round(minutes, 1),
           "parameters": result.num_parameters, "val_loss": val["val_loss"], "val_perplexity": val["val_perplexity"],
           "test_loss": test.nats_per_token, "test_perplexity": test.perplexity,
           "test_bits_per_token": test.bits_per_token, "test_bits_per_char": test.bits_per_char,
           "test_tokens": test.tokens}
    print(json.dumps(row), flush=True)
    print(f"| {label} | {result.steps:,} | {minutes:.1f} | {val['val_perplexity']:.1f} | {test.perplexity:.1f} | "
          f"{test.bits_per_token:.3f} | {test.bits_per_char:.3f} |", flush=True)
    return row


def precision_speed(data: str, steps: int, repeats: int) -> None:
    """Training tokens/s of the CPU preset's step (the loop's own train_batch) in fp32 and bf16,
    interleaved, same process."""
    rates = {"fp32": [], "bf16": []}
    for _ in range(repeats):
        for precision in rates:
            run = resolve_run(str(WORD_PRESET), {"data": {"path": data}, "train": {"precision": precision}})
            tokens, elapsed = 0, 0.0
            for i in range(steps + 3):  # 3 warm-up steps
                before, started = run.progress.tokens_seen, time.perf_counter()
                train_batch(run, elapsed=0.0)
                if i >= 3:
                    elapsed += time.perf_counter() - started
                    tokens += run.progress.tokens_seen - before
            rates[precision].append(tokens / elapsed)
    for precision, values in rates.items():
        print(f"{precision}: median {statistics.median(values):,.0f} tokens/s (range {min(values):,.0f}-"
              f"{max(values):,.0f}, n={len(values)})")
    print(f"bf16 / fp32: {statistics.median(rates['bf16']) / statistics.median(rates['fp32']):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("word", "ablation", "char", "precision"))
    parser.add_argument("--data", required=True, help="the PTB folder (ptb.train.txt ...) or ptb-char folder")
    parser.add_argument("--epochs", type=float, default=0.0, help="training budget per run (default: per benchmark)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--only", default="", help="ablation: run only rows whose label contains this")
    parser.add_argument("--steps", type=int, default=30, help="precision: timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="precision: repeats, fp32 and bf16 interleaved")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    header = ("| run | steps | minutes | val ppl | test ppl | test bits/token | test bits/char |\n"
              "|---|---|---|---|---|---|---|")
    if args.what == "precision":
        precision_speed(args.data, args.steps, args.repeats)
    elif args.what == "word":
        print(header)
        run_and_test(WORD_PRESET, args.data, args.epochs or 6, {}, "AWD-LSTM CPU preset", args.seed)
    elif args.what == "char":
        print(header)
        run_and_test(CHAR_PRESET, args.data, args.epochs or 2, {}, "char AWD-LSTM CPU preset", args.seed)
    else:
        print(header)
        for label, overrides in ABLATIONS.items():
            if args.only in label:
                run_and_test(WORD_PRESET, args.data, args.epochs or 1, overrides, label, args.seed)


if __name__ == "__main__":
    main()
