"""Multi-layer recurrent layers on PyTorch's fused kernels, plus readable reference steps.

Dimension legend: B = batch, T = time, I = input width, H = hidden units, L = layers,
G = gates per cell (LSTM 4: i, f, g, o; GRU 3: r, z, n; RNN 1).

RecurrentStack owns its weights and calls the fused op (`torch.lstm`, `torch.gru`,
`torch.rnn_tanh`: cuDNN on GPU, the native/oneDNN path on CPU) directly instead of wrapping
nn.LSTM. That lets the LSTM and tanh-RNN carry one bias per gate, as the textbook formula (and the
blog's parameter count) has it, rather than nn.LSTM's two redundant biases, and it leaves room for
regularizers that transform the weights before the fused call.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from rnnlab.models.regularizers import drop_connect

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
State = tuple[torch.Tensor, ...]  # LSTM: (h, c); GRU/RNN: (h,) — each (L, B, H)


class RecurrentStack(nn.Module):
    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0):
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"unknown cell {cell!r}")
        self.cell, self.hidden_size, self.num_layers, self.dropout = cell, hidden_size, num_layers, dropout
        width = GATES[cell] * hidden_size
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(width, layer_input)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(width, hidden_size)))
            if cell == "gru":  # the reset gate multiplies W_hn h + b_hn, so GRU truly needs both biases
                self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(width)))
                self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(width)))
            else:
                self.register_parameter(f"bias_l{layer}", nn.Parameter(torch.empty(width)))
        # The fused ops expect two biases per layer; LSTM/RNN feed this zero buffer as the second.
        self.register_buffer("zero_bias", torch.zeros(width), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)
        if self.cell == "lstm":  # a forget-gate bias of 1 lets gradients flow early in training
            h = self.hidden_size
            for layer in range(self.num_layers):
                with torch.no_grad():
                    getattr(self, f"bias_l{layer}")[h:2 * h].fill_(1.0)

    def layer_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W_ih, W_hh, b_ih, b_hh) of one layer, in the fused op's order."""
        w_ih, w_hh = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}")
        if self.cell == "gru":
            return w_ih, w_hh, getattr(self, f"bias_ih_l{layer}"), getattr(self, f"bias_hh_l{layer}")
        return w_ih, w_hh, getattr(self, f"bias_l{layer}"), self.zero_bias

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        shape = (self.num_layers, batch_size, self.hidden_size)
        zeros = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(2 if self.cell == "lstm" else 1)]
        return tuple(zeros)

    def forward(self, x: torch.Tensor, state: State | None = None, weight_drop: float = 0.0,
                between: Callable[[torch.Tensor, int], torch.Tensor] | None = None, weight_drop_input: float = 0.0,
                dropout_recurrent: float = 0.0) -> tuple[torch.Tensor, State]:
        """x: (B, T, I) -> outputs (B, T, H), final state.

        With `weight_drop` / `weight_drop_input` (DropConnect on W_hh / W_ih, one mask per call) or a
        `between(h, next_layer)` transform (e.g. locked dropout between layers), the layers run one
        fused call each; otherwise all at once. `dropout_recurrent` (LSTM, training only) drops the
        candidate g of every step with one mask per sequence, c_t = f c_(t-1) + i drop(g): no fused
        kernel exposes g, so that path runs step by step and is several times slower.
        """
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        dropout_recurrent = dropout_recurrent if self.training and self.cell == "lstm" else 0.0
        if not (weight_drop or weight_drop_input or dropout_recurrent) and between is None:
            weights = [w for layer in range(self.num_layers) for w in self.layer_weights(layer)]
            return self._fused(x, state, weights, self.num_layers, self.dropout if self.num_layers > 1 else 0.0)
        finals = []
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(layer)
            w_ih = drop_connect(w_ih, weight_drop_input, self.training)
            w_hh = drop_connect(w_hh, weight_drop, self.training)
            layer_state = tuple(s[layer:layer + 1] for s in state)
            if dropout_recurrent:
                x, layer_state = _lstm_with_candidate_dropout(x, layer_state, w_ih, w_hh, b_ih + b_hh,
                                                              dropout_recurrent)
            else:
                x, layer_state = self._fused(x, layer_state, [w_ih, w_hh, b_ih, b_hh], 1, 0.0)
            finals.append(layer_state)
            if layer + 1 < self.num_layers:
                x = nn.functional.dropout(x, self.dropout, self.training)  # what the all-layer call applies
                if between is not None:
                    x = between(x, layer + 1)
        return x, tuple(torch.cat(parts) for parts in zip(*finals, strict=True))

    def _fused(self, x, state: State, weights, num_layers: int, dropout: float) -> tuple[torch.Tensor, State]:
        args = (weights, True, num_layers, dropout, self.training, False, True)
        if self.cell == "lstm":
            output, h, c = torch.lstm(x, state, *args)
            return output, (h, c)
        fused = torch.gru if self.cell == "gru" else torch.rnn_tanh
        output, h = fused(x, state[0], *args)
        return output, (h,)


def _lstm_with_candidate_dropout(x, state: State, w_ih, w_hh, bias, p: float) -> tuple[torch.Tensor, State]:
    """One LSTM layer, step by step, with recurrent dropout on the candidate (Semeniuta et al.):
    one (B, H) mask per sequence. The input projection of all steps is one matrix product."""
    h, c = state[0][0], state[1][0]
    projected = x @ w_ih.T + bias  # (B, T, 4H)
    mask = h.new_empty(h.shape).bernoulli_(1.0 - p) / (1.0 - p)
    outputs = []
    for t in range(x.shape[1]):
        i, f, g, o = (projected[:, t] + h @ w_hh.T).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g) * mask
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1), (h[None], c[None])


# --- readable reference steps (used by the parity tests) -------------------------------------

def lstm_reference_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    gates = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def gru_reference_step(x, h, w_ih, w_hh, b_ih, b_hh):
    xr, xz, xn = (x @ w_ih.T + b_ih).chunk(3, dim=-1)
    hr, hz, hn = (h @ w_hh.T + b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def rnn_reference_step(x, h, w_ih, w_hh, b_ih, b_hh):
    return torch.tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)


def reference_forward(stack: RecurrentStack, x: torch.Tensor, state: State | None = None):
    """Run `stack` one time step and one layer at a time with the reference steps (no dropout)."""
    batch, steps, _ = x.shape
    state = state if state is not None else stack.init_state(batch, x.device, x.dtype)
    hs = list(state[0].unbind(0))
    cs = list(state[1].unbind(0)) if stack.cell == "lstm" else None
    outputs = []
    for t in range(steps):
        inp = x[:, t]
        for layer in range(stack.num_layers):
            weights = stack.layer_weights(layer)
            if stack.cell == "lstm":
                hs[layer], cs[layer] = lstm_reference_step(inp, hs[layer], cs[layer], *weights)
            elif stack.cell == "gru":
                hs[layer] = gru_reference_step(inp, hs[layer], *weights)
            else:
                hs[layer] = rnn_reference_step(inp, hs[layer], *weights)
            inp = hs[layer]
        outputs.append(inp)
    final = (torch.stack(hs), torch.stack(cs)) if cs is not None else (torch.stack(hs),)
    return torch.stack(outputs, dim=1), final
