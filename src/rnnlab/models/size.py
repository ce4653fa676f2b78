"""How big a model and its work are, known before anything is allocated.

A hidden size of 10^7 or an embedding of 10^11 must be refused with the figure, not die in an
allocator (or take the machine's memory down with it). The model is built on PyTorch's meta device
(shapes without storage, about a millisecond), so the count is the model's own, whatever its cell,
head or regularizers, and a checkpoint's saved shapes can be compared with what its config builds.
"""

from __future__ import annotations

import os

import torch

from rnnlab.errors import ConfigError


def meta_model(model_config, vocab_size: int, learned_initial_state: bool = False):
    """The model a config builds, with no memory behind its tensors."""
    from rnnlab.models.lm import RecurrentLM

    with torch.device("meta"):
        return RecurrentLM(model_config, vocab_size, learned_initial_state)


def parameter_count(model_config, vocab_size: int, learned_initial_state: bool = False) -> int:
    return sum(p.numel() for p in meta_model(model_config, vocab_size, learned_initial_state).parameters())


def training_bytes(model_config, vocab_size: int, batch_size: int, seq_length: int, learned: bool = False) -> int:
    """A low estimate of training's memory: fp32 weights, gradients and two Adam moments (16 bytes per
    parameter), the logits and their gradient, and the layers' activations for one batch."""
    tokens = batch_size * seq_length
    layers = model_config.num_layers * model_config.hidden_size * 8  # gates, cell and output per layer
    return 16 * parameter_count(model_config, vocab_size, learned) + 4 * tokens * (2 * vocab_size + layers)


def sampling_bytes(model, streams: int, beam: bool = False) -> int:
    """An estimate of generating `streams` streams at once (samples or beams): per stream its state in
    the engine's form (the recurrent terms too) and a step's temporaries (about ten times the model's
    state: gates, products), its logits, scores and noise, and for beam search every beam's candidates."""
    state = sum(s.numel() for s in model.init_state(1, torch.device("meta")))
    candidates = 16 * streams * model.vocab_size if beam else 0
    return 4 * streams * (10 * state + 4 * model.vocab_size) + candidates


def machine_memory(device: torch.device) -> int | None:
    """The memory a run on `device` can have at most (the GPU's, or the machine's RAM), if known."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(needed: int, device: torch.device, what: str, advice: str) -> None:
    total = machine_memory(device)
    if total and needed > total:
        raise ConfigError(f"{what} needs about {_gigabytes(needed)} of memory and this "
                          f"{'GPU' if device.type == 'cuda' else 'machine'} has {_gigabytes(total)}; {advice}")


def _gigabytes(size: int) -> str:
    return f"{size / 2 ** 30:,.1f} GB" if size < 2 ** 50 else f"{size / 2 ** 30:.2e} GB"
