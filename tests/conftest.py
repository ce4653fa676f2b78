"""Shared fixtures: a private prepared-corpus cache and one tiny trained checkpoint per session."""

from __future__ import annotations

import os

import pytest
import torch

from rnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig

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
