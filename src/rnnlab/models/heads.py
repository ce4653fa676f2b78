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


class TiedAdaptiveHead(nn.Module):
    """Adaptive softmax whose output vectors are the input embedding's rows (tied adaptive softmax).

    The frequent ids [0, c_0) are scored in the head together with one logit per tail cluster;
    a tail cluster [c_k, c_(k+1)) is scored, only for the positions that need it, against its own
    embedding rows after a learned E x E projection of the context. No (V, E) output matrix exists
    besides the embedding, so the head shares its storage (and gradient) with the input layer.
    """

    def __init__(self, embedding: nn.Embedding, cutoffs: list[int]):
        super().__init__()
        self._embedding = [embedding]  # a list: the model owns (and saves) the embedding, not the head
        vocab_size, width = embedding.weight.shape
        self.bounds = [0, *cutoffs, vocab_size]
        self.cluster_logits = nn.Linear(width, len(cutoffs))
        self.projections = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in cutoffs)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    @property
    def weight(self) -> torch.Tensor:
        return self._embedding[0].weight

    def _head_log_probs(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, E) -> (N, c_0 + K) log-probabilities of the frequent ids and of each tail cluster."""
        shortlist = flat @ self.weight[:self.bounds[1]].T + self.bias[:self.bounds[1]]
        return F.log_softmax(torch.cat([shortlist, self.cluster_logits(flat)], dim=-1).float(), dim=-1)

    def _tail_log_probs(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        """(N, E) -> (N, size of cluster k) log-probabilities within tail cluster k."""
        lo, hi = self.bounds[k + 1], self.bounds[k + 2]
        return F.log_softmax((self.projections[k](flat) @ self.weight[lo:hi].T + self.bias[lo:hi]).float(), dim=-1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])
        head = self._head_log_probs(flat)
        shortlist = self.bounds[1]
        parts = [head[:, :shortlist]] + [self._tail_log_probs(flat, k) + head[:, shortlist + k:shortlist + k + 1]
                                         for k in range(len(self.projections))]
        return torch.cat(parts, dim=-1).view(*hidden.shape[:-1], -1)

    def token_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        flat, wanted = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        head = self._head_log_probs(flat)
        shortlist = self.bounds[1]
        cluster = torch.bucketize(wanted, torch.tensor(self.bounds[1:-1], device=wanted.device), right=True)
        head_index = torch.where(cluster == 0, wanted, shortlist + cluster - 1)
        log_prob = head.gather(1, head_index[:, None])[:, 0]
        for k in range(len(self.projections)):
            rows = (cluster == k + 1).nonzero()[:, 0]
            if len(rows):
                within = self._tail_log_probs(flat[rows], k).gather(1, (wanted[rows] - self.bounds[k + 1])[:, None])
                log_prob = log_prob.index_add(0, rows, within[:, 0])
        return -log_prob.view(targets.shape)


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
