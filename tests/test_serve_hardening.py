"""The server under hostile and careless clients: it stays up, bounded and answering (issue 11)."""

import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from conftest import running_server  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from rnnlab.config import ServeConfig  # noqa: E402
from rnnlab.serve import engine  # noqa: E402
from rnnlab.serve.app import create_app  # noqa: E402
from rnnlab.serve.engine import LoadedModel  # noqa: E402


@pytest.fixture(scope="module")
def loaded(trained_checkpoint):
    return [LoadedModel.load("shakespeare", trained_checkpoint)]


@pytest.fixture
def one_torch_thread():
    """What `rnnlab serve` runs with (--threads 1): torch work from the server's worker threads then
    does not oversubscribe the cores with a second OpenMP team (with two, a long score ran 20x slower)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def client_for(loaded, host="127.0.0.1", **settings):
    return TestClient(create_app(loaded, ServeConfig(**settings)), base_url=f"http://{host}")


def post_escaped(client, path, body):
    """JSON as a client may send it: with \\ud800 escapes, which decode to lone surrogates."""
    return client.post(path, content=json.dumps(body).encode("ascii"), headers={"content-type": "application/json"})


def refused_as_not_unicode(error: str) -> bool:
    # (ours, or pydantic's where a field's own constraints make it check the string first)
    return "lone surrogate" in error or "unicode string" in error


@pytest.mark.parametrize("path, body", [
    ("/v1/complete", {"prompt": "ab\ud800"}), ("/v1/score", {"text": "ab\ud800"}),
])
def test_a_lone_surrogate_is_a_422_not_a_500(loaded, path, body):
    with client_for(loaded) as client:
        response = post_escaped(client, path, body)
    assert response.status_code == 422 and refused_as_not_unicode(response.json()["error"])


def test_a_lone_surrogate_is_refused_for_word_models_too(tmp_path_factory, ptb_folder):
    from conftest import tiny_config

    from rnnlab.training.loop import train

    folder = tmp_path_factory.mktemp("word-for-surrogates")
    config = tiny_config(folder, data=ptb_folder, max_steps=2, eval_every=2)
    config.data.tokenizer = "word"
    train(config, progress_bar=False)
    with client_for([LoadedModel.load("w", folder)]) as client:
        for path, body in (("/v1/complete", {"prompt": "the \udfff king"}), ("/v1/score", {"text": "\ud800"})):
            response = post_escaped(client, path, body)
            assert response.status_code == 422 and refused_as_not_unicode(response.json()["error"]), path


def test_a_body_over_the_limit_is_refused_before_it_is_read(loaded):
    limit = 64 * 1024
    sent = []

    def big_body():  # 64 MiB in 64 KiB chunks, without a Content-Length
        for _ in range(1024):
            sent.append(1)
            yield b"x" * (64 * 1024)

    with client_for(loaded, max_body_bytes=limit) as client:
        declared = client.post("/v1/complete", content=b"{}", headers={"content-length": str(64 * 2 ** 20)})
        assert declared.status_code == 413 and "over the limit" in declared.json()["error"]
    with running_server(loaded, ServeConfig(max_body_bytes=limit)) as url:
        try:
            streamed = httpx.post(url + "v1/complete", content=big_body(), timeout=30)
            assert streamed.status_code == 413 and "over the limit" in streamed.json()["error"]
        except httpx.TransportError:
            pass  # the server answered 413 and closed while the client was still writing
        assert httpx.get(url + "v1/models", timeout=30).status_code == 200  # and it is still up
    assert len(sent) < 200  # it stopped reading near the limit (what was sent filled socket buffers), not at 64 MiB


def test_a_foreign_host_header_gets_400_and_an_allowed_one_is_served(loaded):
    with client_for(loaded, host="evil.example") as client:
        response = client.get("/v1/models")
        assert response.status_code == 400 and "is not served here" in response.json()["error"]
        assert client.get("/").status_code == 400
    with client_for(loaded, host="lm.example:8000", allowed_hosts="lm.example") as client:
        assert client.get("/v1/models").status_code == 200
    with client_for(loaded, host="[::1]:8000") as client:
        assert client.get("/v1/models").status_code == 200


def test_an_api_key_guards_the_api_but_not_the_page(loaded):
    with client_for(loaded, api_key="s3cret") as client:
        assert client.get("/").status_code == 200
        refused = client.get("/v1/models")
        assert refused.status_code == 401 and "API key" in refused.json()["error"]
        assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_docs_are_off_paths_hidden_and_every_error_has_one_shape(loaded):
    with client_for(loaded) as client:
        for path in ("/docs", "/openapi.json", "/nowhere"):
            response = client.get(path)
            assert response.status_code == 404 and "error" in response.json(), path
        wrong_method = client.get("/v1/complete")
        assert wrong_method.status_code == 405 and "error" in wrong_method.json()
        broken = client.post("/v1/complete", content=b"{not json", headers={"content-type": "application/json"})
        assert broken.status_code == 422 and "error" in broken.json()
        listed = client.get("/v1/models").json()["models"][0]
        assert "checkpoint" not in listed and "corpus_path" not in listed and "/" not in listed["corpus"]
        page = client.get("/")
        assert "script-src 'sha256-" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
    with client_for(loaded, docs=True, show_paths=True) as client:
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/v1/models").json()["models"][0]["checkpoint"].endswith(".safetensors")


def test_a_long_text_is_scored_in_chunks_while_other_clients_are_answered(loaded, monkeypatch, one_torch_thread):
    widest = []
    forward = loaded[0].model.forward

    def spying(tokens, *args, **kwargs):
        widest.append(tokens.shape[1])
        return forward(tokens, *args, **kwargs)

    monkeypatch.setattr(loaded[0].model, "forward", spying)
    text = ("ROMEO: But soft, what light through yonder window breaks?\n" * 18_000)[:1_000_000]
    config = ServeConfig(max_score_chars=1_000_000, max_score_tokens=1_000_000)
    with running_server(loaded, config) as url:
        result = {}
        scoring = threading.Thread(target=lambda: result.update(
            response=httpx.post(url + "v1/score", json={"text": text}, timeout=600)))
        scoring.start()
        time.sleep(0.5)
        waits = []
        while scoring.is_alive() and len(waits) < 5:
            started = time.monotonic()
            assert httpx.get(url + "v1/models", timeout=30).status_code == 200
            waits.append(time.monotonic() - started)
            time.sleep(0.2)
        scoring.join()
    assert result["response"].status_code == 200
    assert len(result["response"].json()["characters"]) == 1_000_000
    assert waits and max(waits) < 1.0, waits  # answered within a second while the text was scored
    assert max(widest) <= engine.SCORE_CHUNK  # never the whole text's logits at once


def test_a_text_over_the_token_cap_is_refused(loaded):
    with client_for(loaded, max_score_chars=10_000, max_score_tokens=100) as client:
        response = client.post("/v1/score", json={"text": "a" * 500})
    assert response.status_code == 413 and "tokens; the limit is 100" in response.json()["error"]


def test_aborted_non_streaming_requests_free_their_slots(loaded):
    app = create_app(loaded, ServeConfig(max_streams=8, max_length=100_000, max_n=8))
    capacity = app.state.capacity
    with running_server(loaded, app=app) as url:
        for _ in range(3):  # a client asks for 8 x 50,000 characters, takes every slot and gives up after 0.3 s
            with pytest.raises(httpx.TimeoutException):
                httpx.post(url + "v1/complete", json={"n": 8, "length": 50_000}, timeout=0.3)
            for _ in range(100):
                if capacity.used == 0:
                    break
                time.sleep(0.05)
            assert capacity.used == 0  # the abandoned work was cancelled, not finished for nobody
        assert httpx.post(url + "v1/complete", json={"n": 8, "length": 5}, timeout=30).status_code == 200


def test_a_request_body_that_never_arrives_times_out(loaded):
    with running_server(loaded, ServeConfig(request_timeout=0.5)) as url:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"POST /v1/complete HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 100\r\n\r\n{\"prompt\"")
            started = time.monotonic()
            reply = b""
            while not reply.endswith(b"}"):  # the headers and the body may come in separate packets
                chunk = connection.recv(4096)
                if not chunk:
                    break
                reply += chunk
            reply = reply.decode("latin-1")
    assert reply.startswith("HTTP/1.1 408") and time.monotonic() - started < 5
    assert "did not arrive" in json.loads(reply.split("\r\n\r\n", 1)[1])["error"]


def test_a_client_that_never_finishes_its_headers_is_disconnected(loaded):
    with running_server(loaded, ServeConfig(request_timeout=0.5)) as url:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"POST /v1/complete HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and then nothing
            started = time.monotonic()
            assert connection.recv(4096) == b""  # closed by the server
            assert time.monotonic() - started < 5
        assert httpx.get(url + "v1/models", timeout=30).status_code == 200
