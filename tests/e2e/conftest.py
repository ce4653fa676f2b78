"""Fixtures of the end-to-end tests: a real rnnlab server on a free loopback port."""

import os
import socket
import threading
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(trained_checkpoint):
    uvicorn = pytest.importorskip("uvicorn")
    from rnnlab.config import ServeConfig
    from rnnlab.serve.app import create_app
    from rnnlab.serve.engine import LoadedModel

    model_path = os.environ.get("RNNLAB_BROWSER_MODEL", trained_checkpoint)
    models = [LoadedModel.load("shakespeare", model_path), LoadedModel.load("second", model_path)]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(models, ServeConfig()), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


