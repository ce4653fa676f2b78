"""The HTTP face of `rnnlab serve`: a page, and a JSON API (its OpenAPI schema at /docs with --docs).

GET  /v1/models    every model served: name, parameters, vocabulary size, corpus, best val loss
POST /v1/complete  prompt -> n completions (JSON, or server-sent events with "stream": true)
POST /v1/score     text -> bits per character, overall and for every character
Prompt characters a model does not know are dropped and listed in the response ("dropped");
in /v1/score they get no score and are listed ("unknown"). Errors are 4xx JSON: {"error": "..."}.
The app sits behind serve/guard.py (Host allow-list, API key, body size and time limits).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import re
import secrets
from importlib import resources
from typing import AsyncIterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from rnnlab.config import SampleConfig, ServeConfig
from rnnlab.errors import ConfigError
from rnnlab.sampling import TokenSampler, prompt_ids, sample_config_for
from rnnlab.serve.engine import PATH_KEYS, Busy, Capacity, LoadedModel, Scheduler, Stream, surprise
from rnnlab.serve.guard import Guard

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


def create_app(models: list[LoadedModel], config: ServeConfig):
    """The ASGI app: the API and the page behind the Guard (Host allow-list, API key, body limits)."""
    if not models:
        raise ValueError("create_app needs at least one model")
    docs = {} if config.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="rnnlab", description="Auto-complete text with recurrent language models.", **docs)
    by_name = {m.name: m for m in models}
    capacity = Capacity(config.max_streams)
    schedulers: dict[str, Scheduler] = {m.name: Scheduler(m, capacity, config.max_batch) for m in models}
    app.state.schedulers, app.state.capacity = schedulers, capacity
    page, policy = _page_and_policy()
    add_error_handlers(app)

    def pick(name: str | None) -> LoadedModel:
        if name is None:
            return models[0]
        if name not in by_name:
            raise ApiError(404, f"no model named {name!r}; see /v1/models")
        return by_name[name]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": policy})

    @app.get("/v1/models")
    async def list_models():
        return {"models": [m.info if config.show_paths else {k: v for k, v in m.info.items() if k not in PATH_KEYS}
                           for m in models]}

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
        window = settings.window if settings.sampling == "windowed" else 0
        streams = [Stream(prompt.ids, settings.length, TokenSampler(settings, 1, seed + i), window)
                   for i in range(body.n)]
        try:
            schedulers[loaded.name].submit(streams)
        except Busy as exc:
            raise ApiError(503, str(exc)) from None
        if body.stream:
            return StreamingResponse(events(loaded, streams, prompt.dropped, seed, prompt.text),
                                     media_type="text/event-stream")
        texts = await until_disconnected(request, streams, [collect(loaded, s, prompt.text) for s in streams])
        return {"model": loaded.name, "seed": seed, "dropped": prompt.dropped,
                "completions": [{"index": i, "text": t} for i, t in enumerate(texts)]}

    @app.post("/v1/score")
    async def score(body: ScoreRequest):
        loaded = pick(body.model)
        if len(body.text) > config.max_score_chars:
            raise ApiError(413, f"text has {len(body.text)} characters; the limit is {config.max_score_chars}")
        _check_encodable(body.text, "text")
        # off the event loop, serialised too: other clients are answered while a long text is scored
        body_bytes = await asyncio.to_thread(
            lambda: json.dumps(score_text(loaded, body.text, config.max_score_tokens)).encode("utf-8"))
        return Response(body_bytes, media_type="application/json")

    return Guard(app, config)


def add_error_handlers(app: FastAPI) -> None:
    """One error shape everywhere, {"error": "..."}: the API's own refusals, invalid requests, and
    the framework's 404/405s."""
    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def _page_and_policy() -> tuple[str, str]:
    """The page, and a Content-Security-Policy that lets only its own script run (by its hash) and
    lets it talk only to this server."""
    page = resources.files("rnnlab.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    policy = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
              f"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page, policy


def _check_encodable(text: str, field: str) -> None:
    """JSON may carry lone surrogates (\\ud800) that are no Unicode text: refused, not a 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(422, f"{field}: not valid Unicode text (a lone surrogate at character {exc.start})") from None


async def until_disconnected(request: Request, streams: list[Stream], collecting: list) -> list[str]:
    """The completions' texts; if the client goes away first, its streams are cancelled, so they free
    their slots at the next step instead of generating for nobody."""
    work = asyncio.ensure_future(asyncio.gather(*collecting))
    work.add_done_callback(lambda done: done.cancelled() or done.exception())  # (retrieved: no log noise)
    try:
        while True:
            done, _ = await asyncio.wait({work}, timeout=0.25)
            if done:
                return work.result()
            if await request.is_disconnected():
                raise ApiError(499, "the client went away")
    finally:
        if not work.done():
            work.cancel()
            for stream in streams:
                stream.cancel()


def check_limits(body: CompleteRequest, config: ServeConfig) -> None:
    if len(body.prompt) > config.max_prompt_chars:
        raise ApiError(413, f"prompt has {len(body.prompt)} characters; the limit is {config.max_prompt_chars}")
    _check_encodable(body.prompt, "prompt")
    if body.length > config.max_length:
        raise ApiError(422, f"length {body.length} is over the limit of {config.max_length}")
    if body.n > config.max_n:
        raise ApiError(422, f"n {body.n} is over the limit of {config.max_n}")


def score_text(loaded: LoadedModel, text: str, max_tokens: int) -> dict:
    """Bits of every token of `text` (in chunks, see engine.surprise), shown over the span of text it
    covers: a character, or for word and BPE models the token with its whitespace. Characters (words)
    the model does not know get no score and are listed."""
    vocab = loaded.vocab
    unknown = vocab.unknown_pieces(text)
    if vocab.kind == "char":
        known = [ch for ch in text if ch in vocab]
        if len(known) > max_tokens:
            raise ApiError(413, f"text has {len(known)} tokens; the limit is {max_tokens}")
        bits = iter(surprise(loaded, vocab.encode("".join(known)).tolist()) if known else [])
        spans = [{"char": ch, "bits": next(bits) if ch in vocab else None} for ch in text]
        scored = [c["bits"] for c in spans if c["bits"] is not None]
        return {"model": loaded.name, "bits_per_char": sum(scored) / len(scored) if scored else None,
                "characters": spans, "unknown": unknown}
    ids, lengths = vocab.encode_with_lengths(text)
    if len(ids) > max_tokens:
        raise ApiError(413, f"text has {len(ids)} tokens; the limit is {max_tokens}")
    bits = surprise(loaded, ids.tolist()) if len(ids) else []
    ends = np.cumsum(lengths)
    spans = [{"char": text[end - length:end], "bits": b}
             for end, length, b in zip(ends.tolist(), lengths.tolist(), bits, strict=True)]
    return {"model": loaded.name, "bits_per_char": sum(bits) / len(text) if bits else None,
            "characters": spans, "unknown": unknown}


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
