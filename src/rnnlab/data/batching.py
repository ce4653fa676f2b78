"""Batches of (inputs, targets) drawn from a token memmap, with a resumable position.

Dimension legend: B = batch size (parallel streams), T = time steps per batch.

StreamBatcher is char-rnn's layout: the training split is cut into B contiguous columns and each
batch advances every column by T tokens, so the hidden state at the end of one batch is the right
starting state for the next. The last incomplete batch of an epoch is dropped, never padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rnnlab.errors import CorpusError


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64
    starts_epoch: bool  # True for the first batch of every epoch: streams restart, reset the state


class StreamBatcher:
    def __init__(self, tokens: np.ndarray, batch_size: int, seq_length: int, split_name: str = "train",
                 id_map: np.ndarray | None = None):
        needed = batch_size * seq_length + 1
        if len(tokens) < needed:
            raise CorpusError(too_small_message(len(tokens), batch_size, seq_length, split_name))
        self.tokens = tokens
        self.id_map = id_map  # corpus ids -> model ids, when fine-tuning a model with a larger vocabulary
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.column_length = (len(tokens) - 1) // batch_size
        self.batches_per_epoch = self.column_length // seq_length
        self.epoch = 0
        self.batch_index = 0
        self._column_starts = np.arange(batch_size, dtype=np.int64)[:, None] * self.column_length
        self._offsets = np.arange(seq_length + 1, dtype=np.int64)[None, :]

    @property
    def epoch_progress(self) -> float:
        """Epochs done, as a fraction (char-rnn's `epoch0.95`)."""
        return self.epoch + self.batch_index / self.batches_per_epoch

    def next_batch(self) -> Batch:
        starts_epoch = self.batch_index == 0
        index = self._column_starts + self.batch_index * self.seq_length + self._offsets
        window = np.asarray(self.tokens[index], dtype=np.int64)
        window = torch.from_numpy(self.id_map[window] if self.id_map is not None else window)
        self.batch_index += 1
        if self.batch_index == self.batches_per_epoch:
            self.batch_index = 0
            self.epoch += 1
        return Batch(window[:, :-1], window[:, 1:], starts_epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_index": self.batch_index,
                "batch_size": self.batch_size, "seq_length": self.seq_length}

    def load_state_dict(self, state: dict) -> None:
        if (state["batch_size"], state["seq_length"]) != (self.batch_size, self.seq_length):
            raise CorpusError("the resumed run's batch_size and seq_length must match the checkpoint's")
        self.epoch = int(state["epoch"])
        self.batch_index = int(state["batch_index"])


def too_small_message(n_tokens: int, batch_size: int, seq_length: int, split_name: str) -> str:
    fit_batch = max((n_tokens - 1) // seq_length, 0)
    fit_seq = max((n_tokens - 1) // batch_size, 0)
    hint = []
    if fit_batch >= 1:
        hint.append(f"--batch-size {fit_batch}")
    if fit_seq >= 1:
        hint.append(f"--seq-length {fit_seq}")
    suggestion = f"; settings that would fit: {' or '.join(hint)}" if hint else "; use a larger text file"
    return (f"the {split_name} split has {n_tokens} characters, fewer than batch_size x seq_length + 1 = "
            f"{batch_size * seq_length + 1}{suggestion}")
