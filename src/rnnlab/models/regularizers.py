"""AWD-LSTM's regularizers, each a small function applied by the model (no monkeypatching).

Dimension legend: B = batch, T = time, D = features, V = vocabulary, E = embedding width.
Every function is the identity when `training` is False or the rate is 0.
"""

from __future__ import annotations

import torch


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational dropout: one mask per sequence, (B, 1, D), shared by every time step of x (B, T, D)."""
    if not training or p == 0.0:
        return x
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1.0 - p) / (1.0 - p)
    return x * mask


def embedding_dropout(weight: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drop whole tokens: zero rows of the (V, E) embedding matrix, so a dropped word vanishes everywhere."""
    if not training or p == 0.0:
        return weight
    mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1.0 - p) / (1.0 - p)
    return weight * mask


def drop_connect(weight: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """DropConnect on a weight matrix (AWD's weight drop): one mask per forward call, i.e. per sequence,
    so every time step of the sequence sees the same dropped hidden-to-hidden weights."""
    if not training or p == 0.0:
        return weight
    return weight * (weight.new_empty(weight.shape).bernoulli_(1.0 - p) / (1.0 - p))


def activation_penalty(dropped_outputs: torch.Tensor, alpha: float) -> torch.Tensor | float:
    """AR: alpha * mean of the squared (dropped) last-layer outputs."""
    return alpha * dropped_outputs.pow(2).mean() if alpha else 0.0


def temporal_activation_penalty(outputs: torch.Tensor, beta: float) -> torch.Tensor | float:
    """TAR: beta * mean of the squared change of the (undropped) last-layer outputs between steps."""
    if not beta or outputs.shape[1] < 2:
        return 0.0
    return beta * (outputs[:, 1:] - outputs[:, :-1]).pow(2).mean()
