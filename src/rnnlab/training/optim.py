"""Optimizers and learning-rate schedules as small builders the training loop calls.

A schedule is a pure function of where the run is (step, epoch, progress), never of how many
times it was called, so a resumed run lands on exactly the same rate.
"""

from __future__ import annotations

import contextlib
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
    if config.optimizer == "amsgrad":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, amsgrad=True)
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if config.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, weight_decay=wd)
    if config.optimizer == "nt-asgd":  # plain SGD; the loop switches averaging on (WeightAverage)
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=config.momentum > 0,
                               weight_decay=wd)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def learning_rate_at(config: TrainConfig, step: int, epochs_done: int, progress: float,
                     plateau_factor: float = 1.0) -> float:
    """The rate for optimizer step `step` (0-based).

    epochs_done: completed passes over the training split (char-rnn decays once per epoch).
    progress: fraction of the planned run completed, in [0, 1] (drives the cosine schedule).
    plateau_factor: the decay the plateau schedule has accumulated (kept by the loop, saved).
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
    if config.schedule == "cyclic":
        floor = peak * config.min_lr_frac
        phase = (step % config.cycle_steps) / config.cycle_steps
        return floor + (peak - floor) * (1.0 - abs(2.0 * phase - 1.0))
    if config.schedule == "plateau":
        return peak * plateau_factor
    return peak


def nt_asgd_triggered(val_losses: list[float], interval: int) -> bool:
    """AWD-LSTM's non-monotone trigger (its main.py, `nonmono`): the newest val loss is worse than the
    best one from before the `interval` validations that preceded it. `val_losses` ends with the newest."""
    newest, previous = val_losses[-1], val_losses[:-1]
    return len(previous) > interval and newest > min(previous[:-interval])


class WeightAverage:
    """The running average of the parameters since averaging started (ASGD's averaged iterate)."""

    def __init__(self, params, count: int = 0, average: list[torch.Tensor] | None = None):
        self.params = list(params)
        self.count = count
        self.average = average if average is not None else [p.detach().clone() for p in self.params]

    def update(self) -> None:
        self.count += 1
        with torch.no_grad():
            for avg, p in zip(self.average, self.params, strict=True):
                avg.add_(p.detach() - avg, alpha=1.0 / self.count)

    @contextlib.contextmanager
    def swapped_in(self):
        """Evaluate (and save) with the averaged weights; the raw ones come back afterwards."""
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, avg in zip(self.params, self.average, strict=True):
                p.copy_(avg)
        try:
            yield raw
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw, strict=True):
                    p.copy_(r)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
