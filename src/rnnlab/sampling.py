"""The one sampler: next-token choice and progressive generation over any stepper.

A stepper is the model itself (`RecurrentLM`) or an engine built from it (`CpuStepEngine`); it
offers `init_state(B)`, `prime(tokens, state) -> (last logits, state)` and
`step(tokens, state) -> (logits, state)`. Generation is progressive: the prompt is read once and
every new token costs exactly one step with the carried state; the prefix is never re-run.
Ids in, ids out: this module knows nothing of characters.
Dimension legend: B = batch (independent samples or beams), V = vocabulary, T = prompt length.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from rnnlab.config import SampleConfig


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      argmax: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> ids (B,), after temperature, top-k and nucleus (top-p) filtering."""
    if argmax:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        probs = _nucleus(probs, top_p)
    # Inverse-CDF sampling: one uniform draw per row, cheaper than torch.multinomial for one row.
    cdf = probs.cumsum(dim=-1)
    draw = torch.rand((probs.shape[0], 1), generator=generator) * cdf[:, -1:]
    return (cdf < draw).sum(dim=-1).clamp_(max=vocab - 1)


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)  # the top token always stays
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def start(stepper, prime_ids: Sequence[int], batch_size: int):
    """State and next-token logits after reading the prompt (uniform logits if there is none)."""
    state = stepper.init_state(batch_size)
    if len(prime_ids) == 0:
        return torch.zeros(batch_size, stepper.vocab_size), state
    prompt = torch.tensor(list(prime_ids), dtype=torch.long)[None, :].expand(batch_size, -1).contiguous()
    logits, state = stepper.prime(prompt, state)
    return logits.float(), state


@torch.inference_mode()
def generate(stepper, prime_ids: Sequence[int], config: SampleConfig) -> Iterator[torch.Tensor]:
    """Yield the next token of each of the `num_samples` streams, (B,), `config.length` times."""
    generator = torch.Generator().manual_seed(config.seed)
    logits, state = start(stepper, prime_ids, config.num_samples)
    for position in range(config.length):
        token = sample_next_token(logits.float().cpu(), config.temperature, config.top_k, config.top_p,
                                  config.argmax, generator)
        yield token
        if position + 1 < config.length:
            logits, state = stepper.step(token, state)


@torch.inference_mode()
def beam_search(stepper, prime_ids: Sequence[int], length: int, beam_width: int) -> list[int]:
    """The most likely continuation of `length` tokens found with `beam_width` beams."""
    logits, state = start(stepper, prime_ids, 1)
    scores = torch.zeros(1)
    sequences = torch.zeros(1, 0, dtype=torch.long)
    for position in range(length):
        log_probs = torch.log_softmax(logits.float().cpu(), dim=-1)  # (beams, V)
        candidates = (scores[:, None] + log_probs).reshape(-1)
        scores, flat = candidates.topk(min(beam_width, candidates.numel()))
        parent, token = flat // log_probs.shape[1], flat % log_probs.shape[1]
        sequences = torch.cat([sequences[parent], token[:, None]], dim=1)
        if position + 1 < length:
            state = tuple(s.index_select(1, parent).contiguous() for s in state)
            logits, state = stepper.step(token, state)
    return sequences[0].tolist()


def make_stepper(model, config: SampleConfig):
    """The fastest exact stepper for where the model lives: the NumPy engine on CPU, else the model."""
    device = next(model.parameters()).device
    if config.fast and device.type == "cpu":
        from rnnlab.models.cpu_engine import CpuStepEngine
        return CpuStepEngine(model)
    return model
