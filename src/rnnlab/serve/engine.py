"""Models held once in memory, and a per-model scheduler that micro-batches concurrent completions.

Every model gets one scheduler task. Completions (streams) join and leave its batch between
steps: a joining stream reads its prompt on its own (the model's fused forward), then its state
rows are appended to the batch; each step advances every active stream by one token (a character,
word or BPE piece, as the model's vocabulary has it) with a single batched step of the model's
engine, and each stream chooses its next token with its own settings and seed through the one
sampler (TokenSampler). Streams of a model trained with scheme 1 or 2 sample windowed: each re-reads
its last window of tokens for every new one. A stream that finished, or whose
client went away, leaves before the next step. Weights are never copied per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rnnlab.config import SampleConfig, TrainConfig
from rnnlab.data.vocab import Vocab
from rnnlab.sampling import TokenSampler, concat_rows, make_stepper, prime, start, step, stepper_name, take_rows
from rnnlab.training.checkpoint import load_checkpoint

PATH_KEYS = ("checkpoint", "corpus_path")  # where things are on the server: listed only with --show-paths


def corpus_name(corpus: str) -> str:
    """What a model card shows of its corpus: a file's name (its folder's for input.txt), not the path."""
    if "/" not in corpus:
        return corpus
    path = Path(corpus)
    return path.parent.name if path.name == "input.txt" and path.parent.name else path.name


@dataclass
class LoadedModel:
    name: str
    path: Path
    model: torch.nn.Module
    vocab: Vocab
    stepper: object
    info: dict
    train_config: TrainConfig = field(default_factory=TrainConfig)  # (its scheme decides how it samples)

    @classmethod
    def load(cls, name: str, path: str | Path, engine_weights: str = "auto") -> "LoadedModel":
        ckpt = load_checkpoint(path, weights_only=True)
        model = ckpt.build_model("cpu")
        model.requires_grad_(False)
        info = {"name": name, "checkpoint": str(ckpt.path), "parameters": model.num_parameters(),
                "vocab_size": len(ckpt.vocab), "tokenizer": ckpt.vocab.kind, "cell": ckpt.config.model.cell,
                "layers": ckpt.config.model.num_layers, "hidden_size": ckpt.config.model.hidden_size,
                "corpus": corpus_name(str(ckpt.metrics.get("corpus", "unknown"))),
                "corpus_path": str(ckpt.metrics.get("corpus", "unknown")),
                "best_val_loss": ckpt.metrics.get("best_val_loss", ckpt.metrics.get("val_loss")),
                "val_bits_per_char": ckpt.metrics.get("val_bits_per_char")}
        # by default the fastest engine within the tolerance on this checkpoint (a compiled int8 or fp16
        # copy adds a quarter or a half of the fp32 weights; an fp32 engine shares the model's memory)
        stepper = make_stepper(model, SampleConfig(engine_weights=engine_weights), share_weights=True)
        if hasattr(stepper, "threads"):  # the server keeps torch to --threads; the compiled step uses every core
            stepper.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        info["engine"] = stepper_name(stepper)
        return cls(name, ckpt.path, model, ckpt.vocab, stepper, info, ckpt.config.train)

    def default_prime(self) -> list[int]:
        return self.vocab.line_start()


@dataclass
class Stream:
    """One completion being generated: its prompt, length, sampler (settings and seed), and where its
    tokens go. With a window, it samples windowed: its last `window` tokens are re-read for each new one."""
    prime_ids: list[int]
    length: int
    sampler: TokenSampler
    window: int = 0
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    produced: int = 0
    cancelled: bool = False
    context: list[int] = field(default_factory=list)  # windowed: the tokens it reads next
    logits: np.ndarray | None = None  # windowed: its next-token logits

    def cancel(self) -> None:
        self.cancelled = True


HOP_SECONDS = 0.005  # the longest the model's thread runs steps before handing tokens back to the event loop


class Busy(Exception):
    """More streams than the server's max_streams: the request gets a 503."""


class Scheduler:
    """Runs the active streams of one model, one batched step per token."""

    def __init__(self, loaded: LoadedModel, capacity: "Capacity", max_batch: int = 0):
        self.loaded, self.capacity, self.max_batch = loaded, capacity, max_batch
        self.pending: list[Stream] = []
        self.active: list[Stream] = []  # progressive streams, stepped together as one batch
        self.windowed: list[Stream] = []  # windowed streams, each re-reading its window
        self.logits: np.ndarray | None = None  # (B, V) next-token logits of the active streams
        self.state = None
        self.steps = 0  # batched steps run, for tests and metrics
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        # one thread steps this model, always the same: an OpenMP team (the compiled step's) belongs to the
        # thread that starts it, and teams of several threads taking turns would spin against each other
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnnlab-model")

    def submit(self, streams: list[Stream]) -> None:
        self.capacity.acquire(len(streams))
        self.pending.extend(streams)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            if not self.pending and not self.active and not self.windowed:
                self._wake.clear()
                await self._wake.wait()
            room = self.max_batch - len(self.active) if self.max_batch else len(self.pending)
            joining, self.pending = self.pending[:max(room, 0)], self.pending[max(room, 0):]
            # The model works in a thread so the event loop keeps serving; queues are fed back here,
            # on the loop's thread, because asyncio queues are not thread-safe.
            events = await asyncio.get_running_loop().run_in_executor(self._thread, self._advance_for, joining,
                                                                      HOP_SECONDS)
            for stream, item in events:
                stream.queue.put_nowait(item)

    def _advance_for(self, joining: list[Stream], seconds: float) -> list[tuple[Stream, int | None]]:
        """Advance the streams for up to `seconds` (at least one step), or until new streams wait to join:
        a trip to the worker thread and back costs more than a fast engine's step, so several steps
        share one. Tokens then reach their streams in bursts of at most `seconds`."""
        deadline = time.perf_counter() + seconds
        events = self._advance(joining)
        while (self.active or self.windowed) and not self.pending and time.perf_counter() < deadline:
            events += self._advance([])
        return events

    def _advance(self, joining: list[Stream]) -> list[tuple[Stream, int | None]]:
        """Join new streams, sample one token for every active one, drop finished ones, step."""
        self._join(joining)
        events = self._advance_batch() if self.active else []
        for stream in list(self.windowed):
            events += self._advance_windowed(stream)
        return events

    def _advance_batch(self) -> list[tuple[Stream, int | None]]:
        tokens = np.array([int(stream.sampler(self.logits[row:row + 1])[0]) for row, stream in enumerate(self.active)],
                          dtype=np.int64)
        keep, events = [], []
        for row, stream in enumerate(self.active):
            if stream.cancelled:
                continue
            stream.produced += 1
            events.append((stream, int(tokens[row])))
            if stream.produced < stream.length:
                keep.append(row)
            else:
                events.append((stream, None))  # end of this completion
        self._keep(keep)
        if self.active:
            self.logits, self.state = step(self.loaded.stepper, tokens[keep], self.state)
            self.steps += 1
        return events

    def _advance_windowed(self, stream: Stream) -> list[tuple[Stream, int | None]]:
        if stream.cancelled:
            self._leave(stream)
            return []
        token = int(stream.sampler(stream.logits)[0])
        stream.produced += 1
        if stream.produced == stream.length:
            self._leave(stream)
            return [(stream, token), (stream, None)]
        stream.context = (stream.context + [token])[-stream.window:]
        stepper = self.loaded.stepper
        stream.logits, _ = prime(stepper, np.array([stream.context], dtype=np.int64), stepper.init_state(1))
        return [(stream, token)]

    def _leave(self, stream: Stream) -> None:
        self.windowed.remove(stream)
        self.capacity.release(1)

    def _join(self, joining: list[Stream]) -> None:
        for stream in joining:
            if stream.cancelled:
                self.capacity.release(1)
                continue
            if stream.window:
                stream.context = list(stream.prime_ids[-stream.window:])
                stream.logits, _ = start(self.loaded.stepper, stream.context, 1)
                self.windowed.append(stream)
                continue
            logits, state = start(self.loaded.stepper, stream.prime_ids, 1)
            if self.active:
                self.logits = np.concatenate([self.logits, logits])
                self.state = concat_rows(self.state, state)
            else:
                self.logits, self.state = logits, state
            self.active.append(stream)

    def _keep(self, rows: list[int]) -> None:
        released = len(self.active) - len(rows)
        if released:
            index = np.array(rows, dtype=np.int64)
            self.active = [self.active[r] for r in rows]
            self.logits = self.logits[index]
            self.state = take_rows(self.state, index) if rows else None
            self.capacity.release(released)


class Capacity:
    """The server-wide cap on streams being generated at once (used from the loop and model threads)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def acquire(self, count: int) -> None:
        with self._lock:
            if self.used + count > self.limit:
                raise Busy(f"the server is generating {self.used} completions (limit {self.limit}); try again shortly")
            self.used += count

    def release(self, count: int) -> None:
        with self._lock:
            self.used = max(0, self.used - count)


SCORE_CHUNK = 512  # tokens read per forward pass when scoring: bounds the logits held at once (chunk x V)


def surprise(loaded: LoadedModel, ids: list[int]) -> list[float]:
    """Bits each token of `ids` cost the model, reading from the default start (a line break), in
    chunks with the state carried from one to the next, so memory stays bounded however long the
    text (the same bits as one pass: the state is exact)."""
    context = loaded.default_prime()
    first = None
    if not context:  # no natural start: the first token is scored against a uniform guess
        first, context, ids = math.log2(len(loaded.vocab)), ids[:1], ids[1:]
    tokens = context + ids
    bits, state = [], None
    with torch.inference_mode():
        _, _, state = loaded.model(torch.tensor([tokens[:len(context) - 1]], dtype=torch.long)) \
            if len(context) > 1 else (None, None, None)
        position = len(context) - 1  # predicting tokens[position + 1] from tokens[position]
        while position < len(tokens) - 1:
            end = min(position + SCORE_CHUNK, len(tokens) - 1)
            inputs = torch.tensor([tokens[position:end]], dtype=torch.long)
            logits, _, state = loaded.model(inputs, state)
            log_probs = torch.log_softmax(logits.float(), dim=-1)[0]
            targets = torch.tensor(tokens[position + 1:end + 1], dtype=torch.long)
            bits.extend((-log_probs.gather(-1, targets[:, None])[:, 0] / math.log(2)).tolist())
            position = end
    return ([first] if first is not None else []) + bits
