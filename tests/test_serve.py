"""The HTTP API in-process (TestClient): listing, completing (streamed and not), scoring, validation, caps."""

import asyncio
import json

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from rnnlab.config import SampleConfig, ServeConfig  # noqa: E402
from rnnlab.sampling import TokenSampler  # noqa: E402
from rnnlab.serve.app import create_app  # noqa: E402
from rnnlab.serve.engine import Capacity, LoadedModel, Scheduler, Stream  # noqa: E402


@pytest.fixture(scope="module")
def loaded(trained_checkpoint):
    return [LoadedModel.load("shakespeare", trained_checkpoint), LoadedModel.load("other", trained_checkpoint)]


@pytest.fixture
def client(loaded):
    config = ServeConfig(max_prompt_chars=50, max_length=5000, max_n=3, max_streams=4, max_score_chars=80)
    with TestClient(create_app(loaded, config), base_url="http://127.0.0.1") as test_client:
        yield test_client


def test_models_are_listed_with_their_facts(client):
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["shakespeare", "other"]
    first = models[0]
    assert first["parameters"] > 0 and first["vocab_size"] == 65 and first["best_val_loss"] > 0
    assert "tinyshakespeare" in first["corpus"]


def test_complete_returns_n_reproducible_completions(client):
    body = {"prompt": "ROMEO:", "length": 30, "n": 2, "seed": 7, "temperature": 0.8}
    first = client.post("/v1/complete", json=body).json()
    again = client.post("/v1/complete", json=body).json()
    assert [len(c["text"]) for c in first["completions"]] == [30, 30]
    assert first["completions"] == again["completions"] and first["seed"] == 7


def test_streamed_completion_arrives_as_server_sent_events(client):
    with client.stream("POST", "/v1/complete", json={"prompt": "KING", "length": 25, "stream": True, "seed": 3}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[0]["model"] == "shakespeare" and events[-1] == {"done": True}
    streamed = "".join(e["text"] for e in events if "text" in e)
    plain = client.post("/v1/complete", json={"prompt": "KING", "length": 25, "seed": 3}).json()
    assert streamed == plain["completions"][0]["text"]


def test_unknown_prompt_characters_are_dropped_and_listed(client):
    result = client.post("/v1/complete", json={"prompt": "Ça ☃ va", "length": 5}).json()
    assert result["dropped"] == ["Ç", "☃"] and len(result["completions"][0]["text"]) == 5


def test_score_gives_bits_per_character(client):
    result = client.post("/v1/score", json={"text": "To be, or not☃"}).json()
    assert len(result["characters"]) == 14 and result["unknown"] == ["☃"]
    assert result["characters"][-1]["bits"] is None and all(c["bits"] > 0 for c in result["characters"][:-1])
    assert abs(result["bits_per_char"] - sum(c["bits"] for c in result["characters"][:-1]) / 13) < 1e-9


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/complete", {"model": "nope"}, 404, "no model named 'nope'"),
    ("/v1/complete", {"temperature": 0}, 422, "temperature"),
    ("/v1/complete", {"top_p": 1.5}, 422, "top_p"),
    ("/v1/complete", {"length": 0}, 422, "length"),
    ("/v1/complete", {"length": 5001}, 422, "over the limit of 5000"),
    ("/v1/complete", {"n": 4}, 422, "over the limit of 3"),
    ("/v1/complete", {"prompt": "x" * 51}, 413, "limit is 50"),
    ("/v1/complete", {"seed": -1}, 422, "seed"),
    ("/v1/complete", {"length": "long"}, 422, "length"),
    ("/v1/score", {"text": ""}, 422, "text"),
    ("/v1/score", {"text": "a" * 81}, 413, "limit is 80"),
    ("/v1/score", {}, 422, "text"),
])
def test_every_bad_request_gets_a_json_4xx(client, path, body, status, message):
    response = client.post(path, json=body)
    assert response.status_code == status and message in response.json()["error"]


def test_too_many_streams_get_503_and_a_client_that_leaves_frees_its_work(client):
    capacity = client.app.state.capacity
    capacity.acquire(3)  # three completions in progress (held here: the test client's timing is its own)
    busy = client.post("/v1/complete", json={"n": 3, "length": 5})
    assert busy.status_code == 503 and "limit 4" in busy.json()["error"]
    capacity.release(3)
    with client.stream("POST", "/v1/complete", json={"n": 3, "length": 5000, "stream": True}) as response:
        next(response.iter_lines())
    # the streaming client went away before its 15,000 characters: its slots come back
    for _ in range(250):
        if capacity.used == 0:
            break
        import time
        time.sleep(0.02)
    assert capacity.used == 0
    assert client.post("/v1/complete", json={"n": 3, "length": 5}).status_code == 200


def test_the_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "/v1/complete" in page.text and "Surprise" in page.text


def test_concurrent_streams_share_batched_steps_and_cancelled_ones_leave(loaded):
    async def scenario():
        scheduler = Scheduler(loaded[0], Capacity(10))
        streams = [Stream([1, 2], 40, TokenSampler(SampleConfig(seed=i))) for i in range(3)]
        scheduler.submit(streams)
        await asyncio.sleep(0)
        first = await streams[0].queue.get()
        streams[2].cancel()
        texts = [[first], [], []]
        for index in (0, 1):
            while (token := await streams[index].queue.get()) is not None:
                texts[index].append(token)
        return scheduler, texts

    scheduler, texts = asyncio.run(scenario())
    assert len(texts[0]) == 40 and len(texts[1]) == 40
    assert scheduler.steps < 2 * 40  # the streams advanced together, not one after another
    assert scheduler.active == [] and scheduler.capacity.used == 0  # the cancelled stream freed its slot


def test_max_batch_one_serves_one_completion_at_a_time(loaded):
    async def scenario():
        scheduler = Scheduler(loaded[0], Capacity(10), max_batch=1)
        streams = [Stream([1, 2], 15, TokenSampler(SampleConfig(seed=i))) for i in range(3)]
        scheduler.submit(streams)
        for stream in streams:
            while await stream.queue.get() is not None:
                pass
        return scheduler

    scheduler = asyncio.run(scenario())
    assert scheduler.steps == 3 * 14  # each completion stepped on its own (its first character needs no step)


def test_a_word_level_model_completes_words_and_scores_per_character(tmp_path_factory, ptb_folder):
    from conftest import tiny_config

    from rnnlab.training.loop import train

    folder = tmp_path_factory.mktemp("word-model")
    config = tiny_config(folder, data=ptb_folder, max_steps=6, eval_every=6)
    config.data.tokenizer = "word"
    train(config, progress_bar=False)
    word = LoadedModel.load("words", folder)
    assert word.info["tokenizer"] == "word"
    config = ServeConfig(max_prompt_chars=50, max_length=100, max_n=2, max_streams=4, max_score_chars=200)
    with TestClient(create_app([word], config), base_url="http://127.0.0.1") as client:
        result = client.post("/v1/complete", json={"prompt": "the king zyzzyva", "length": 6, "seed": 1}).json()
        assert result["dropped"] == ["zyzzyva"]
        text = result["completions"][0]["text"]
        assert len(text.split()) + text.count("\n") == 6 and text[0] in " \n"  # six words after the prompt
        streamed = client.post("/v1/complete", json={"prompt": "the king", "length": 6, "seed": 1, "stream": True})
        pieces = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert "".join(p.get("text", "") for p in pieces if "index" in p) == client.post(
            "/v1/complete", json={"prompt": "the king", "length": 6, "seed": 1}).json()["completions"][0]["text"]
        scored = client.post("/v1/score", json={"text": "the king is dead \n"}).json()
        spans = [c["char"] for c in scored["characters"]]
        assert "".join(spans) == "the king is dead \n" and len(spans) == 5  # four words and <eos>
        bits = sum(c["bits"] for c in scored["characters"])
        assert abs(scored["bits_per_char"] - bits / len("the king is dead \n")) < 1e-9
