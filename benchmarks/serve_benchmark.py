"""`rnnlab serve` under load: memory of many models, latency under concurrency, micro-batching gain.

1. Peak RSS (VmHWM) of one `rnnlab serve` process holding 5 and then 10 one-hot LSTMs of the
   blog's shape (3 layers x 795 units, V = 97), after each has served a completion. Target for 5
   models: <= 1 GiB.
2. p50/p95 latency of a 200-character completion at 1, 8 and 32 concurrent clients (each client
   sends `--requests` requests in a row), against a server holding one such model.
3. Throughput (characters/s over all clients) at 32 concurrent clients with micro-batching and with
   `--max-batch 1` (one completion at a time), measured in the same run.
4. Single-stream completion speed (one client) with the default engine (the fastest within 1e-2 of
   the fp32 model: the compiled step; int8 on these random weights) and with the compiled int12 and
   fp16 engines (what the default falls to on checkpoints where int8 strays: int12 on AVX-512 VNNI,
   else fp16) against `--engine-weights fp32` (the NumPy fp32 engine the server used before the
   compiled step), in the same run, as ratios.
Everything runs on loopback; every loop is bounded in count and time.

    python benchmarks/serve_benchmark.py [--requests 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from common import machine

from rnnlab.config import ModelConfig, RunConfig
from rnnlab.data.vocab import CharVocab
from rnnlab.models.lm import RecurrentLM
from rnnlab.training.checkpoint import save_checkpoint

LENGTH = 200


def blog_sized_checkpoints(folder: Path, count: int) -> list[Path]:
    config = RunConfig()
    config.model = ModelConfig(cell="lstm", num_layers=3, hidden_size=795, embedding_size=0, dropout=0.0)
    vocab = CharVocab([chr(32 + i) for i in range(96)] + ["\n"])  # V = 97, as the blog's corpora
    paths = []
    for index in range(count):
        torch.manual_seed(index)
        model = RecurrentLM(config.model, len(vocab))
        paths.append(save_checkpoint(folder / f"model{index}.safetensors", model, config, vocab,
                                     metrics={"corpus": f"synthetic-{index}", "val_loss": 1.0}))
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(paths: list[Path], *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "rnnlab", "--quiet", "serve", *map(str, paths), "--port", str(port), *extra]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
    proc.kill()
    raise SystemExit("server did not start")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def client(http: httpx.AsyncClient, url: str, model: str, requests: int, latencies: list[float]) -> None:
    for _ in range(requests):
        start = time.perf_counter()
        response = await http.post(url + "v1/complete", json={"model": model, "prompt": "The ", "length": LENGTH})
        response.raise_for_status()
        assert len(response.json()["completions"][0]["text"]) == LENGTH
        latencies.append(time.perf_counter() - start)


async def load(url: str, model: str, clients: int, requests: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as http:
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client(http, url, model, requests, latencies)
                                                for _ in range(clients))), timeout=900)
        seconds = time.perf_counter() - start
    return latencies, clients * requests * LENGTH / seconds


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4, help="requests per client in a row")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as scratch:
        paths = blog_sized_checkpoints(Path(scratch), 10)
        parameters = RecurrentLM(ModelConfig(cell="lstm", num_layers=3, hidden_size=795, embedding_size=0), 97)
        print(f"models: one-hot LSTM 3x795, V=97, {parameters.num_parameters():,} parameters each")
        for count in (5, 10):
            proc, url = start_server(paths[:count])
            try:
                for m in httpx.get(url + "v1/models").json()["models"]:
                    httpx.post(url + "v1/complete", json={"model": m["name"], "length": 20}, timeout=60)
                print(f"peak RSS with {count} models loaded and used: {peak_rss_mb(proc.pid):,.0f} MB")
            finally:
                proc.terminate()
                proc.wait(30)
        single = {}
        for label, extra in (("default engine", ()), ("--engine-weights int12", ("--engine-weights", "int12")),
                             ("--engine-weights fp16", ("--engine-weights", "fp16")),
                             ("--engine-weights fp32", ("--engine-weights", "fp32"))):
            proc, url = start_server(paths[:1], *extra)
            try:
                model = httpx.get(url + "v1/models").json()["models"][0]["name"]
                rates = [asyncio.run(load(url, model, 1, args.requests))[1] for _ in range(3)]
                single[label] = statistics.median(rates)
                print(f"single stream, {label}: {single[label]:,.0f} characters/s "
                      f"(median of 3 x {args.requests} requests; {min(rates):,.0f}-{max(rates):,.0f})")
            finally:
                proc.terminate()
                proc.wait(30)
        exact = single["--engine-weights fp32"]
        print(f"single stream: the default engine is {single['default engine'] / exact:.2f}x the fp32 engine; "
              f"where int8 strays it falls to int12 ({single['--engine-weights int12'] / exact:.2f}x, AVX-512 "
              f"VNNI) or fp16 ({single['--engine-weights fp16'] / exact:.2f}x)")
        for label, extra in (("micro-batching", ()), ("one at a time (--max-batch 1)", ("--max-batch", "1"))):
            proc, url = start_server(paths[:1], *extra)
            try:
                model = httpx.get(url + "v1/models").json()["models"][0]["name"]
                print(f"\n{label}: {LENGTH}-character completions")
                for clients in (1, 8, 32):
                    latencies, rate = asyncio.run(load(url, model, clients, args.requests))
                    print(f"  {clients:2d} clients x {args.requests}: p50 {percentile(latencies, 50):.2f} s, "
                          f"p95 {percentile(latencies, 95):.2f} s, {rate:,.0f} characters/s in total")
            finally:
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
