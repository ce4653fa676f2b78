"""The compiled step engine: a RecurrentLM's whole step (every layer, then the output layer) in one C
call (`_fast_step.c`), with int8 or fp16 weights small enough to stay in the cores' caches.

Why: per character, the NumPy engine (cpu_engine.py) crosses into NumPy and torch a dozen times and
each crossing costs more than its arithmetic; its fp32 weights (12.6 MB for a 2x512 LSTM) stream
from L3 at every step. Here one call does the step on all of torch's threads, and the weights are
a quarter (int8), 3/8 (int12) or half (fp16) of that.

This module only lays the model's weights out the way the kernels read them:
  * one matrix per layer, S "slots" per hidden unit, rows unit-major (row = unit * S + slot), so a
    thread that owns a block of units computes their gates and their new state with no barrier;
    columns [x ; h_previous], padded with zeros to a multiple of 64;
    LSTM: S = 4 (i, f, g, o); GRU: S = 4 (r, z, then n's input term and its recurrent term apart,
    because the reset gate multiplies only the second); tanh-RNN: S = 1;
  * the first layer's input term (its W_ih times the token's embedding or one-hot, with biases)
    as a (V, S, H) table, slot-major, so the first layer's matrix holds only W_hh;
  * int8: W ~= diag(row) Q diag(col) with col_j = sqrt(max_i |W_ij|): the column scale evens the
    columns before each row is rounded (it halves the error of per-row rounding on trained
    LSTMs), and is folded into the input vector, which the kernel rounds to int8 per stream;
  * int12: the same scales with 2047 levels per row instead of 127 (16x finer), stored as the kernel
    reads them (int12_parts), against inputs rounded to int16 per stream: for checkpoints where int8
    strays, 3/4 of fp16's bytes (which is what one stream waits on); see int12_is_fast;
  * fp16: the weights rounded to half precision (10-bit mantissa); the output layer stays fp32.
Its state is the model's own ((h, c) or (h,), each (L, B, H), as NumPy arrays), so beam search
reorders it along dim 1 and a state from the model's forward continues here; prompts are read with
the engine's own steps.

The engine re-expresses the model's step: tests/test_fast_engine.py checks its distributions
against `RecurrentLM.step` for every cell type, kernel set (AVX-512, AVX2, portable C) and weight
type. Dimension legend: B = streams, V = vocabulary, H = hidden units, S = slots, L = layers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rnnlab.models.lm import RecurrentLM

try:
    from rnnlab.models import _fast_step
except ImportError:  # not built (no C compiler at install): the NumPy engine is used instead
    _fast_step = None

CELLS = {"lstm": 0, "gru": 1, "rnn": 2}
WEIGHTS = ("int8", "int12", "fp16")
WEIGHT_CODES = {"int8": 0, "fp16": 1, "int12": 2}  # (the C file's WEIGHTS_* numbers)
COLUMN_BLOCK = 64
FP16_LARGEST = 65504.0
F32 = np.float32


def available() -> bool:
    """Whether the compiled step was built with this install."""
    return _fast_step is not None


def cpu_kernels() -> str:
    """The kernels this CPU runs: amx (AVX-512 VNNI, and AMX tiles for many streams), avx512vnni, avx512,
    avx2 or generic (portable C)."""
    return _fast_step.isa() if _fast_step is not None else "none"


def why_not(model: RecurrentLM) -> str | None:
    """Why the compiled step cannot run this model, or None: it runs LSTM, GRU and tanh-RNN layers
    (up to 16) under a plain output layer (no dense layer before it, no projection, no adaptive softmax)."""
    if _fast_step is None:
        return "it was not built with this install (no C compiler was found)"
    if model.layers.cell not in CELLS:
        return f"it runs LSTM, GRU and RNN layers, not {model.layers.cell.upper()}"
    if model.dense is not None or model.head is None or model.projection is not None:
        return "it runs models whose output layer is one plain linear layer"
    if model.layers.num_layers > 16:
        return "it runs up to 16 layers"
    return None


def supports(model: RecurrentLM) -> bool:
    return why_not(model) is None


class FastStepEngine:
    """The compiled engine. Same interface as the model for sampling: vocab_size, init_state, prime,
    step; it takes and returns NumPy arrays (`takes_numpy`)."""

    takes_numpy = True
    uses_blas_threads = False  # its threads are torch's own OpenMP threads
    threads: int | None = None  # threads per step; None: as many as torch uses (torch.get_num_threads())

    def __init__(self, model: RecurrentLM, weights: str | Sequence[str] = "int8", kernels: str = "auto"):
        """`weights`: int8 or fp16 for every layer, or one of them per layer (bottom first)."""
        if _fast_step is None:
            raise RuntimeError("the compiled step is not built in this install")
        if not supports(model):
            raise ValueError(f"the compiled engine cannot run this model: {why_not(model)}")
        stack = model.layers
        self.cell, self.num_layers, self.hidden = stack.cell, stack.num_layers, stack.hidden_size
        self.layer_weights = (weights,) * self.num_layers if isinstance(weights, str) else tuple(weights)
        if len(self.layer_weights) != self.num_layers or any(w not in WEIGHTS for w in self.layer_weights):
            raise ValueError(f"the compiled engine's weights must be int8, int12 or fp16 (or one per layer), "
                             f"got {weights!r}")
        self.vocab_size, self.weights = model.vocab_size, weights_name(self.layer_weights)
        self._model = model  # (for its initial state, learned or zero)
        with torch.no_grad():
            layers = [[_numpy(t) for t in stack.layer_weights(k)] for k in range(self.num_layers)]
            table = _slot_major(self._first_layer_input(model, layers[0]), self.cell, self.hidden)
            if self.cell == "gru":  # the first layer's n recurrent slot: b_hn, added by the table
                table[:, 3 * self.hidden:] = layers[0][3][2 * self.hidden:]
            self._arrays = [table]  # kept: the C engine reads these buffers in place
            built = []
            for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(layers):
                matrix = _layer_matrix(self.cell, w_ih if k > 0 else None, w_hh)
                bias = _slot_major(_layer_bias(self.cell, b_ih, b_hh)[None], self.cell, self.hidden)[0]
                built.append(_packed(matrix, self.layer_weights[k]) + (bias,))
            head_w = _padded(_numpy(model.head.weight), _ceil(self.vocab_size, 4), _ceil(self.hidden, COLUMN_BLOCK))
            head_b = np.ascontiguousarray(_numpy(model.head.bias))
        self._arrays += [head_w, head_b, built]
        self._engine = _fast_step.build(CELLS[self.cell], kernels, self.hidden, self.vocab_size, table, head_w,
                                        head_b, tuple(built))
        self.kernels = _fast_step.isa(self._engine)

    def _first_layer_input(self, model: RecurrentLM, first) -> np.ndarray:
        """(V, G*H): the first layer's W_ih times every token's input vector, with the input-side biases
        (for GRU, b_hh's r and z parts too; its n part stays in the recurrent term)."""
        w_ih, _, b_ih, b_hh = first
        inputs = model.embedding.weight if model.embedding is not None else torch.eye(model.vocab_size)
        table = _numpy(inputs) @ w_ih.T + b_ih
        if self.cell == "gru":
            table[:, :2 * self.hidden] += b_hh[:2 * self.hidden]
        else:
            table += b_hh
        return table

    # --- the stepper interface --------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None):
        """The model's own initial state (zeros, or the learned one) for `batch_size` streams."""
        with torch.no_grad():
            return tuple(_numpy(t).copy() for t in self._model.init_state(batch_size, torch.device("cpu")))

    def prime(self, tokens, state=None):
        """Read a prompt (B, T) with the engine's own steps; the last logits and the state. (Faster than the
        model's fused forward on CPU at any length measured, and the probe that admitted this engine
        measured exactly such a run of steps.)"""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[1] == 0:
            raise ValueError(f"prime reads a (streams, tokens) array of at least one token, got shape {tokens.shape}")
        state = state if state is not None else self.init_state(tokens.shape[0])
        logits = None
        for t in range(tokens.shape[1]):
            logits, state = self.step(tokens[:, t], state)
        return logits, state

    def step(self, tokens, state):
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        h = np.ascontiguousarray(state[0], dtype=F32)
        c = np.ascontiguousarray(state[1], dtype=F32) if self.cell == "lstm" else None
        h_new = np.empty_like(h)
        c_new = np.empty_like(c) if c is not None else None
        logits = np.empty((len(tokens), self.vocab_size), F32)
        _fast_step.step(self._engine, tokens, h, c, h_new, c_new, logits, self.threads or torch.get_num_threads())
        return logits, ((h_new, c_new) if c is not None else (h_new,))

    def profile(self, enable: bool = True) -> dict[str, float]:
        """Seconds spent (on the first thread) per part since the last call; times the next steps if
        `enable`. Parts: rounding the inputs, matrix products, gate math, output layer."""
        spent = _fast_step.profile(self._engine, enable)
        return dict(zip(("inputs", "products", "gate math", "output layer"), spent, strict=True))


def weights_name(layer_weights: Sequence[str]) -> str:
    """"int8" or "fp16" when every layer has it, else the layers' bottom first: "fp16+int8"."""
    return layer_weights[0] if len(set(layer_weights)) == 1 else "+".join(layer_weights)


def weight_ladder(num_layers: int, fp16: bool = True, int12: bool = False) -> list[tuple[str, ...]]:
    """The weights to try, fastest first: int8 everywhere; then a finer format (int12 if `int12`, else
    fp16) for the first layer, then the first two (the lowest layers' rounding errors travel through
    every layer above; they stray most), then everywhere; then fp16 everywhere. Without either, int8
    alone."""
    finer = "int12" if int12 else "fp16" if fp16 else None
    if finer is None:
        return [("int8",) * num_layers]
    rungs = [(finer,) * j + ("int8",) * (num_layers - j) for j in sorted({0, 1, 2, num_layers}) if j <= num_layers]
    return rungs + [("fp16",) * num_layers] if int12 and fp16 else rungs


INT12_STREAMS = 2  # from 3 streams, int12's four byte products per weight lose to fp16 in the row-by-row VNNI kernels
AMX_STREAMS = getattr(_fast_step, "AMX_STREAMS", 8)  # from this many streams on, the "amx" set uses its tiles
PACKED_STREAMS = getattr(_fast_step, "PACKED_STREAMS", 8)  # ... and the "avx512vnni" set the tiles' layout


def int12_is_fast(streams: int = 1) -> bool:
    """Whether int12 weights beat fp16 here for `streams` streams, which takes AVX-512 VNNI: for a stream or
    two, where the step waits on its weights' bytes (int12 has 3 of every 4 of fp16's); and from
    PACKED_STREAMS (AMX_STREAMS) streams on, where the products come from the tiles' layout (AMX tiles, or
    VNNI lines of 4 columns x 16 rows against each stream's broadcast inputs, with no sums across lanes).
    In between, the row-by-row kernels' four byte products per weight (two bytes of weight times two of
    input) lose to fp16's one FMA. Other CPUs run int12 in portable C, which is correct but slow."""
    kernels = cpu_kernels()
    packed = streams >= (AMX_STREAMS if kernels == "amx" else PACKED_STREAMS)
    return kernels in ("avx512vnni", "amx") and (streams <= INT12_STREAMS or packed)


def fp16_is_fast() -> bool:
    """Whether this CPU widens fp16 in hardware for the compiled step: x86 with AVX2 (F16C) or AVX-512,
    or ARM. On older x86 the portable kernels convert fp16 in software, slower than NumPy's fp32
    engine (580 against 3,000 chars/s on the 2x512 LSTM), so the default does not offer it there."""
    import platform

    return cpu_kernels() not in ("generic", "none") or platform.machine().lower() in ("aarch64", "arm64")


def _packed(matrix: np.ndarray, weights: str) -> tuple:
    """(code, weights, low nibbles, row scales, column scales) of one layer's matrix, in the kernel's
    format (int8: no nibbles; fp16: no nibbles and no scales)."""
    block = 2 * COLUMN_BLOCK if weights == "int12" else COLUMN_BLOCK
    matrix = _padded(matrix, _ceil(matrix.shape[0], 4), _ceil(matrix.shape[1], block))
    code = WEIGHT_CODES[weights]
    if weights == "fp16":
        if np.abs(matrix).max(initial=0.0) > FP16_LARGEST:
            raise ValueError(f"a weight beyond fp16's range (|w| > {FP16_LARGEST})")
        return code, np.ascontiguousarray(matrix.astype(np.float16)), None, None, None
    if weights == "int12":
        quantized, row, col = rows_and_columns(matrix, INT12_LEVELS)
        high, nibbles = int12_parts(quantized)
        return code, high, nibbles, row, col
    quantized, row, col = rows_and_columns(matrix, INT8_LEVELS)
    return code, quantized.astype(np.int8), None, row, col


INT8_LEVELS, INT12_LEVELS = 127, 2047


def rows_and_columns(matrix: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q (int16, |Q| <= levels), row (R,) and col (C,) with matrix[i, j] ~= row[i] * Q[i, j] * col[j].
    col_j = sqrt(max_i |matrix_ij|) evens the columns' ranges before each row is rounded to `levels`
    levels; the kernel multiplies the input by col (0 on all-zero columns, the padding) before rounding
    it."""
    column_max = np.abs(matrix).max(axis=0)
    col = np.sqrt(column_max).astype(F32)
    evened = matrix / np.where(col > 0, col, 1.0)[None, :]
    row_max = np.abs(evened).max(axis=1)
    row = np.where(row_max > 0, row_max / levels, 1.0).astype(F32)
    quantized = np.clip(np.rint(evened / row[:, None]), -levels, levels).astype(np.int16)
    return np.ascontiguousarray(quantized), row, col


def int12_parts(quantized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int12 Q (R, C), C a multiple of 128, as the kernel reads it: its high bytes Q >> 4 (int8, R x C) and
    its low 4 bits, two per byte (R x C/2): in each 128 columns, byte j holds column j's in its low half
    and column j + 64's in its high half (one AND and one shift unpack 128 of them)."""
    high = (quantized >> 4).astype(np.int8)
    low = (quantized & 15).astype(np.uint8).reshape(len(quantized), -1, 2, 64)
    nibbles = low[:, :, 0, :] | (low[:, :, 1, :] << 4)
    return np.ascontiguousarray(high), np.ascontiguousarray(nibbles.reshape(len(quantized), -1))


def _layer_matrix(cell: str, w_ih: np.ndarray | None, w_hh: np.ndarray) -> np.ndarray:
    """(S*H, [I +] H): slot rows [W_ih | W_hh] unit-major; without w_ih (the first layer) only W_hh.
    GRU's slots: r, z, n's input term (W_in | 0), n's recurrent term (0 | W_hn)."""
    hidden = w_hh.shape[1]
    gates = w_hh.shape[0] // hidden
    inputs = w_ih.shape[1] if w_ih is not None else 0

    def joined(g: int, with_input: bool = True, with_recurrent: bool = True) -> np.ndarray:
        block = np.zeros((hidden, inputs + hidden), F32)
        if with_input and w_ih is not None:
            block[:, :inputs] = w_ih[g * hidden:(g + 1) * hidden]
        if with_recurrent:
            block[:, inputs:] = w_hh[g * hidden:(g + 1) * hidden]
        return block

    if cell == "gru":
        slots = [joined(0), joined(1), joined(2, with_recurrent=False), joined(2, with_input=False)]
    else:
        slots = [joined(g) for g in range(gates)]
    return np.stack(slots, axis=1).reshape(len(slots) * hidden, inputs + hidden)  # row = unit * S + slot


def _layer_bias(cell: str, b_ih: np.ndarray, b_hh: np.ndarray) -> np.ndarray:
    """(G'*H,) in gate-major order: the sum of both biases; GRU: r, z summed, b_in, then b_hn."""
    if cell != "gru":
        return b_ih + b_hh
    hidden = len(b_ih) // 3
    return np.concatenate([b_ih[:2 * hidden] + b_hh[:2 * hidden], b_ih[2 * hidden:], b_hh[2 * hidden:]])


def _slot_major(gate_major: np.ndarray, cell: str, hidden: int) -> np.ndarray:
    """(N, S*H) slot-major rows from gate-major ones: GRU's three gates gain n's recurrent slot, zero
    here (its bias b_hn: _layer_bias for the layers above, set in the table for the first)."""
    if cell == "gru" and gate_major.shape[1] == 3 * hidden:
        gate_major = np.concatenate([gate_major, np.zeros((len(gate_major), hidden), F32)], axis=1)
    return np.ascontiguousarray(gate_major, dtype=F32)


def _padded(matrix: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), F32)
    out[:matrix.shape[0], :matrix.shape[1]] = matrix
    return out


def _ceil(n: int, block: int) -> int:
    return -(-n // block) * block


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()
