"""The one sampler: the prompt policy, the next-token choice and generation, for every door (the CLI,
the training preview, the server and the ONNX engine).

A stepper is the model itself (`RecurrentLM`), an engine built from it (the CPU engine) or the ONNX
engine. It offers `vocab_size`, `init_state(B)`, `prime(tokens (B, T), state) -> (last logits (B, V),
state)` and `step(tokens (B,), state) -> (logits (B, V), state)`, in torch tensors, or in NumPy arrays
where it says `takes_numpy = True`. The sampling itself is NumPy, seeded by NumPy's PCG64, so the ONNX
engine runs it on a host without PyTorch, and a seed gives the same text through every stepper and
every door, whatever the batch of streams around it.
Generation is progressive (the prompt is read once; every new token costs one step with the carried
state) or windowed (the paper's Algorithm 4: the last `window` tokens re-read from a fresh state for
every new token). Ids in, ids out; `prompt_ids` and the vocabularies' detokenizers do the text.
Dimension legend: B = batch (independent samples or beams), V = vocabulary, T = prompt length.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from rnnlab.config import WINDOWED_SCHEMES, SampleConfig, build_section, unused_section_settings
from rnnlab.errors import RnnlabError

log = logging.getLogger("rnnlab")

NOISE_BLOCK = 256  # tokens whose sampling noise is drawn at once (the text for a seed does not depend on it)
NOISE_BYTES = 64 * 2 ** 20  # ... unless that would hold more than this: many streams of a large vocabulary


# --- choosing the next token -------------------------------------------------------------------

def sample_next_token(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, argmax: bool = False,
                      rng: np.random.Generator | None = None, gumbel: np.ndarray | None = None) -> np.ndarray:
    """logits (B, V) -> ids (B,), after temperature, top-k and nucleus (top-p) filtering.

    `gumbel` (B, V) is -log E with E ~ Exp(1), drawn ahead of time (see `gumbel_noise`); without it
    the noise is drawn here from `rng`.
    """
    scores = as_numpy(logits)
    if argmax:
        return scores.argmax(axis=-1)
    if temperature != 1.0:
        scores = scores / np.float32(temperature)
    vocab = scores.shape[-1]
    if 0 < top_k < vocab:
        kth_best = np.partition(scores, vocab - top_k, axis=-1)[:, vocab - top_k:vocab - top_k + 1]
        scores = np.where(scores < kth_best, -np.inf, scores)
    if top_p < 1.0:
        scores = np.where(_nucleus(_softmax(scores), top_p), scores, -np.inf)
    # The exponential race (Gumbel-max): argmax(s - log E) with E ~ Exp(1) is an exact draw from
    # softmax(s), in fewer small operations than a cumulative sum.
    if gumbel is None:
        gumbel = gumbel_noise(rng if rng is not None else np.random.default_rng(), 1, *scores.shape)[0]
    return (scores + gumbel).argmax(axis=-1)


def gumbel_noise(rng: np.random.Generator, steps: int, batch: int, vocab: int) -> np.ndarray:
    """(steps, B, V) of -log E, E ~ Exp(1): the noise of many steps in one draw. NumPy fills it in order,
    so drawing a block or one step at a time gives the same numbers."""
    noise = rng.standard_exponential((steps, batch, vocab), dtype=np.float32)
    return -np.log(np.maximum(noise, np.float32(1e-30)))  # clamped: log(0) = -inf


def _softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Mask of the smallest set of tokens whose probability reaches top_p (the top token always)."""
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    keep = (np.cumsum(sorted_probs, axis=-1) - sorted_probs) < top_p
    mask = np.zeros_like(keep)
    np.put_along_axis(mask, order, keep, axis=-1)
    return mask


class TokenSampler:
    """The next token of B streams under one SampleConfig and seed; its noise is drawn NOISE_BLOCK
    steps at a time. The CLI, the server (one per completion) and the ONNX engine all choose here."""

    def __init__(self, config: SampleConfig, batch: int = 1, seed: int | None = None):
        self.config, self.batch = config, batch
        self.rng = np.random.default_rng(config.seed if seed is None else seed)
        self.noise, self.used = None, 0

    def __call__(self, logits) -> np.ndarray:
        c = self.config
        if c.argmax:
            return sample_next_token(logits, argmax=True)
        scores = as_numpy(logits)
        if self.used == len(self.noise if self.noise is not None else ()):
            steps = max(1, min(NOISE_BLOCK, NOISE_BYTES // (4 * self.batch * scores.shape[-1])))
            self.noise, self.used = gumbel_noise(self.rng, steps, self.batch, scores.shape[-1]), 0
        self.used += 1
        return sample_next_token(scores, c.temperature, c.top_k, c.top_p, gumbel=self.noise[self.used - 1])


# --- the prompt and a model's own defaults -----------------------------------------------------

@dataclass
class Prompt:
    ids: list[int]  # what the model reads first (its line start when the text is empty)
    text: str  # the prompt as the model reads it (unknown pieces dropped)
    dropped: list[str]  # characters (words, for a word model) the vocabulary lacks


def prompt_ids(vocab, text: str, unknown: str = "skip") -> Prompt:
    """A prompt in a model's vocabulary: pieces it does not know are dropped (and listed), or refused
    with unknown="error"; an empty prompt starts where a line starts."""
    dropped = vocab.unknown_pieces(text)
    if dropped and unknown == "error":
        from rnnlab.data.vocab import describe_chars
        what = "characters" if vocab.kind == "char" else "words"
        raise RnnlabError(f"the prime text has {what} the model's vocabulary lacks: {describe_chars(dropped)} "
                          f"(use --unknown skip to drop them)")
    kept = vocab.drop_unknown(text) if dropped else text
    return Prompt(vocab.encode(kept).tolist() if kept else vocab.line_start(), kept, dropped)


def sampling_defaults(train_config) -> dict:
    """How a model samples unless told otherwise: a model trained with the paper's scheme 1 or 2
    samples windowed over its k2, as the paper does; every other one progressively."""
    if train_config.scheme in WINDOWED_SCHEMES:
        return {"sampling": "windowed", "window": train_config.seq_length}
    return {}


def sample_config_for(train_config, given: dict) -> SampleConfig:
    """The settings a checkpoint samples with: its own defaults (sampling_defaults) under the ones
    given; a given setting that would do nothing is reported."""
    config = build_section(SampleConfig, {**sampling_defaults(train_config), **given})
    for message in unused_section_settings(config, given):
        log.warning("warning: %s", message)
    return config


def stream_text(stepper, vocab, prompt: Prompt, config: SampleConfig) -> Iterator[list[str]]:
    """The text of every stream as it is generated: one list of B pieces per token, each stream
    detokenized as it goes (so a word model's spacing and a BPE model's bytes come out right)."""
    detokenizers = [vocab.detokenizer(after=prompt.text) for _ in range(config.num_samples)]
    for tokens in generate(stepper, prompt.ids, config):
        yield [d.push(int(t)) for d, t in zip(detokenizers, tokens.tolist(), strict=True)]


def complete_texts(stepper, vocab, prompt: Prompt, config: SampleConfig) -> list[str]:
    """The whole continuation of every stream (beam search when config.beam_width is set)."""
    if config.beam_width:
        detokenizer = vocab.detokenizer(after=prompt.text)
        return ["".join(detokenizer.push(i) for i in beam_search(stepper, prompt.ids, config.length,
                                                                  config.beam_width))]
    columns = list(zip(*stream_text(stepper, vocab, prompt, config), strict=True))
    return ["".join(column) for column in columns] if columns else [""] * config.num_samples


# --- generation --------------------------------------------------------------------------------

def generate(stepper, prime_ids: Sequence[int], config: SampleConfig) -> Iterator[np.ndarray]:
    """Yield the next token of each of the `num_samples` streams, (B,), `config.length` times."""
    tokens = _generate(stepper, prime_ids, config)
    with torch_threads_for(stepper), _stepping(stepper):
        while True:
            with _inference(stepper):  # (entered per token: the caller's code between tokens is its own)
                token = next(tokens, None)
            if token is None:
                return
            yield token


def _generate(stepper, prime_ids: Sequence[int], config: SampleConfig) -> Iterator[np.ndarray]:
    batch, window = config.num_samples, config.window
    windowed = config.sampling == "windowed"
    sampler = TokenSampler(config, batch)
    if windowed:
        tail = np.asarray(list(prime_ids)[-window:], dtype=np.int64)
        context = np.broadcast_to(tail[None, :], (batch, len(tail)))
    logits, state = start(stepper, prime_ids[-window:] if windowed else prime_ids, batch)
    for position in range(config.length):
        token = sampler(logits)
        yield token
        if position + 1 == config.length:
            return
        if windowed:
            context = np.concatenate([context, token[:, None]], axis=1)[:, -window:]
            logits, _ = prime(stepper, context, stepper.init_state(batch))
        else:
            logits, state = step(stepper, token, state)


def start(stepper, prime_ids: Sequence[int], batch_size: int):
    """State and next-token logits (B, V) after reading the prompt (uniform logits if there is none)."""
    state = stepper.init_state(batch_size)
    if len(prime_ids) == 0:
        return np.zeros((batch_size, stepper.vocab_size), np.float32), state
    prompt = np.broadcast_to(np.asarray(list(prime_ids), dtype=np.int64)[None, :], (batch_size, len(prime_ids)))
    return prime(stepper, prompt, state)


def prime(stepper, tokens: np.ndarray, state):
    """The stepper reads tokens (B, T); NumPy logits of the last one, and its state."""
    logits, state = stepper.prime(_for_stepper(stepper, tokens), state)
    return as_numpy(logits), state


def step(stepper, tokens: np.ndarray, state):
    """One step of the stepper for tokens (B,); NumPy logits and its state."""
    logits, state = stepper.step(_for_stepper(stepper, tokens), state)
    return as_numpy(logits), state


def beam_search(stepper, prime_ids: Sequence[int], length: int, beam_width: int) -> list[int]:
    """The most likely continuation of `length` tokens found with `beam_width` beams."""
    with torch_threads_for(stepper), _stepping(stepper), _inference(stepper):
        logits, state = start(stepper, prime_ids, 1)
        scores = np.zeros(1)
        sequences = np.zeros((1, 0), dtype=np.int64)
        for position in range(length):
            shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # (beams, V)
            candidates = (scores[:, None] + log_probs).reshape(-1)
            width = min(beam_width, candidates.size)
            flat = np.argsort(-candidates, kind="stable")[:width]
            scores = candidates[flat]
            parent, token = flat // log_probs.shape[1], flat % log_probs.shape[1]
            sequences = np.concatenate([sequences[parent], token[:, None]], axis=1)
            if position + 1 < length:
                logits, state = step(stepper, token, take_rows(state, parent))
    return sequences[0].tolist()


def largest_probability_gap(reference, candidate, prime_ids: Sequence[int], steps: int = 300, seed: int = 0) -> float:
    """The largest difference between two steppers' next-token probabilities along one text drawn from
    the reference's own distribution: how far an engine (int8, say) strays from the model it came from."""
    return gap_along(candidate, reference_text(reference, prime_ids, steps, seed))


@dataclass
class ReferenceText:
    """A text drawn from a reference stepper after a prompt, with the reference's next-token probabilities
    at every position: any number of candidates can then be scored along it without re-running the
    reference."""
    prime_ids: list[int]
    tokens: np.ndarray  # (steps,) drawn from the reference's distribution
    probs: np.ndarray  # (steps, V) the reference's probabilities before each token


def reference_text(reference, prime_ids: Sequence[int], steps: int, seed: int = 0) -> ReferenceText:
    rng = np.random.default_rng(seed)
    tokens, probs = [], []
    with _inference(reference):
        logits, state = start(reference, prime_ids, 1)
        for position in range(steps):
            p = _softmax(logits.astype(np.float64))[0]
            token = int(rng.choice(len(p), p=p))
            tokens.append(token)
            probs.append(p)
            if position + 1 < steps:
                logits, state = step(reference, np.array([token], dtype=np.int64), state)
    return ReferenceText(list(prime_ids), np.array(tokens, dtype=np.int64), np.stack(probs))


def gap_along(candidate, text: ReferenceText) -> float:
    """The largest difference between the candidate's next-token probabilities and the reference's along
    the reference's text."""
    worst = 0.0
    with _inference(candidate):
        logits, state = start(candidate, text.prime_ids, 1)
        for position, token in enumerate(text.tokens):
            worst = max(worst, float(np.abs(_softmax(logits.astype(np.float64))[0] - text.probs[position]).max()))
            if position + 1 < len(text.tokens):
                logits, state = step(candidate, np.array([token], dtype=np.int64), state)
    return worst


def take_rows(state, index: np.ndarray):
    """The state of the streams `index` (B',), in order: dim 1 of every state tensor is the batch."""
    return tuple(s[:, index] if isinstance(s, np.ndarray)
                 else s.index_select(1, _torch().from_numpy(np.asarray(index, np.int64)).to(s.device)).contiguous()
                 for s in state)


def concat_rows(a, b):
    """Two batches of streams' states as one."""
    return tuple(np.concatenate([x, y], axis=1) if isinstance(x, np.ndarray) else _torch().cat([x, y], dim=1)
                 for x, y in zip(a, b, strict=True))


def as_numpy(logits) -> np.ndarray:
    if hasattr(logits, "detach"):  # a torch tensor, on whatever device and in whatever precision
        return logits.detach().float().cpu().numpy()
    return np.asarray(logits, dtype=np.float32)


def _for_stepper(stepper, tokens: np.ndarray):
    tokens = np.array(tokens, dtype=np.int64)  # (a copy: torch wants a writable array)
    return tokens if getattr(stepper, "takes_numpy", False) else _torch().from_numpy(tokens)


def _torch():
    import torch
    return torch


def _inference(stepper):
    """torch's inference mode around a torch stepper's work (no autograd graph for the weights)."""
    return contextlib.nullcontext() if getattr(stepper, "takes_numpy", False) else _torch().inference_mode()


def _stepping(stepper):
    """The model's single-step mode held for a whole generation (engines need none)."""
    hold = getattr(stepper, "stepping", None)
    return hold() if callable(hold) else contextlib.nullcontext()


@contextlib.contextmanager
def torch_threads_for(stepper):
    """One torch thread while a NumPy engine steps: torch's idle OpenMP workers spin on the cores
    that OpenBLAS needs (64 streams ran 3x slower with two torch threads than with one)."""
    if not getattr(stepper, "uses_blas_threads", False):
        yield
        return
    torch = _torch()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_stepper(model, config: SampleConfig, share_weights: bool = False):
    """The fastest stepper for where the model lives: on CPU an engine (`config.engine_weights`: the most
    accurate fast one by default, see `accurate_engine`; with `share_weights`, an fp32 engine works in the
    model's own memory), else the model itself."""
    device = next(model.parameters()).device
    plain_output = model.head is not None and model.projection is None  # what the engines re-express
    if config.fast and device.type == "cpu" and plain_output:
        if config.engine_weights == "auto":
            return accurate_engine(model, share_weights, streams=max(config.num_samples, config.beam_width))
        return cpu_engine(model, config.engine_weights, share_weights)
    return model


def cpu_engine(model, weights, share_weights: bool = False):
    """The CPU engine with these weights: the compiled step (fast_engine) for int8, int12 and fp16 (or one of
    them per layer) where it runs this model, else the NumPy engine (int8 through fbgemm; int12 and fp16
    become exact fp32, said once)."""
    from rnnlab.models import fast_engine
    from rnnlab.models.cpu_engine import step_engine

    compiled = weights in fast_engine.WEIGHTS or not isinstance(weights, str)  # (or one of them per layer)
    if compiled and fast_engine.supports(model):
        if "int12" in ((weights,) if isinstance(weights, str) else weights) and not fast_engine.int12_is_fast(1):
            log.warning("warning: this CPU has no AVX-512 VNNI: int12 weights run in portable C, slower than fp16 "
                        "(--engine-weights auto picks for this CPU)")
        try:
            return fast_engine.FastStepEngine(model, weights)
        except ValueError as error:  # (fp16: weights beyond its range)
            log.warning("warning: the compiled engine cannot hold this model in %s (%s): sampling with exact fp32 "
                        "weights", _weights_line(weights), error)
            return step_engine(model, "fp32", share_weights)
    if weights in ("int12", "fp16") or not isinstance(weights, str):
        log.warning("warning: %s weights need the compiled step (%s): sampling with exact fp32 weights",
                    _weights_line(weights), fast_engine.why_not(model))
        weights = "fp32"
    return step_engine(model, weights, share_weights)


def _weights_line(weights) -> str:
    """"int8", "fp16", or a per-layer tuple's name ("fp16+int8")."""
    from rnnlab.models import fast_engine

    return weights if isinstance(weights, str) else fast_engine.weights_name(weights)


def stepper_name(stepper) -> str:
    """What steps: "compiled int8 (avx512vnni kernels)", "numpy fp32", "torch step", ..."""
    if hasattr(stepper, "kernels"):
        return f"compiled {stepper.weights} ({stepper.kernels} kernels)"
    if hasattr(stepper, "weights"):
        return f"numpy {stepper.weights}"
    return "torch step" if hasattr(stepper, "parameters") else type(stepper).__name__


ENGINE_TOLERANCE = 1e-2  # the most an engine's next-token probabilities may differ from the fp32 model's
PROBE_STEPS = 250  # tokens per probe text
PROBE_PROMPTS = 3  # probe texts after random prompts, besides the one from token 0


def probe_texts(model) -> list[ReferenceText]:
    """The probe: texts the fp32 model draws itself (seeded), PROBE_STEPS tokens each, one after token 0
    (a line start, for a char model) and PROBE_PROMPTS after prompts of 4 random tokens — odd contexts
    are where a rounded engine strays most (one 2x512 checkpoint: 6.9e-3 after token 0, 7.8e-2 after
    three unusual characters). The reference is the exact NumPy engine where it runs the model (it is
    the model's step to 1e-6, and faster), else the model itself."""
    from rnnlab.models.cpu_engine import step_engine

    reference = step_engine(model, "fp32") if model.head is not None and model.projection is None else model
    rng = np.random.default_rng(0)
    prompts = [[0]] + [rng.integers(0, model.vocab_size, 4).tolist() for _ in range(PROBE_PROMPTS)]
    return [reference_text(reference, prompt, PROBE_STEPS, seed=i) for i, prompt in enumerate(prompts)]


def accurate_engine(model, share_weights: bool = False, tolerance: float = ENGINE_TOLERANCE, streams: int = 1):
    """The fastest engine for `streams` streams that stays within `tolerance` of the model's own fp32 step on
    this model, along a short deterministic probe (`probe_texts`: 4 x PROBE_STEPS tokens the model draws
    itself): the compiled engine with int8 weights, else with a finer format for its lowest layer(s), then
    everywhere (int12 where fast_engine.int12_is_fast, else fp16), then fp16 everywhere
    (fast_engine.weight_ladder); where the compiled step does not run the model, fbgemm's int8; else the
    exact fp32 engine. A fallback is said once. The gaps measured are kept as `probe_gaps` ({weights:
    gap}, in the order tried) and the chosen engine's as `probe_gap` (absent for fp32)."""
    from rnnlab.models import fast_engine
    from rnnlab.models.cpu_engine import step_engine

    gaps, texts = {}, None
    compiled = fast_engine.supports(model)
    ladder = fast_engine.weight_ladder(model.layers.num_layers, fast_engine.fp16_is_fast(),
                                       fast_engine.int12_is_fast(streams)) if compiled else None
    for weights in ladder or [("int8",)]:
        engine = cpu_engine(model, weights if compiled else "int8", share_weights)
        name = fast_engine.weights_name(weights)
        if engine.weights != name:  # (no quantized kernels in this torch, or beyond fp16's range)
            continue
        texts = texts or probe_texts(model)
        gaps[name] = max(gap_along(engine, text) for text in texts)
        if gaps[name] <= tolerance:
            engine.probe_gap, engine.probe_gaps = gaps[name], gaps
            if name != "int8":
                log.info("the int8 engine's next-token probabilities stray from this model's (%s; tolerance %g): "
                         "sampling with %s weights (layers bottom first)", _gaps_line(gaps), tolerance, name)
            return engine
    exact = step_engine(model, "fp32", share_weights)
    exact.probe_gaps = gaps
    if gaps:
        log.warning("the faster engines' next-token probabilities stray from this model's (%s, over the %g "
                    "tolerance): sampling with exact fp32 weights (--engine-weights int8 insists on int8)",
                    _gaps_line(gaps), tolerance)
    return exact


def _gaps_line(gaps: dict) -> str:
    return ", ".join(f"{weights} {gap:.3g}" for weights, gap in gaps.items())
