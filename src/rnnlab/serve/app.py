"""The HTTP face of `rnnlab serve`: a page, and a JSON API with an OpenAPI schema (/docs, /openapi.json).

GET  /v1/models    every model served: name, parameters, vocabulary size, corpus, best val loss
POST /v1/complete  prompt -> n completions (JSON, or server-sent events with "stream": true)
POST /v1/score     text -> bits per character, overall and for every character
Prompt characters a model does not know are dropped and listed in the response ("dropped");
in /v1/score they get no score and are listed ("unknown"). Errors are 4xx JSON: {"error": "..."}.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from importlib import resources
from typing import AsyncIterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from rnnlab.config import SampleConfig, ServeConfig
from rnnlab.errors import ConfigError
from rnnlab.sampling import TokenSampler, prompt_ids, sample_config_for
from rnnlab.serve.engine import Busy, Capacity, LoadedModel, Scheduler, Stream, surprise

_SAMPLE_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(SampleConfig)}
SAMPLED = ("temperature", "top_k", "top_p", "seed")  # the request's SampleConfig settings (length apart)


class CompleteRequest(BaseModel):
    """A completion request. The sampling settings are SampleConfig's, checked by its own validate()
    (a value it refuses is a 422 with its message), so their limits live in one place."""
    model: str | None = Field(None, description="model name from /v1/models (default: the first)")
    prompt: str = Field("", description="text to continue")
    length: int | None = Field(None, description=_SAMPLE_HELP["length"] + " per completion (default: 200, or the "
                                                                          "server's limit)")
    temperature: float | None = Field(None, description=_SAMPLE_HELP["temperature"])
    top_k: int | None = Field(None, description=_SAMPLE_HELP["top_k"])
    top_p: float | None = Field(None, description=_SAMPLE_HELP["top_p"])
    seed: int | None = Field(None, description=_SAMPLE_HELP["seed"] + " (default: a random one, returned)")
    n: int = Field(1, description="number of completions (each with seed, seed + 1, ...)")
    stream: bool = Field(False, description="send the text as server-sent events as it is generated")


class ScoreRequest(BaseModel):
    model: str | None = None
    text: str = Field(..., min_length=1)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(models: list[LoadedModel], config: ServeConfig) -> FastAPI:
    if not models:
        raise ValueError("create_app needs at least one model")
    app = FastAPI(title="rnnlab", description="Auto-complete text with recurrent language models.")
    by_name = {m.name: m for m in models}
    capacity = Capacity(config.max_streams)
    schedulers: dict[str, Scheduler] = {m.name: Scheduler(m, capacity, config.max_batch) for m in models}
    app.state.schedulers, app.state.capacity = schedulers, capacity

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": problems}, status_code=422)

    def pick(name: str | None) -> LoadedModel:
        if name is None:
            return models[0]
        if name not in by_name:
            raise ApiError(404, f"no model named {name!r}; see /v1/models")
        return by_name[name]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return resources.files("rnnlab.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/v1/models")
    async def list_models():
        return {"models": [m.info for m in models]}

    @app.post("/v1/complete")
    async def complete(body: CompleteRequest, request: Request):
        loaded = pick(body.model)
        body.length = body.length if body.length is not None else min(200, config.max_length)
        if body.n < 1:
            raise ApiError(422, f"n must be > 0, got {body.n}")
        check_limits(body, config)
        seed = body.seed if body.seed is not None else secrets.randbelow(2 ** 62)
        given = {name: getattr(body, name) for name in SAMPLED if getattr(body, name) is not None}
        try:  # the model's own defaults (windowed for scheme 1/2 models) under the request's settings
            settings = sample_config_for(loaded.train_config, {**given, "length": body.length, "seed": seed})
        except ConfigError as exc:
            raise ApiError(422, str(exc)) from None
        prompt = prompt_ids(loaded.vocab, body.prompt)
        prime_text, dropped = prompt.text, prompt.dropped
        window = settings.window if settings.sampling == "windowed" else 0
        streams = [Stream(prompt.ids, settings.length, TokenSampler(settings, 1, seed + i), window)
                   for i in range(body.n)]
        try:
            schedulers[loaded.name].submit(streams)
        except Busy as exc:
            raise ApiError(503, str(exc)) from None
        if body.stream:
            return StreamingResponse(events(loaded, streams, dropped, seed, prime_text),
                                     media_type="text/event-stream")
        texts = [await collect(loaded, stream, prime_text) for stream in streams]
        return {"model": loaded.name, "seed": seed, "dropped": dropped,
                "completions": [{"index": i, "text": t} for i, t in enumerate(texts)]}

    @app.post("/v1/score")
    async def score(body: ScoreRequest):
        loaded = pick(body.model)
        if len(body.text) > config.max_score_chars:
            raise ApiError(413, f"text has {len(body.text)} characters; the limit is {config.max_score_chars}")
        if loaded.vocab.kind != "char":
            return score_tokens(loaded, body.text)
        unknown = loaded.vocab.unknown_pieces(body.text)
        known = [ch for ch in body.text if ch in loaded.vocab]
        bits = iter(surprise(loaded, loaded.vocab.encode("".join(known)).tolist()) if known else [])
        per_char = [{"char": ch, "bits": next(bits) if ch in loaded.vocab else None} for ch in body.text]
        scored = [c["bits"] for c in per_char if c["bits"] is not None]
        return {"model": loaded.name, "bits_per_char": sum(scored) / len(scored) if scored else None,
                "characters": per_char, "unknown": unknown}

    return app


def check_limits(body: CompleteRequest, config: ServeConfig) -> None:
    if len(body.prompt) > config.max_prompt_chars:
        raise ApiError(413, f"prompt has {len(body.prompt)} characters; the limit is {config.max_prompt_chars}")
    if body.length > config.max_length:
        raise ApiError(422, f"length {body.length} is over the limit of {config.max_length}")
    if body.n > config.max_n:
        raise ApiError(422, f"n {body.n} is over the limit of {config.max_n}")


def score_tokens(loaded: LoadedModel, text: str) -> dict:
    """Word and BPE models: the bits of each token, shown over the span of text it covers (its
    whitespace included), and bits per character of the whole text."""
    ids, lengths = loaded.vocab.encode_with_lengths(text)
    bits = surprise(loaded, ids.tolist()) if len(ids) else []
    ends = np.cumsum(lengths)
    spans = [{"char": text[end - length:end], "bits": b}
             for end, length, b in zip(ends.tolist(), lengths.tolist(), bits, strict=True)]
    return {"model": loaded.name, "bits_per_char": sum(bits) / len(text) if bits else None,
            "characters": spans, "unknown": loaded.vocab.unknown_pieces(text)}


async def collect(loaded: LoadedModel, stream: Stream, prime_text: str) -> str:
    pieces, detokenizer = [], loaded.vocab.detokenizer(after=prime_text)
    while (token := await stream.queue.get()) is not None:
        pieces.append(detokenizer.push(token))
    return "".join(pieces)


async def events(loaded: LoadedModel, streams: list[Stream], dropped: list[str], seed: int,
                 prime_text: str) -> AsyncIterator[str]:
    """Server-sent events: one per generated token ({"index", "text"}), then {"done": true}."""
    try:
        yield f"data: {json.dumps({'model': loaded.name, 'seed': seed, 'dropped': dropped})}\n\n"
        for index, stream in enumerate(streams):
            detokenizer = loaded.vocab.detokenizer(after=prime_text)
            while (token := await stream.queue.get()) is not None:
                piece = detokenizer.push(token)
                if piece:
                    yield f"data: {json.dumps({'index': index, 'text': piece})}\n\n"
        yield f"data: {json.dumps({'done': True})}\n\n"
    finally:  # the client finished, or went away: free the work either way
        for stream in streams:
            stream.cancel()
