"""Optimizers and learning-rate schedules as small builders the training loop calls.

A schedule is a pure function of where the run is (step, epoch, progress), never of how many
times it was called, so a resumed run lands on exactly the same rate.
"""

from __future__ import annotations

import math

import torch

from rnnlab.config import TrainConfig


def build_optimizer(params, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = list(params)
    lr, wd = config.learning_rate, config.weight_decay
    fused = device.type in ("cpu", "cuda")  # one fused kernel per step instead of many small ops
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=fused)
    if config.optimizer == "rmsprop":  # char-rnn's default optimizer, with its decay rate 0.95
        return torch.optim.RMSprop(params, lr=lr, alpha=0.95, eps=1e-8, weight_decay=wd)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=config.momentum > 0,
                               weight_decay=wd)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def learning_rate_at(config: TrainConfig, step: int, epochs_done: int, progress: float) -> float:
    """The rate for optimizer step `step` (0-based).

    epochs_done: completed passes over the training split (char-rnn decays once per epoch).
    progress: fraction of the planned run completed, in [0, 1] (drives the cosine schedule).
    """
    peak = config.learning_rate
    if config.warmup_steps and step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "char-rnn":
        decays = max(0, epochs_done - config.decay_after + 1)
        return peak * config.decay_rate ** decays
    if config.schedule == "cosine":
        floor = peak * config.min_lr_frac
        p = min(max(progress, 0.0), 1.0)
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * p))
    return peak


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
