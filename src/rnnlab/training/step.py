"""One optimizer step on one batch, and where and in what precision it runs.

TrainingStep is the exact code `rnnlab train` runs per batch; the experiments and benchmarks time it.
"""

from __future__ import annotations

import contextlib

import torch

from rnnlab.config.run import check_precision_on
from rnnlab.errors import ConfigError
from rnnlab.training.optim import WeightAverage
from rnnlab.training.schemes import SequencePlan


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA GPU is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where the hardware computes it natively, else fp32."""
    check_precision_on(precision, device.type)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's thread count for a run's duration (0: leave it as it is), put back afterwards."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count:
            torch.set_num_threads(previous)


class StepForward(torch.nn.Module):
    """The loss of one batch: the model's forward, in segments where the plan cuts the sequence (resets,
    the state captured at k1). One module call per step, so that DistributedDataParallel, which wraps
    it under torchrun, sees the whole step as one forward (it tells which parameters a step used, e.g.
    an adaptive head's clusters, from one call)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs, targets, state, plan: SequencePlan | None = None, weights=None):
        if plan is None or len(plan.cuts) == 1:
            _, loss, carried = self.model(inputs, state, targets, weights)
            return loss, carried
        total, weight_sum, carried, start = 0.0, 0.0, None, 0
        for end in plan.cuts:
            if start in plan.resets:
                state = tuple(torch.zeros_like(s) for s in state)
            piece = weights[start:end] if weights is not None else None
            piece_weight = float(piece.sum()) if piece is not None else float(end - start)
            _, loss, state = self.model(inputs[:, start:end], state, targets[:, start:end], piece)
            if piece_weight > 0:
                total, weight_sum = total + loss * piece_weight, weight_sum + piece_weight
            if end == plan.transfer_at:
                carried = state
            start = end
        return total / weight_sum, carried if plan.transfer_at else state


class TrainingStep:
    """One optimizer step on one batch: forward (under autocast), backward, clip, update.

    The carried state comes back detached, so gradients never flow into the previous batch.
    """

    def __init__(self, model, optimizer, precision: str, grad_clip: float, device: torch.device):
        self.model, self.optimizer, self.grad_clip, self.device = model, optimizer, grad_clip, device
        self.precision = precision
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.averager: WeightAverage | None = None  # NT-ASGD's average, once triggered
        # what runs the batch forward: StepForward, or under torchrun its DistributedDataParallel wrapper
        # (which averages the gradients over the ranks in the backward pass)
        self.forward = StepForward(model)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, state, plan: SequencePlan | None = None,
                 weights: torch.Tensor | None = None):
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            loss, carried = self.forward(inputs, targets, state, plan, weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        skipped = scale is not None and self.scaler.get_scale() < scale  # fp16 overflow: no step was taken
        if self.averager is not None and not skipped:
            self.averager.update()
        return loss.detach(), tuple(s.detach().float() for s in carried)
