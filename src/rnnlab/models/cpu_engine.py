"""A fast single-step engine for sampling on CPU, built from a trained RecurrentLM's weights.

Why it exists: generating text calls the model once per character with a batch of one. On CPU,
PyTorch's one-step LSTM call costs ~1.7 ms (its fused kernels are built for long sequences) and
its MKL matrix-vector product on this class of AMD machine reaches a third of the bandwidth that
OpenBLAS (through NumPy) gets by spreading the same fp32 product over both cores. So this engine
re-arranges the same fp32 weights for the one-step case and steps with NumPy:

* one matrix product per layer: the layer's new output h_k is multiplied once by the stacked
  [W_ih of the layer above (or the output layer); W_hh of this layer]. The top half feeds the
  layer above now; the bottom half is this layer's recurrent term for the *next* step, kept in
  the state as `r` (L, B, G*H). Fewer, larger BLAS calls keep both cores busy.
* on request (`share_weights`, which the server asks for) the weights are not copied: the model's
  parameters become views of those stacked buffers, so a server holding many models keeps each
  one's weights once (the fused forward that reads prompts uses the same memory); otherwise the
  stacked buffers are a copy and building an engine leaves the model untouched;
* the first layer's input projection (embedding or one-hot times W_ih, plus biases) is folded
  into a (V, G*H) table, so an input token costs a row lookup;
* one tanh over all LSTM gates yields every gate (sigmoid(x) = (1 + tanh(x/2)) / 2).

It is the model's step re-expressed, not a second model: tests/test_cpu_engine.py checks its
logits against `RecurrentLM.step` (fp32, tolerance 1e-4) for every cell type (QRNN through
`QrnnStepEngine`, below), embedding or one-hot, one or several layers.
Dimension legend: B = batch, V = vocabulary, H = hidden units, G = gates, L = layers.
"""

from __future__ import annotations

import abc
import functools
import warnings

import numpy as np
import torch

from rnnlab.models.cells import GATES
from rnnlab.models.lm import LEAKINESS, RecurrentLM
from rnnlab.models.qrnn import POOLING_GATES

F32 = np.float32


class _StepEngine(abc.ABC):
    """What the engines share: the model they re-express, the int8 choice, and reading prompts with the
    model's own fused forward. Same interface as the model for sampling: vocab_size, init_state,
    prime, step."""

    @property
    def uses_blas_threads(self) -> bool:
        """Whether the sampler keeps torch to one thread while this engine steps: yes for fp32 weights
        (OpenBLAS's products need both cores, which idle torch workers would spin on); no for int8, whose
        products are torch's own (fbgemm, on every core) and whose small fp32 products go through torch
        too, so only one thread pool is ever busy."""
        return self.weights != "int8"

    def __init__(self, model: RecurrentLM, weights: str):
        if weights not in ("fp32", "int8"):
            raise ValueError(f"the engine's weights must be fp32 or int8, got {weights!r}")
        stack = model.layers
        self.cell, self.num_layers, self.hidden = stack.cell, stack.num_layers, stack.hidden_size
        self.vocab_size = model.vocab_size
        self._model = model
        self.reduce_range = _reduce_range()

    def _use_int8(self, matrices: list[np.ndarray], weights: str) -> None:
        """Packed int8 copies of `matrices` when asked (and this torch can): self.weights says which."""
        self.int8 = [_int8_packed(m) for m in matrices] if weights == "int8" else None
        self.weights = "int8" if self.int8 is not None and all(p is not None for p in self.int8) else "fp32"

    def _int8_product(self, k: int, h: np.ndarray) -> np.ndarray:
        return torch.ops.quantized.linear_dynamic(torch.from_numpy(h), self.int8[k], self.reduce_range).numpy()

    def _dense_product(self, h: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """h @ matrix.T in fp32: NumPy's (OpenBLAS) beside fp32 products, torch's beside int8 ones (see
        uses_blas_threads)."""
        if self.weights == "int8":
            return (torch.from_numpy(h) @ torch.from_numpy(matrix).T).numpy()
        return h @ matrix.T

    def init_state(self, batch_size: int, device=None):
        return self.from_model_state(self._model.init_state(batch_size, torch.device("cpu")))

    def prime(self, tokens: torch.Tensor, state=None):
        """Read a prompt (B, T) with the model's fused forward; last logits and the engine state."""
        model_state = tuple(state[:-1]) if state is not None else None
        with torch.inference_mode():
            logits, _, model_state = self._model(tokens.cpu(), model_state)
        return logits[:, -1], self.from_model_state(model_state)

    @abc.abstractmethod
    def from_model_state(self, state):
        """The engine's state (the model's, plus what the engine keeps) from a model state."""


class CpuStepEngine(_StepEngine):
    """The engine for LSTM, GRU and tanh-RNN models.

    Its state is (h, c, r) for LSTM and (h, r) for GRU/RNN, each (L, B, ·), so beam search can
    reorder it along dim 1 like the model's own state.
    """

    def __init__(self, model: RecurrentLM, weights: str = "fp32", share_weights: bool = False):
        super().__init__(model, weights)
        self.gate_width = GATES[self.cell] * self.hidden
        stack = model.layers
        layers = [stack.layer_weights(k) for k in range(self.num_layers)]
        first_head = model.dense if model.dense is not None else model.head
        with torch.no_grad():
            self.table = self._input_table(model, layers[0])
            # the paper architecture's last layer, applied after the leaky ReLU of the dense layer
            self.final = ((_numpy(model.head.weight), _numpy(model.head.bias)) if model.dense is not None else None)
            self.stacked, self.input_bias, self.recurrent_bias = [], [], []
            for k in range(self.num_layers):
                if k + 1 < self.num_layers:
                    above_w, _, above_b, above_b2 = layers[k + 1]
                    bias = above_b if self.cell == "gru" else above_b + above_b2  # LSTM/RNN: both biases
                else:
                    above_w, bias = first_head.weight, first_head.bias
                self.stacked.append(_stacked(above_w, layers[k][1], share_weights))
                self.input_bias.append(_numpy(bias).copy())
                self.recurrent_bias.append(_numpy(layers[k][3]).copy() if self.cell == "gru" else None)
        # int8: every stacked matrix but the output layer, which stays fp32 (it is small, and its
        # errors would land on the probabilities directly)
        last = self.num_layers - 1
        self._use_int8([m if k < last else m[-self.gate_width:] for k, m in enumerate(self.stacked)], weights)
        if self.cell == "lstm":  # i, f, o are sigmoids, g a tanh
            sigmoid = np.concatenate([np.ones(2 * self.hidden), np.zeros(self.hidden), np.ones(self.hidden)])
            self._into_tanh, self._out_offset = _sigmoids_from_one_tanh(sigmoid.astype(bool))

    def _input_table(self, model: RecurrentLM, first_layer) -> np.ndarray:
        """(V, G*H): the first layer's input term for every token, biases included."""
        w_ih, _, b_ih, b_hh = first_layer
        inputs = model.embedding.weight if model.embedding is not None else torch.eye(model.vocab_size)
        table = inputs.float() @ w_ih.float().T + b_ih + (0.0 if self.cell == "gru" else b_hh)
        return np.ascontiguousarray(table.cpu().numpy(), dtype=F32)

    # --- state ---------------------------------------------------------------------------------

    def from_model_state(self, state):
        """Add the recurrent terms r_k = W_hh_k h_k to a model state (h[, c])."""
        h = state[0].detach().float().cpu().numpy()
        r = np.stack([h[k] @ self.stacked[k][-self.gate_width:].T for k in range(self.num_layers)])
        for k, bias in enumerate(self.recurrent_bias):
            if bias is not None:
                r[k] += bias
        return tuple(torch.from_numpy(s.detach().float().cpu().numpy().copy()) for s in state) + (torch.from_numpy(r),)

    # --- the step ------------------------------------------------------------------------------

    def step(self, tokens: torch.Tensor, state):
        ids = tokens.numpy()
        h_old, r_old = state[0].numpy(), state[-1].numpy()
        c_old = state[1].numpy() if self.cell == "lstm" else None
        h_new, r_new = np.empty_like(h_old), np.empty_like(r_old)
        c_new = np.empty_like(c_old) if c_old is not None else None
        gw = self.gate_width
        gates = np.take(self.table, ids, axis=0)  # (B, G*H): the first layer's input term
        for k in range(self.num_layers):
            if self.cell == "lstm":
                gates += r_old[k]
                self._lstm(gates, c_old[k], h_new[k], c_new[k])
            elif self.cell == "gru":
                self._gru(gates, r_old[k], h_old[k], h_new[k])
            else:
                gates += r_old[k]
                np.tanh(gates, out=h_new[k])
            product = self._product(k, h_new[k])  # (B, above + G*H)
            r_new[k] = product[:, -gw:]
            if self.recurrent_bias[k] is not None:
                r_new[k] += self.recurrent_bias[k]
            gates = np.add(product[:, :-gw], self.input_bias[k])
        if self.final is not None:
            np.maximum(gates, LEAKINESS * gates, out=gates)  # leaky ReLU
            gates = self._dense_product(gates, self.final[0])
            gates += self.final[1]
        logits = torch.from_numpy(gates)
        if self.cell == "lstm":
            return logits, (torch.from_numpy(h_new), torch.from_numpy(c_new), torch.from_numpy(r_new))
        return logits, (torch.from_numpy(h_new), torch.from_numpy(r_new))

    def _product(self, k: int, h: np.ndarray) -> np.ndarray:
        if self.weights == "int8":
            recurrent = self._int8_product(k, h)
            if k + 1 < self.num_layers:
                return recurrent
            head = self.stacked[k][:-self.gate_width]
            return np.concatenate([self._dense_product(h, head), recurrent], axis=1)
        matrix = self.stacked[k]
        if h.shape[0] == 1:  # a matrix-vector product: OpenBLAS's gemv, split over the cores
            return np.dot(matrix, h[0])[None, :]
        return h @ matrix.T

    def _lstm(self, gates: np.ndarray, c: np.ndarray, h_out: np.ndarray, c_out: np.ndarray) -> None:
        """Gates (i, f, g, o) from one tanh: sigmoid(x) = 0.5 tanh(x/2) + 0.5 on the i, f, o rows."""
        hd = self.hidden
        gates *= self._into_tanh
        np.tanh(gates, out=gates)
        gates *= self._into_tanh  # 0.5 on the sigmoid rows, 1 on g
        gates += self._out_offset
        i, f, g, o = gates[:, :hd], gates[:, hd:2 * hd], gates[:, 2 * hd:3 * hd], gates[:, 3 * hd:]
        np.multiply(f, c, out=c_out)
        g *= i
        c_out += g  # c' = f*c + i*g
        np.tanh(c_out, out=h_out)
        h_out *= o  # h = o * tanh(c')

    def _gru(self, input_term: np.ndarray, recurrent: np.ndarray, h: np.ndarray, h_out: np.ndarray) -> None:
        hd = self.hidden
        rz = 1.0 / (1.0 + np.exp(-(input_term[:, :2 * hd] + recurrent[:, :2 * hd])))
        n = np.tanh(input_term[:, 2 * hd:] + rz[:, :hd] * recurrent[:, 2 * hd:])
        np.subtract(h, n, out=h_out)
        h_out *= rz[:, hd:]
        h_out += n


class QrnnStepEngine(_StepEngine):
    """The same engine for QRNN models: one step is a product per layer and a few elementwise passes.

    A QRNN layer's gates are W_cur x_t + W_prev x_(t-1) + b, so the second term is known one step
    ahead: each product of a layer's input x_t with [W_cur; W_prev] gives this step's gates and the
    next step's `r`. The layer's weight (G*H, 2I) is read as (2*G*H, I) — rows alternate W_cur,
    W_prev — so one product yields both, interleaved, with no copy of the weights. The first
    layer's two terms are (V, G*H) tables. The state is the model's (c[, x_first, x_rest]) plus
    r (L, B, G*H), so `prime` reads prompts with the model's own forward, as for the LSTM.
    """

    def __init__(self, model: RecurrentLM, weights: str = "fp32"):
        super().__init__(model, weights)
        stack = model.layers
        self.window, self.pooling = stack.window, stack.qrnn_layers[0].pooling
        self.gate_width = POOLING_GATES[self.pooling] * self.hidden
        linears = [layer.linear for layer in stack.qrnn_layers]
        with torch.no_grad():
            inputs = (model.embedding.weight if model.embedding is not None else torch.eye(model.vocab_size)).float()
            width = inputs.shape[1]
            first = linears[0].weight.float()
            self.table = _numpy(inputs @ first[:, :width].T + linears[0].bias)
            self.inputs = _numpy(inputs)  # x_first of the model state: the token's input vector
            self.first_previous = _numpy(first[:, width:]) if self.window == 2 else None
            self.table_previous = _numpy(inputs @ first[:, width:].T) if self.window == 2 else None
            # layers above the first: (window*G*H, H) views of their weights
            self.upper = [_numpy(linears[k].weight).reshape(self.window * self.gate_width, self.hidden)
                          for k in range(1, self.num_layers)]
            self.biases = [_numpy(linears[k].bias) for k in range(self.num_layers)]
            head = model.dense if model.dense is not None else model.head
            self.head = (_numpy(head.weight), _numpy(head.bias))
            self.final = ((_numpy(model.head.weight), _numpy(model.head.bias)) if model.dense is not None else None)
        self._use_int8(self.upper, weights)
        sigmoid = np.ones(self.gate_width, dtype=bool)
        sigmoid[:self.hidden] = False  # z = tanh, every other gate a sigmoid
        self._into_tanh, self._out_offset = _sigmoids_from_one_tanh(sigmoid)

    def from_model_state(self, state):
        """Add r_k = W_prev_k x_k (the previous inputs' gate terms) to a model state (c[, x_first, x_rest])."""
        model_state = tuple(torch.from_numpy(s.detach().float().cpu().numpy().copy()) for s in state)
        batch = model_state[0].shape[1]
        r = np.zeros((self.num_layers, batch, self.gate_width if self.window == 2 else 0), dtype=F32)
        if self.window == 2:
            r[0] = model_state[1][0].numpy() @ self.first_previous.T
            for k in range(1, self.num_layers):
                r[k] = (model_state[2][k - 1].numpy() @ self.upper[k - 1].T)[:, 1::2]
        return model_state + (torch.from_numpy(r),)

    def step(self, tokens: torch.Tensor, state):
        ids = tokens.numpy()
        c_old, r_old = state[0].numpy(), state[-1].numpy()
        c_new, r_new = np.empty_like(c_old), np.empty_like(r_old)
        gates = np.take(self.table, ids, axis=0)
        extra = ()
        if self.window == 2:  # the model's state of previous inputs, kept so `prime` can continue it
            gates += r_old[0]
            r_new[0] = np.take(self.table_previous, ids, axis=0)
            x_first = np.take(self.inputs, ids, axis=0)[None]
            x_rest = np.empty_like(state[2].numpy())
        for k in range(self.num_layers):
            h = self._pool(gates, c_old[k], c_new[k])
            if k + 1 == self.num_layers:
                break
            product = self._product_above(k, h)
            if self.window == 2:
                x_rest[k] = h
                gates = product[:, 0::2] + self.biases[k + 1]
                gates += r_old[k + 1]
                r_new[k + 1] = product[:, 1::2]
            else:
                gates = product + self.biases[k + 1]
        logits = self._dense_product(h, self.head[0])
        logits += self.head[1]
        if self.final is not None:
            np.maximum(logits, LEAKINESS * logits, out=logits)  # leaky ReLU
            logits = self._dense_product(logits, self.final[0]) + self.final[1]
        if self.window == 2:
            extra = (torch.from_numpy(x_first), torch.from_numpy(x_rest))
        return torch.from_numpy(logits), (torch.from_numpy(c_new), *extra, torch.from_numpy(r_new))

    def _product_above(self, k: int, h: np.ndarray) -> np.ndarray:
        """h_k times the next layer's weight: (B, window*G*H), W_cur and W_prev terms interleaved."""
        if self.weights == "int8":
            return self._int8_product(k, h)
        if h.shape[0] == 1:
            return np.dot(self.upper[k], h[0])[None, :]
        return h @ self.upper[k].T

    def _pool(self, gates: np.ndarray, c: np.ndarray, c_out: np.ndarray) -> np.ndarray:
        """c' = f c + (1 - f) z (or i z for ifo); returns h = c' (f) or o c' (fo, ifo)."""
        hd = self.hidden
        gates *= self._into_tanh
        np.tanh(gates, out=gates)
        gates *= self._into_tanh
        gates += self._out_offset
        z, f = gates[:, :hd], gates[:, hd:2 * hd]
        if self.pooling == "ifo":
            z *= gates[:, 3 * hd:]
        else:
            z -= f * z
        np.multiply(f, c, out=c_out)
        c_out += z
        return c_out if self.pooling == "f" else c_out * gates[:, 2 * hd:3 * hd]


def step_engine(model: RecurrentLM, weights: str = "fp32", share_weights: bool = False) -> _StepEngine:
    """The NumPy step engine for a model's cell type (the QRNN's reads its weights in place: it
    rearranges nothing, so it shares them either way)."""
    if model.layers.cell == "qrnn":
        return QrnnStepEngine(model, weights)
    return CpuStepEngine(model, weights, share_weights)


@functools.cache
def _reduce_range() -> bool:
    """fbgemm multiplies uint8 activations by int8 weights; without VNNI the pairwise int16 sums can
    saturate, so activations keep 7 bits there (less precise). With VNNI they keep all 8. (Read when
    the first engine is built, not when the module is imported.)"""
    return not _cpu_has_vnni()


def _cpu_has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni"))


def _int8_packed(matrix: np.ndarray):
    """fbgemm's packed int8 form of a matrix (one scale per row), or None where this torch has no
    quantized CPU kernels. The fp32 matrix stays the reference; the int8 copy is a quarter of it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated in favour of torchao
            weight = torch.from_numpy(matrix)
            scales = (weight.abs().amax(dim=1).double() / 127.0).clamp_min(1e-12)
            quantized = torch.quantize_per_channel(weight, scales, torch.zeros(len(scales), dtype=torch.long), 0,
                                                   torch.qint8)
            return torch.ops.quantized.linear_prepack(quantized, None)
    except (RuntimeError, AttributeError, NotImplementedError):
        return None


def _sigmoids_from_one_tanh(sigmoid_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) so that offset + scale * tanh(scale * x) is sigmoid(x) on the sigmoid rows and
    tanh(x) on the others: sigmoid(x) = 0.5 tanh(x/2) + 0.5, so one tanh yields every gate."""
    scale = np.where(sigmoid_rows, 0.5, 1.0).astype(F32)
    return scale, np.where(sigmoid_rows, 0.5, 0.0).astype(F32)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _stacked(upper: torch.nn.Parameter, lower: torch.nn.Parameter, share: bool) -> np.ndarray:
    """One C-contiguous fp32 buffer [upper; lower]: the engine multiplies h by both at once.

    With `share` (asked for by whoever holds the model for good, like the server), the two parameters
    become views of it, so the weights exist once in memory; otherwise it is a copy and the model is
    left exactly as it was.
    """
    buffer = torch.cat([upper.detach().float().cpu(), lower.detach().float().cpu()]).contiguous()
    if share and upper.device.type == "cpu" and upper.dtype == torch.float32 and lower.dtype == torch.float32:
        upper.data, lower.data = buffer[:upper.shape[0]], buffer[upper.shape[0]:]
    return buffer.numpy()
