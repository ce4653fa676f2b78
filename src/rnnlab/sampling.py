"""The one sampler: next-token choice and progressive generation over any stepper.

A stepper is the model itself (`RecurrentLM`) or an engine built from it (`CpuStepEngine`); it
offers `init_state(B)`, `prime(tokens, state) -> (last logits, state)` and
`step(tokens, state) -> (logits, state)`. Generation is progressive: the prompt is read once and
every new token costs exactly one step with the carried state; the prefix is never re-run.
Ids in, ids out: this module knows nothing of characters.
Dimension legend: B = batch (independent samples or beams), V = vocabulary, T = prompt length.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from rnnlab.config import SampleConfig


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      argmax: bool = False, generator: torch.Generator | None = None,
                      gumbel: torch.Tensor | None = None) -> torch.Tensor:
    """logits (B, V) -> ids (B,), after temperature, top-k and nucleus (top-p) filtering.

    `gumbel` (B, V) is -log E with E ~ Exp(1), drawn ahead of time (see `gumbel_noise`); without
    it the noise is drawn here from `generator`.
    """
    if argmax:
        return logits.argmax(dim=-1)
    scores = logits.float()
    if temperature != 1.0:
        scores = scores / temperature
    vocab = scores.shape[-1]
    if 0 < top_k < vocab:
        kth_best = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    if top_p < 1.0:
        scores = scores.masked_fill(~_nucleus(torch.softmax(scores, dim=-1), top_p), float("-inf"))
    # The exponential race (Gumbel-max): argmax(s - log E) with E ~ Exp(1) is an exact draw from
    # softmax(s), in fewer small ops than a cumulative sum or torch.multinomial.
    if gumbel is None:
        gumbel = gumbel_noise(generator, 1, *scores.shape)[0]
    return (scores + gumbel).argmax(dim=-1)


def gumbel_noise(generator: torch.Generator | None, steps: int, batch: int, vocab: int) -> torch.Tensor:
    """(steps, B, V) of -log E, E ~ Exp(1): the sampling noise of many steps in one draw (one
    vectorized call instead of four small ones per generated token)."""
    noise = torch.empty(steps, batch, vocab).exponential_(generator=generator)
    return noise.clamp_min_(1e-30).log_().neg_()  # clamped: log(0) = -inf


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask of the smallest set of tokens whose probability reaches top_p (the top token always)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    return torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, mass_before < top_p)


NOISE_BLOCK = 256  # tokens whose sampling noise is drawn at once (the text for a seed does not depend on it)


@contextlib.contextmanager
def torch_threads_for(stepper):
    """One torch thread while a NumPy engine steps: torch's idle OpenMP workers spin on the cores
    that OpenBLAS needs (64 streams ran 3x slower with two torch threads than with one)."""
    previous = torch.get_num_threads()
    if getattr(stepper, "uses_blas_threads", False):
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
    """Yield the next token of each of the `num_samples` streams, (B,), `config.length` times.

    Progressive: one step per token with the carried state. Windowed: before every token the last
    `config.window` tokens are read again from a fresh initial state (the paper's Algorithm 4).
    """
    generator = torch.Generator().manual_seed(config.seed)
    batch = config.num_samples
    windowed = config.sampling == "windowed"
    if windowed:
        context = torch.tensor(list(prime_ids), dtype=torch.long)[None, :].expand(batch, -1)
        context = context[:, -config.window:]
    logits, state = start(stepper, prime_ids[-config.window:] if windowed else prime_ids, batch)
    block = NOISE_BLOCK
    with torch_threads_for(stepper):
        for position in range(config.length):
            if not config.argmax and position % block == 0:
                noise = gumbel_noise(generator, block, batch, logits.shape[-1])
            token = sample_next_token(logits.cpu(), config.temperature, config.top_k, config.top_p, config.argmax,
                                      gumbel=None if config.argmax else noise[position % block])
            yield token
            if position + 1 == config.length:
                break
            if windowed:
                context = torch.cat([context, token[:, None]], dim=1)[:, -config.window:]
                logits, _ = stepper.prime(context, stepper.init_state(batch))
            else:
                logits, state = stepper.step(token, state)


@torch.inference_mode()
def beam_search(stepper, prime_ids: Sequence[int], length: int, beam_width: int) -> list[int]:
    """The most likely continuation of `length` tokens found with `beam_width` beams."""
    logits, state = start(stepper, prime_ids, 1)
    with torch_threads_for(stepper):
        return _beam_steps(stepper, logits, state, length, beam_width)


def _beam_steps(stepper, logits, state, length: int, beam_width: int) -> list[int]:
    scores = torch.zeros(1)
    sequences = torch.zeros(1, 0, dtype=torch.long)
    for position in range(length):
        log_probs = torch.log_softmax(logits.float().cpu(), dim=-1)  # (beams, V)
        candidates = (scores[:, None] + log_probs).reshape(-1)
        scores, flat = candidates.topk(min(beam_width, candidates.numel()))
        parent, token = flat // log_probs.shape[1], flat % log_probs.shape[1]
        sequences = torch.cat([sequences[parent], token[:, None]], dim=1)
        if position + 1 < length:
            state = tuple(s.index_select(1, parent.to(s.device)).contiguous() for s in state)
            logits, state = stepper.step(token, state)
    return sequences[0].tolist()


def make_stepper(model, config: SampleConfig):
    """The fastest stepper for where the model lives: the CPU engine (int8 or exact fp32 weights, as
    `config.precision` says) on CPU, else the model itself."""
    device = next(model.parameters()).device
    plain_output = model.head is not None and model.projection is None  # what the engine re-expresses
    if config.fast and device.type == "cpu" and plain_output:
        from rnnlab.models.cpu_engine import step_engine
        return step_engine(model, config.precision)
    return model
