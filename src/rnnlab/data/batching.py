"""Batches of (inputs, targets) drawn from a token memmap, with a resumable position.

Dimension legend: B = batch size (parallel streams), T = time steps per batch.

StreamBatcher is char-rnn's layout: the training split is cut into B contiguous columns and each
batch advances every column by T tokens, so the hidden state at the end of one batch is the right
starting state for the next. The last incomplete batch of an epoch is dropped, never padded.

Under torchrun every rank runs the same batcher over the whole batch (world x batch_size streams, the
same random draws everywhere) and reads only its own block of `rows`: its streams stay contiguous,
their state is carried as on one process, and N ranks train exactly what one process with the global
batch would.
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
    stream_position: int = 0  # offset of the first input token within its stream (for periodic resets)
    lr_scale: float = 1.0  # variable-length batches scale the learning rate by T / k2


ALL_ROWS = slice(None)


class StreamBatcher:
    rows = ALL_ROWS  # (the streams of the batch this process reads: all, or its rank's block)

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
        position = self.batch_index * self.seq_length
        self.batch_index += 1
        if self.batch_index == self.batches_per_epoch:
            self.batch_index = 0
            self.epoch += 1
        return _batch(self.tokens, index[self.rows], self.id_map, starts_epoch, position)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_index": self.batch_index,
                "batch_size": self.batch_size, "seq_length": self.seq_length}

    def load_state_dict(self, state: dict) -> None:
        if (state["batch_size"], state["seq_length"]) != (self.batch_size, self.seq_length):
            raise CorpusError("the resumed run's batch_size and seq_length must match the checkpoint's")
        self.epoch, self.batch_index = saved_position(state, self.batches_per_epoch)


def too_small_message(n_tokens: int, batch_size: int, seq_length: int, split_name: str) -> str:
    fit_batch = max((n_tokens - 1) // seq_length, 0)
    fit_seq = max((n_tokens - 1) // batch_size, 0)
    hint = []
    if fit_batch >= 1:
        hint.append(f"--batch-size {fit_batch}")
    if fit_seq >= 1:
        hint.append(f"--seq-length {fit_seq}")
    suggestion = f"; settings that would fit: {' or '.join(hint)}" if hint else "; use a larger text file"
    return (f"the {split_name} split has {n_tokens} tokens, fewer than batch_size x seq_length + 1 = "
            f"{batch_size * seq_length + 1}{suggestion}")


def _batch(tokens: np.ndarray, index: np.ndarray, id_map, starts_epoch: bool, position: int,
           lr_scale: float = 1.0) -> Batch:
    """Gather windows (B, T+1) of ids at `index` and split them into inputs and targets."""
    window = np.asarray(tokens[index], dtype=np.int64)
    window = torch.from_numpy(id_map[window] if id_map is not None else window)
    return Batch(window[:, :-1], window[:, 1:], starts_epoch, position, lr_scale)


class EquidistantBatcher:
    """The paper's eq. 8: sequence j of batch i starts at j * |D| / B + i * k1 (+ the epoch's shift).

    Each of the B streams owns a contiguous |D|/B slice and advances by k1 per batch, so with
    k1 < k2 consecutive sequences overlap and the state after k1 positions is the right start for
    the next one. After every epoch the whole split is rotated (circularly shifted) by
    `shift = k1 // 2 + 1` more positions, so later epochs cut the text at other phases; windows
    that run past the end wrap to the start.
    """

    rows = ALL_ROWS

    def __init__(self, tokens: np.ndarray, batch_size: int, k2: int, k1: int, id_map=None):
        self.tokens, self.batch_size, self.seq_length, self.k1, self.id_map = tokens, batch_size, k2, k1 or k2, id_map
        self.stream_length = len(tokens) // batch_size
        if self.stream_length < k2 + 1:
            raise CorpusError(too_small_message(len(tokens), batch_size, k2, "train"))
        self.batches_per_epoch = (self.stream_length - k2 - 1) // self.k1 + 1
        self.shift = self.k1 // 2 + 1
        self.epoch = 0
        self.batch_index = 0

    @property
    def epoch_progress(self) -> float:
        return self.epoch + self.batch_index / self.batches_per_epoch

    def starts(self, batch_index: int, epoch: int) -> np.ndarray:
        """Start offsets (B,) of the sequences of batch `batch_index` in epoch `epoch` (eq. 8)."""
        streams = np.arange(self.batch_size, dtype=np.int64) * self.stream_length
        return (streams + batch_index * self.k1 + epoch * self.shift) % len(self.tokens)

    def next_batch(self) -> Batch:
        starts_epoch = self.batch_index == 0
        index = (self.starts(self.batch_index, self.epoch)[:, None]
                 + np.arange(self.seq_length + 1, dtype=np.int64)[None, :]) % len(self.tokens)
        position = self.batch_index * self.k1
        self.batch_index += 1
        if self.batch_index == self.batches_per_epoch:
            self.batch_index, self.epoch = 0, self.epoch + 1
        return _batch(self.tokens, index[self.rows], self.id_map, starts_epoch, position)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_index": self.batch_index, "batch_size": self.batch_size,
                "seq_length": self.seq_length, "k1": self.k1}

    def load_state_dict(self, state: dict) -> None:
        if (state["batch_size"], state["seq_length"], state.get("k1")) != (self.batch_size, self.seq_length, self.k1):
            raise CorpusError("the resumed run's batch_size, k2 and k1 must match the checkpoint's")
        self.epoch, self.batch_index = saved_position(state, self.batches_per_epoch)


class RandomWindowBatcher:
    """B windows of k2 + 1 tokens at uniformly random offsets; an epoch is |D| / (B k2) batches."""

    rows = ALL_ROWS

    def __init__(self, tokens: np.ndarray, batch_size: int, k2: int, seed: int, id_map=None):
        if len(tokens) < k2 + 2:
            raise CorpusError(too_small_message(len(tokens), 1, k2, "train"))
        self.tokens, self.batch_size, self.seq_length, self.id_map = tokens, batch_size, k2, id_map
        self.batches_per_epoch = max(1, len(tokens) // (batch_size * k2))
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.batch_index = 0

    @property
    def epoch_progress(self) -> float:
        return self.epoch + self.batch_index / self.batches_per_epoch

    def next_batch(self) -> Batch:
        starts_epoch = self.batch_index == 0
        starts = self.rng.integers(0, len(self.tokens) - self.seq_length - 1, size=self.batch_size, endpoint=True)
        index = starts[:, None] + np.arange(self.seq_length + 1, dtype=np.int64)[None, :]
        self.batch_index += 1
        if self.batch_index == self.batches_per_epoch:
            self.batch_index, self.epoch = 0, self.epoch + 1
        return _batch(self.tokens, index[self.rows], self.id_map, starts_epoch, 0)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_index": self.batch_index, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_index = saved_position(state, self.batches_per_epoch)
        self.rng.bit_generator.state = state["rng"]


class VariableLengthBatcher:
    """AWD-LSTM's batching: contiguous streams read in steps of random length around k2.

    Each step's length is drawn as in awd-lstm-lm (k2, or k2/2 with probability 0.05, plus normal
    noise with std 5, at least 5); the learning rate is scaled by length / k2 so every token weighs
    the same. Each epoch starts at a random offset in [0, k2) of the streams, so the cuts move.
    """

    rows = ALL_ROWS

    def __init__(self, tokens: np.ndarray, batch_size: int, k2: int, seed: int, id_map=None):
        needed = batch_size * (2 * k2) + 1
        if len(tokens) < needed:
            raise CorpusError(too_small_message(len(tokens), batch_size, 2 * k2, "train"))
        self.tokens, self.batch_size, self.seq_length, self.id_map = tokens, batch_size, k2, id_map
        self.column_length = (len(tokens) - 1) // batch_size
        self.batches_per_epoch = max(1, self.column_length // k2)  # nominal, for progress and schedules
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.batch_index = 0
        self.position = None  # offset within the columns; None = start a new epoch

    @property
    def epoch_progress(self) -> float:
        position = self.position or 0
        return self.epoch + min(position / self.column_length, 0.999)

    def _draw_length(self) -> int:
        base = self.seq_length if self.rng.random() < 0.95 else self.seq_length / 2
        return max(5, int(self.rng.normal(base, 5)))

    def next_batch(self) -> Batch:
        starts_epoch = self.position is None
        if starts_epoch:
            self.position = int(self.rng.integers(0, self.seq_length))
        length = min(self._draw_length(), self.column_length - 1 - self.position)
        columns = np.arange(self.batch_size, dtype=np.int64)[:, None] * self.column_length
        index = columns + self.position + np.arange(length + 1, dtype=np.int64)[None, :]
        batch = _batch(self.tokens, index[self.rows], self.id_map, starts_epoch, self.position,
                       length / self.seq_length)
        self.position += length
        self.batch_index += 1
        if self.position >= self.column_length - 6:  # too little left for a minimum-length step
            self.position, self.batch_index, self.epoch = None, 0, self.epoch + 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_index": self.batch_index, "position": self.position,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_index = saved_position(state, self.column_length)
        position = state["position"]
        if position is not None:
            position = _saved_count(position, "position", self.column_length - 6)
        self.position = position
        self.rng.bit_generator.state = state["rng"]


MAX_EPOCHS = 2 ** 40  # no run gets near this; a saved epoch beyond it is a corrupt checkpoint


def saved_position(state: dict, batches_per_epoch: int) -> tuple[int, int]:
    """(epoch, batch_index) of a saved batcher, each in its range: a checkpoint is untrusted input."""
    return (_saved_count(state["epoch"], "epoch", MAX_EPOCHS),
            _saved_count(state["batch_index"], "batch_index", batches_per_epoch))


def _saved_count(value, name: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise ValueError(f"the batcher's {name} must be an integer in [0, {limit}), got {value!r}")
    return value


def make_batcher(tokens: np.ndarray, config, id_map=None, ranks=None):
    """The batcher a TrainConfig asks for; with `ranks` (several), over the global batch of every rank's
    batch_size streams, reading this rank's own."""
    world = ranks.world if ranks is not None else 1
    size = config.batch_size * world
    try:
        batcher = _make_batcher(tokens, config, size, id_map)
    except CorpusError as exc:
        if world == 1:
            raise
        raise CorpusError(f"{exc} (this job's batch is {world} ranks x --batch-size {config.batch_size} = {size} "
                          f"streams: a --batch-size above is the whole job's; divide it by {world})") from None
    if world > 1:
        batcher.rows = ranks.rows(config.batch_size)
    return batcher


def _make_batcher(tokens: np.ndarray, config, size: int, id_map):
    if config.batching == "equidistant":
        return EquidistantBatcher(tokens, size, config.seq_length, config.k1, id_map)
    if config.batching == "random":
        return RandomWindowBatcher(tokens, size, config.seq_length, config.seed, id_map)
    if config.batching == "variable":
        return VariableLengthBatcher(tokens, size, config.seq_length, config.seed, id_map)
    return StreamBatcher(tokens, size, config.seq_length, "train", id_map=id_map)
