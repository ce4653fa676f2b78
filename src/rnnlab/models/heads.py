"""Output heads other than the plain linear softmax: adaptive softmax and a mixture of softmaxes.

Each maps the last hidden layer (..., D) to log-probabilities over the vocabulary (..., V) for
sampling and scoring, and gives the per-token negative log-likelihood of targets for training
without building what it does not need (the adaptive head never builds full logits there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdaptiveHead(nn.Module):
    """PyTorch's adaptive softmax (Grave et al.): a head cluster for frequent ids, smaller tails for rare ones."""

    def __init__(self, width: int, vocab_size: int, cutoffs: list[int]):
        super().__init__()
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(width, vocab_size, cutoffs, div_value=4.0)

    # PyTorch's adaptive softmax mixes dtypes under autocast (index_copy_ of bf16 into fp32), so it runs in fp32.

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1]).float()
        with torch.autocast(flat.device.type, enabled=False):
            return self.adaptive.log_prob(flat).view(*hidden.shape[:-1], -1)

    def token_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1]).float()
        with torch.autocast(flat.device.type, enabled=False):
            return -self.adaptive(flat, targets.reshape(-1)).output.view(targets.shape)


class MixtureOfSoftmaxes(nn.Module):
    """Yang et al.'s MoS: K softmaxes over K projections of the context, mixed by a learned prior."""

    def __init__(self, width: int, vocab_size: int, experts: int):
        super().__init__()
        self.experts = experts
        self.prior = nn.Linear(width, experts, bias=False)
        self.latent = nn.Linear(width, experts * width)
        self.decoder = nn.Linear(width, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        latent = torch.tanh(self.latent(hidden)).view(*hidden.shape[:-1], self.experts, hidden.shape[-1])
        log_components = F.log_softmax(self.decoder(latent).float(), dim=-1)  # (..., K, V)
        log_prior = F.log_softmax(self.prior(hidden).float(), dim=-1)[..., None]  # (..., K, 1)
        return torch.logsumexp(log_prior + log_components, dim=-2)

    def token_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -self(hidden).gather(-1, targets[..., None])[..., 0]
