"""How a training sequence is turned into a loss: which positions count, and what state it starts from.

The pieces follow "training and sampling schemes" for character RNNs (k1/k2 truncated BPTT):
* loss positions: all k2 positions (multi-loss, Algorithm 1), the last one (single-loss,
  Algorithm 2), or the last k3; optionally weighted by the paper's section-5 decay
  (linear: w_i = i/(k2-1); exponential: w_i = e^(i-k2+1), i = 0..k2-1);
* the initial state: carried from the previous sequence (after k1 positions when sequences
  overlap: Algorithm 3's conditional transfer), zero, or the model's learned h0/c0; a carried
  state may also be reset to zero every N tokens of a stream (the blog's state resets).

`plan_sequence` turns those choices into the cut points where one forward call must end: where
the state to carry is captured, and where it is reset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from rnnlab.config import TrainConfig


@lru_cache(maxsize=64)
def _weights(length: int, positions: str, k3: int, decay: str) -> tuple[float, ...]:
    index = range(length)
    if decay == "linear":
        weights = [i / (length - 1) if length > 1 else 1.0 for i in index]
    elif decay == "exponential":
        weights = [math.exp(i - length + 1) for i in index]
    else:
        weights = [1.0] * length
    first_counted = {"all": 0, "last": length - 1, "last-k": max(length - k3, 0)}[positions]
    return tuple(w if i >= first_counted else 0.0 for i, w in enumerate(weights))


def position_weights(length: int, config: TrainConfig) -> torch.Tensor | None:
    """Per-position loss weights (T,), or None for the plain mean over every position."""
    if config.loss_positions == "all" and config.loss_decay == "none":
        return None
    return torch.tensor(_weights(length, config.loss_positions, config.k3, config.loss_decay))


@dataclass
class SequencePlan:
    """Where the forward pass over one (B, T) batch is cut, and why."""
    cuts: list[int]  # segment ends, increasing, the last one is T
    resets: set[int] = field(default_factory=set)  # positions at which the state is set to zero
    transfer_at: int | None = None  # the state after this many positions is carried to the next batch


def plan_sequence(length: int, stream_position: int, config: TrainConfig) -> SequencePlan:
    """Cut points for a batch whose first input token is at `stream_position` of its stream."""
    transfer_at = None
    if config.state == "carry" and config.k1 and config.k1 < length:
        transfer_at = config.k1
    resets = set()
    if config.reset_every:
        first = -stream_position % config.reset_every
        resets = {t for t in range(first, length, config.reset_every) if t > 0}
    cuts = sorted({length, *resets, *([transfer_at] if transfer_at else [])})
    return SequencePlan(cuts, resets, transfer_at)


def starts_with_reset(stream_position: int, config: TrainConfig) -> bool:
    """Whether the carried state must be zeroed before the first token of this batch."""
    return bool(config.reset_every) and stream_position % config.reset_every == 0
