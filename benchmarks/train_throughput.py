"""(a) Training throughput: rnnlab's training step vs a bare PyTorch loop, measured in one process.

Both train the same architecture (embedding 64 -> 2-layer LSTM -> linear) on random batches of
64 x 100 tokens with Adam: the bare loop is nn.Embedding + nn.LSTM + nn.Linear + torch.optim.Adam;
rnnlab's is RecurrentLM + TrainingStep (the exact code `rnnlab train` runs per batch). The two are
timed in alternation, `--repeats` times, and the ratio of medians is printed. Target: >= 0.95.

    python benchmarks/train_throughput.py [--repeats 5] [--steps 15]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from common import Timer, machine, summary
from torch import nn

from rnnlab.config import ModelConfig
from rnnlab.models.lm import RecurrentLM
from rnnlab.training.step import TrainingStep

VOCAB, BATCH, SEQ, EMBED = 65, 64, 100, 64


class BareLSTM(nn.Module):
    def __init__(self, hidden, layers):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, EMBED)
        self.lstm = nn.LSTM(EMBED, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, x, state):
        out, state = self.lstm(self.embedding(x), state)
        return self.head(out), state


def bare_loop(hidden, layers, batches):
    model = BareLSTM(hidden, layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = None

    def run(n):
        nonlocal state
        for x, y in batches[:n]:
            logits, state = model(x, state)
            state = tuple(s.detach() for s in state)
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            loss.item()
    return run


def rnnlab_loop(hidden, layers, batches, precision="fp32"):
    model = RecurrentLM(ModelConfig(cell="lstm", num_layers=layers, hidden_size=hidden, embedding_size=EMBED,
                                    dropout=0.0), VOCAB)
    from rnnlab.config import TrainConfig
    from rnnlab.training.optim import build_optimizer
    optimizer = build_optimizer(model.parameters(), TrainConfig(learning_rate=1e-3), torch.device("cpu"))
    step = TrainingStep(model, optimizer, precision, 5.0, torch.device("cpu"))
    state = None

    def run(n):
        nonlocal state
        for x, y in batches[:n]:
            loss, state = step(x, y, state)
            loss.item()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--sizes", default="128,512")
    args = parser.parse_args()
    torch.manual_seed(0)
    batches = [(torch.randint(0, VOCAB, (BATCH, SEQ)), torch.randint(0, VOCAB, (BATCH, SEQ)))
               for _ in range(args.steps)]
    print(f"machine: {machine()}")
    print(f"batch {BATCH} x seq {SEQ}, {args.steps} steps per measurement, {args.repeats} alternating repeats")
    for hidden in map(int, args.sizes.split(",")):
        runners = {"bare PyTorch": bare_loop(hidden, 2, batches), "rnnlab fp32": rnnlab_loop(hidden, 2, batches),
                   "rnnlab bf16": rnnlab_loop(hidden, 2, batches, "bf16")}
        for run in runners.values():
            run(3)  # warm-up: allocator, oneDNN primitives
        rates = {name: [] for name in runners}
        for _ in range(args.repeats):
            for name, run in runners.items():
                with Timer() as t:
                    run(args.steps)
                rates[name].append(BATCH * SEQ * args.steps / t.seconds)
        base = statistics.median(rates["bare PyTorch"])
        print(f"\n2x{hidden} LSTM, tokens/s:")
        for name, values in rates.items():
            print(f"  {name:14s} {summary(values)}  ratio to bare {statistics.median(values) / base:.3f}")


if __name__ == "__main__":
    main()
