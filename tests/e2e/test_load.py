"""A bounded load test on loopback: 32 concurrent clients x 20 completions each, zero errors."""

import asyncio
import json

import pytest

httpx = pytest.importorskip("httpx")

CLIENTS, REQUESTS_EACH, LENGTH = 32, 20, 20


async def one_client(client: httpx.AsyncClient, url: str, number: int) -> list[str]:
    problems = []
    for request in range(REQUESTS_EACH):
        stream = request % 2 == 1
        body = {"prompt": "ROMEO:", "length": LENGTH, "seed": number * 100 + request, "stream": stream}
        response = await client.post(url + "v1/complete", json=body)
        if response.status_code != 200:
            problems.append(f"{response.status_code}: {response.text[:100]}")
            continue
        if stream:
            events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
            text = "".join(e.get("text", "") for e in events)
            ok = events[-1] == {"done": True} and len(text) == LENGTH
        else:
            completions = response.json()["completions"]
            ok = len(completions) == 1 and len(completions[0]["text"]) == LENGTH
        if not ok:
            problems.append(f"malformed response: {response.text[:200]}")
    return problems


def test_32_concurrent_clients_get_only_well_formed_responses(server):
    async def run():
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            results = await asyncio.wait_for(
                asyncio.gather(*(one_client(client, server, n) for n in range(CLIENTS))), timeout=240)
        return [p for problems in results for p in problems]

    assert asyncio.run(run()) == []
