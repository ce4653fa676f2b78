"""Cross-entropy of a model on a token sequence: nats and bits per token, perplexity, and bits
per character of the text the tokens came from (so char, word and BPE models compare on one scale).

The sequence is cut into `batch_size` contiguous columns evaluated in parallel with the state
carried from chunk to chunk (like validation during training), and the tokens that do not fill a
column are scored afterwards, continuing the last column's state, so every token after the first
is predicted exactly once. Only the first token of each column is predicted without context.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from rnnlab.config import EvalConfig
from rnnlab.errors import CorpusError

LN2 = math.log(2.0)


@dataclass
class EvalResult:
    total_nats: float
    tokens: int  # number of predicted tokens
    characters: int = 0  # characters of text those tokens cover (0: one per token, a char-level model)

    @property
    def nats_per_token(self) -> float:
        return self.total_nats / self.tokens

    @property
    def bits_per_token(self) -> float:
        return self.nats_per_token / LN2

    @property
    def scored_characters(self) -> int:
        return self.characters or self.tokens

    @property
    def nats_per_char(self) -> float:
        return self.total_nats / self.scored_characters

    @property
    def bits_per_char(self) -> float:
        """Bits per character of the original text: the one scale on which every tokenizer compares."""
        return self.nats_per_char / LN2

    @property
    def perplexity(self) -> float:
        """Per-token e^H with H in nats (the same number as 2^H with H in bits); inf past float range."""
        return math.exp(min(self.nats_per_token, 700.0))

    @property
    def perplexity_base2(self) -> float:
        """2^H with H in nats: the blog's convention (a nats loss exponentiated with base 2)."""
        return 2.0 ** min(self.nats_per_token, 1000.0)

    def as_dict(self) -> dict:
        return {"nats_per_char": self.nats_per_char, "bits_per_char": self.bits_per_char,
                "perplexity": self.perplexity, "perplexity_base2": self.perplexity_base2,
                "characters": self.scored_characters, "tokens": self.tokens,
                "nats_per_token": self.nats_per_token, "bits_per_token": self.bits_per_token}


def scored_characters(char_lengths: np.ndarray | None, first_scored: int) -> int:
    """Characters covered by tokens[first_scored:] (0 when every token is one character)."""
    if char_lengths is None:
        return 0
    return int(np.sum(char_lengths[first_scored:], dtype=np.int64))  # (summed in place: no copy of a memmap)


@torch.inference_mode()
def evaluate_tokens(model, tokens: np.ndarray, batch_size: int = 64, seq_length: int = 256,
                    device: torch.device | str = "cpu", burn_in: int = 0,
                    char_lengths: np.ndarray | None = None, progress=None) -> EvalResult:
    """Total cross-entropy of `model` predicting tokens[1:] from tokens[:-1].

    `progress(fraction)`, if given, is told how far the pass has got after every chunk.

    `char_lengths` (characters of text per token, for word and BPE models) turns the total into
    bits per character of the scored text as well.

    With `burn_in` N (the paper's protocol), the text is read as one stream: the first N tokens
    only bootstrap the state, and every later token is scored.
    """
    n = len(tokens)
    if n < 2 + burn_in:
        raise CorpusError(f"evaluation needs at least {2 + burn_in} tokens")
    was_training = model.training
    model.eval()
    try:
        if burn_in:
            total = _evaluate_after_burn_in(model, tokens, seq_length, device, burn_in)
            return EvalResult(total, n - burn_in, scored_characters(char_lengths, burn_in))
        columns = max(1, min(batch_size, (n - 1) // seq_length))
        column_length = (n - 1) // columns
        starts = np.arange(columns, dtype=np.int64)[:, None] * column_length
        total, state = 0.0, None
        for begin in range(0, column_length, seq_length):
            steps = min(seq_length, column_length - begin)
            index = starts + begin + np.arange(steps + 1, dtype=np.int64)[None, :]
            nats, state = _score(model, tokens[index], state, device)
            total += nats
            if progress is not None:
                progress((begin + steps) / column_length)
        tail_start = columns * column_length
        if tail_start < n - 1:
            last_column_state = tuple(s[:, -1:].contiguous() for s in state)
            for begin in range(tail_start, n - 1, seq_length):
                window = tokens[begin:min(begin + seq_length, n - 1) + 1][None, :]
                nats, last_column_state = _score(model, window, last_column_state, device)
                total += nats
        return EvalResult(total, n - 1, scored_characters(char_lengths, 1))
    finally:
        model.train(was_training)


def evaluate_windowed(model, tokens: np.ndarray, window: int, batch_size: int = 64,
                      device: torch.device | str = "cpu", char_lengths: np.ndarray | None = None,
                      burn_in: int = 0) -> EvalResult:
    """Every token predicted from the `window` tokens before it only, read from the model's initial
    state — how a model trained with the paper's scheme 1 or 2 is used when it samples windowed.
    (Tokens near the start have the shorter context there is.) Costs `window` steps per token.
    `burn_in` scores tokens[burn_in:] only, as evaluate_tokens does: the same tokens a progressive
    evaluation with that burn-in scores (and, with burn_in >= window, each with its whole window)."""
    n = len(tokens)
    first = max(1, burn_in)
    if n - first < 1:
        raise CorpusError("evaluation needs at least two tokens" if burn_in <= 1 else
                          f"evaluation needs more than the {burn_in} tokens of burn-in")
    ids = tokens  # (read in windows as they are scored: a memmap is never copied whole)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            total = sum(_last_token_nats(model, np.asarray(ids[:t], dtype=np.int64)[None, :], ids[t:t + 1], device)
                        for t in range(first, min(window, n)))  # the first tokens: what context they have
            windows = (np.lib.stride_tricks.sliding_window_view(ids, window + 1) if n > window
                       else np.zeros((0, window + 1), dtype=np.int64))  # (n - window, window + 1): a view
            windows = windows[max(0, first - window):]  # (row i predicts token i + window)
            for begin in range(0, len(windows), batch_size):
                chunk = windows[begin:begin + batch_size]
                total += _last_token_nats(model, chunk[:, :-1], chunk[:, -1], device)
        return EvalResult(total, n - first, scored_characters(char_lengths, first))
    finally:
        model.train(was_training)


def _last_token_nats(model, contexts: np.ndarray, targets: np.ndarray, device) -> float:
    logits, _ = model.prime(torch.tensor(np.asarray(contexts, dtype=np.int64), device=device))  # (a copy:
    log_probs = torch.log_softmax(logits.float(), dim=-1)                                      # views are read-only)
    picked = log_probs.gather(-1, torch.tensor(np.asarray(targets, dtype=np.int64), device=device)[:, None])
    return float(-picked.sum())


def _evaluate_after_burn_in(model, tokens, seq_length: int, device, burn_in: int) -> float:
    state = None
    if burn_in > 1:  # the last burn-in token is fed by the first scored window
        ids = torch.from_numpy(np.asarray(tokens[:burn_in - 1], dtype=np.int64))[None].to(device)
        _, _, state = model(ids)
    total = 0.0
    for begin in range(burn_in - 1, len(tokens) - 1, seq_length):
        window = tokens[begin:min(begin + seq_length, len(tokens) - 1) + 1][None, :]
        nats, state = _score(model, window, state, device)
        total += nats
    return total


def _score(model, window: np.ndarray, state, device) -> tuple[float, tuple]:
    ids = torch.from_numpy(np.asarray(window, dtype=np.int64)).to(device)
    _, loss, state = model(ids[:, :-1], state, ids[:, 1:])
    return float(loss) * ids[:, 1:].numel(), state


def dynamic_evaluate(model, tokens: np.ndarray, seq_length: int = 50, learning_rate: float = 1e-4,
                     decay: float = 2e-5, device: torch.device | str = "cpu",
                     char_lengths: np.ndarray | None = None) -> EvalResult:
    """Dynamic evaluation (Krause et al.): read the text as one stream; score each segment of
    `seq_length` tokens first, then take one gradient step on it, pulling the weights back toward
    the trained ones by `decay`: theta <- theta - lr * grad + decay * (theta_0 - theta).
    The model adapts to the text as it reads it; its weights are restored afterwards.
    """
    n = len(tokens)
    if n < 2:
        raise CorpusError("evaluation needs at least two tokens")
    EvalConfig(dynamic=True, dynamic_lr=learning_rate, dynamic_decay=decay).validate()  # (its one rule)
    was_training = model.training
    model.eval()  # no dropout: the adaptation is to the text, not to noise
    params = [p for p in model.parameters() if p.requires_grad]
    original = [p.detach().clone() for p in params]
    total, state = 0.0, None
    # cuDNN's fused RNN backward runs only in training mode; PyTorch's own CUDA kernels run in either
    kernels = torch.backends.cudnn.flags(enabled=False) if torch.device(device).type == "cuda" \
        else contextlib.nullcontext()
    try:
        with kernels:
            for begin in range(0, n - 1, seq_length):
                window = tokens[begin:min(begin + seq_length, n - 1) + 1][None, :]
                ids = torch.from_numpy(np.asarray(window, dtype=np.int64)).to(device)
                _, loss, state = model(ids[:, :-1], state, ids[:, 1:])
                total += float(loss.detach()) * ids[:, 1:].numel()
                model.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():
                    for p, p0 in zip(params, original, strict=True):
                        if p.grad is not None:
                            p.add_(p.grad, alpha=-learning_rate)
                        p.add_(p0 - p, alpha=decay)
                state = tuple(s.detach() for s in state)
        return EvalResult(total, n - 1, scored_characters(char_lengths, 1))
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, original, strict=True):
                p.copy_(p0)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
