"""QRNN (Bradbury et al.): gates for every time step from one masked convolution, then a fast pooling.

Dimension legend: B = batch, T = time, I = input width, H = hidden units, L = layers.
A layer computes Z = tanh, F (and O, I) = sigmoid of one linear map of [x_t, x_(t-1)] (window 2) or
x_t (window 1) — a convolution that never looks ahead — for all T steps at once. The pooling is
the only sequential part, c_t = f_t c_(t-1) + b_t, with b = (1 - f) z (f-/fo-pooling) or i z
(ifo-pooling); output h = c (f) or o c (fo, ifo). It runs as a parallel scan (log2(T) elementwise
passes, no Python loop over time) with its own backward; `reference_pool` is the plain loop the
tests compare it with. The state carries c and, for window 2, each layer's last input.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.models.regularizers import drop_connect

POOLING_GATES = {"f": 2, "fo": 3, "ifo": 4}


def _scan_pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of the affine maps c -> a_t c + b_t along dim 1 (Hillis-Steele, no autograd).

    After the pass at distance d, position t holds the composition of the maps t-2d+1..t; log2(T)
    passes of three elementwise products over (B, T, H) replace T sequential steps. Only products
    of gates in (0, 1) are formed: no division, no logarithm, nothing to overflow.
    """
    a, b = a.clone(), b.clone()
    distance = 1
    while distance < a.shape[1]:
        # compute from the old values before writing: the slices overlap
        new_b = torch.addcmul(b[:, distance:], a[:, distance:], b[:, :-distance])
        new_a = a[:, distance:] * a[:, :-distance]
        b[:, distance:], a[:, distance:] = new_b, new_a
        distance *= 2
    return a, b


class _LinearScan(torch.autograd.Function):
    """c = linear_scan(a, b, c0) with a hand-written backward, itself one scan run backwards in time.

    With g_t = dL/dc_t summed over every later use of c_t, g_t = grad_t + a_(t+1) g_(t+1), so
    dL/db_t = g_t, dL/da_t = g_t c_(t-1) and dL/dc0 = a_1 g_1. Autograd through the scan's
    passes would store every intermediate instead.
    """

    @staticmethod
    def forward(ctx, a, b, c0):
        product, offset = _scan_pairs(a, b)
        c = torch.addcmul(offset, product, c0[:, None])
        ctx.save_for_backward(a, c, c0)
        return c

    @staticmethod
    def backward(ctx, grad):
        a, c, c0 = ctx.saved_tensors
        a_next = F.pad(a[:, 1:], (0, 0, 0, 1))  # nothing flows back from beyond the last step
        _, g = _scan_pairs(a_next.flip(1), grad.flip(1))
        g = g.flip(1)
        c_previous = torch.cat([c0[:, None], c[:, :-1]], dim=1)
        return g * c_previous, g, g[:, 0] * a[:, 0]


def linear_scan(a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """c_t = a_t * c_(t-1) + b_t for t = 1..T, with a in (0, 1): (B, T, H) each, c0 (B, H) -> c (B, T, H).

    A parallel scan over time in at least fp32 (bf16's 8-bit mantissa would drift over long
    products); one step (sampling, ONNX export) is the plain update.
    """
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.promote_types(c0.dtype, torch.float32))
    a, b, c0 = a.to(dtype), b.to(dtype), c0.to(dtype)
    if a.shape[1] == 1:
        return torch.addcmul(b, a, c0[:, None])
    return _LinearScan.apply(a, b, c0)


def reference_pool(a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """The same recurrence, one time step at a time (the parity reference)."""
    c, outputs = c0, []
    for t in range(a.shape[1]):
        c = a[:, t] * c + b[:, t]
        outputs.append(c)
    return torch.stack(outputs, dim=1)


class QRNNLayer(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, window: int, pooling: str):
        super().__init__()
        self.input_size, self.hidden_size, self.window, self.pooling = input_size, hidden_size, window, pooling
        self.linear = nn.Linear(window * input_size, POOLING_GATES[pooling] * hidden_size)

    def gates_input(self, x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """(B, T, I) -> (B, T, window * I): x_t, and x_(t-1) for window 2 (the masked convolution's view)."""
        if self.window == 1:
            return x
        shifted = torch.cat([previous[:, None], x[:, :-1]], dim=1)
        return torch.cat([x, shifted], dim=-1)

    def forward(self, x, c0, previous, weight_drop: float = 0.0, pool=linear_scan):
        weight = drop_connect(self.linear.weight, weight_drop, self.training)
        gates = F.linear(self.gates_input(x, previous), weight, self.linear.bias).chunk(POOLING_GATES[self.pooling], -1)
        z, f = torch.tanh(gates[0]), torch.sigmoid(gates[1])
        b = torch.sigmoid(gates[3]) * z if self.pooling == "ifo" else (1.0 - f) * z
        c = pool(f, b, c0)
        h = c if self.pooling == "f" else torch.sigmoid(gates[2]) * c
        return h, c[:, -1], x[:, -1]


class QRNNStack(nn.Module):
    """Stacked QRNN layers with RecurrentStack's interface: init_state(B) and forward(x, state)."""

    cell = "qrnn"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float, window: int,
                 pooling: str):
        super().__init__()
        self.hidden_size, self.num_layers, self.dropout, self.window = hidden_size, num_layers, dropout, window
        self.qrnn_layers = nn.ModuleList(
            QRNNLayer(input_size if k == 0 else hidden_size, hidden_size, window, pooling) for k in range(num_layers))

    def init_state(self, batch_size: int, device=None, dtype=None):
        """(c (L, B, H),) for window 1; window 2 adds the last inputs: (1, B, I) and (L-1, B, H)."""
        c = torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device, dtype=dtype)
        if self.window == 1:
            return (c,)
        first = torch.zeros(1, batch_size, self.qrnn_layers[0].input_size, device=device, dtype=dtype)
        rest = torch.zeros(self.num_layers - 1, batch_size, self.hidden_size, device=device, dtype=dtype)
        return c, first, rest

    def forward(self, x, state=None, weight_drop: float = 0.0,
                between: Callable[[torch.Tensor, int], torch.Tensor] | None = None, pool=linear_scan):
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        cs, lasts = [], []
        for k, layer in enumerate(self.qrnn_layers):
            previous = None
            if self.window == 2:
                previous = state[1][0] if k == 0 else state[2][k - 1]
            x, c, last = layer(x, state[0][k], previous, weight_drop, pool)
            cs.append(c)
            lasts.append(last)
            if k + 1 < self.num_layers:
                x = F.dropout(x, self.dropout, self.training)
                if between is not None:
                    x = between(x, k + 1)
        new_c = torch.stack(cs)
        if self.window == 1:
            return x, (new_c,)
        rest = torch.stack(lasts[1:]) if self.num_layers > 1 else state[2]
        return x, (new_c, lasts[0][None], rest)
