"""Shared fixtures: a private prepared-corpus cache, one tiny trained checkpoint per session, and a real
rnnlab server on a free loopback port (for the browser and load tests)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time

import pytest
import torch

from rnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rnnlab.training.loop import StopRequest

TINY_TRAIN = dict(batch_size=8, seq_length=32, eval_every=20, eval_batch_size=16, log_every=5, sample_length=0)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Keep prepared corpora of the test run out of the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield cache
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


def tiny_config(checkpoint_dir, data=None, cell="lstm", max_steps=20, **train_overrides) -> RunConfig:
    train = {**TINY_TRAIN, "max_steps": max_steps, "checkpoint_dir": str(checkpoint_dir), **train_overrides}
    return RunConfig(DataConfig(path=str(data) if data else None),
                     ModelConfig(cell=cell, num_layers=2, hidden_size=32, embedding_size=16, dropout=0.1),
                     TrainConfig(**train))


def saturated_unit_model(weight: float, crowded_rows: bool = False, seed: int = 0):
    """A crafted checkpoint: hidden unit 0 is held near 1 (its gates saturated by their biases) and every
    recurrent row gives it `weight`, taken back by that row's bias. The fp32 model barely sees it; a
    weight format that cannot hold `weight` exactly, or whose row scale grows with it, sees a lot. With
    `crowded_rows`, every row's weights on units 1-3 are also made 40x larger, so no column scale can
    even a row's range out (its largest weight sets it)."""
    from rnnlab.models.lm import RecurrentLM

    torch.manual_seed(seed)
    model = RecurrentLM(ModelConfig(num_layers=1, hidden_size=64, embedding_size=16, dropout=0.0), 30).eval()
    hidden = 64
    with torch.no_grad():
        for gate in range(4):  # i, f, g, o of unit 0: driven by their biases alone
            model.layers.weight_ih_l0[gate * hidden].zero_()
            model.layers.weight_hh_l0[gate * hidden].zero_()
            model.layers.bias_l0[gate * hidden] = 20.0
        others = [row for row in range(4 * hidden) if row % hidden != 0]
        model.layers.weight_hh_l0[others, 0] = weight
        model.layers.bias_l0[others] -= weight
        if crowded_rows:
            model.layers.weight_hh_l0[others, 1:4] *= 40.0
        model.head.weight.mul_(8.0)  # (a distribution with some shape to it)
    return model


def rewrite_checkpoint(file, edit, checksum=True) -> None:
    """A crafted checkpoint: `edit(document, tensors)` changes a real one in place; its checksum is
    recomputed unless told not to (so the later checks are reached)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from rnnlab.training.checkpoint import METADATA_KEY, content_checksums

    with safe_open(str(file), framework="pt") as handle:
        document = json.loads(handle.metadata()[METADATA_KEY])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    edit(document, tensors)
    if checksum:
        document["checksum"] = content_checksums(tensors)
    save_file(tensors, str(file), metadata={METADATA_KEY: json.dumps(document)})


class StopAfter(StopRequest):
    """Asks to stop after `n` polls, like a Ctrl-C arriving mid-run."""

    def __init__(self, n):
        super().__init__()
        self.polls, self.n = 0, n

    @property
    def requested(self):
        self.polls += 1
        return self.polls > self.n

    @requested.setter
    def requested(self, value):
        pass


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, private_cache):
    """A checkpoint folder of a tiny LSTM trained a few steps on the embedded corpus."""
    from rnnlab.training.loop import train

    folder = tmp_path_factory.mktemp("trained")
    train(tiny_config(folder, max_steps=40), progress_bar=False)
    return folder


@pytest.fixture
def text_file(tmp_path):
    def make(content, name="input.txt", encoding="utf-8"):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding=encoding)
        return path
    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(models, config=None, app=None):
    """A real uvicorn server for `models` (or an app already made) on a free loopback port; yields its URL."""
    import uvicorn

    from rnnlab.config import ServeConfig
    from rnnlab.serve.app import create_app
    from rnnlab.serve.protocol import server_config

    config = dataclasses.replace(config or ServeConfig(), host="127.0.0.1", port=free_port())
    server = uvicorn.Server(server_config(app or create_app(models, config), config))
    port = config.port
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def server(trained_checkpoint):
    pytest.importorskip("uvicorn")
    from rnnlab.serve.engine import LoadedModel

    model_path = os.environ.get("RNNLAB_BROWSER_MODEL", trained_checkpoint)
    models = [LoadedModel.load("shakespeare", model_path), LoadedModel.load("second", model_path)]
    with running_server(models) as url:
        yield url


def ptb_style(text: str) -> str:
    """Text in the PTB word-level format: lowercase words separated by spaces, one sentence a line."""
    lines = [" ".join(line.lower().replace(",", " ,").replace(".", " .").split()) for line in text.splitlines()]
    return "".join(f" {line} \n" for line in lines if line)


@pytest.fixture(scope="session")
def ptb_folder(tmp_path_factory):
    """A PTB-shaped folder (ptb.train.txt, ptb.valid.txt, ptb.test.txt) cut from the embedded corpus."""
    from rnnlab.data.text import embedded_corpus_path

    lines = ptb_style(embedded_corpus_path().read_text(encoding="utf-8")[:300_000]).splitlines(keepends=True)
    folder = tmp_path_factory.mktemp("ptb")
    n = len(lines)
    for name, part in (("train", lines[:int(n * 0.8)]), ("valid", lines[int(n * 0.8):int(n * 0.9)]),
                       ("test", lines[int(n * 0.9):])):
        (folder / f"ptb.{name}.txt").write_text("".join(part), encoding="utf-8")
    return folder
