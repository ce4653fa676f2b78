"""Data-parallel training on CPU with gloo, on loopback: real processes, each `python -m rnnlab train`
with the environment torchrun gives its workers (or torchrun itself, for the two-"node" run).

(a) 2 ranks with a per-rank batch b train what 1 process with the global batch 2b trains; (b) a 2-rank
run stopped by SIGTERM (sent to one rank only) and resumed on 2 ranks ends bit-identical to a straight
one; (c) killing one rank ends the other within a bounded time with one clear line, and the folder
still samples and resumes; (d) two torchrun launchers with --nnodes 2 (c10d rendezvous) train and
checkpoint; (e) a resume on another number of ranks is refused in one line, while the checkpoint
samples and evaluates on one process as it is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port

from rnnlab.training.checkpoint import load_checkpoint, read_pointer

TOLERANCE = 1e-5  # largest weight difference between 2 ranks and 1 process (float sums in another order)
COMMON = ["--hidden-size", "32", "--num-layers", "1", "--embedding-size", "16", "--seq-length", "16",
          "--dropout", "0", "--precision", "fp32", "--threads", "1", "--sample-length", "0", "--log-every", "5",
          "--no-progress", "--dist-timeout", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    words = ["the", "king", "shall", "not", "speak", "of", "love", "and", "war", "to", "me", "thee"]
    text = "\n".join(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(9)) for i in range(2500))
    path = tmp_path_factory.mktemp("ddp") / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def rank_environment(rank: int, world: int, port: int) -> dict:
    """What torchrun sets for each worker."""
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start_ranks(args: list[str], world: int, logs: Path) -> list[subprocess.Popen]:
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([sys.executable, "-m", "rnnlab", "train", *args], env=rank_environment(r, world, port),
                             stdout=open(logs / f"rank{r}.out", "wb"), stderr=open(logs / f"rank{r}.err", "wb"))
            for r in range(world)]


def finish(processes, limit: float = 180.0) -> list[int]:
    return [p.wait(timeout=limit) for p in processes]


def train_args(corpus: Path, folder: Path, batch: int, steps: int, *extra: str) -> list[str]:
    return [str(corpus), "--checkpoint-dir", str(folder), "--batch-size", str(batch), "--max-steps", str(steps),
            "--eval-every", "10", *COMMON, *extra]


def last_weights(folder: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(folder / read_pointer(folder, "last")["file"])
    return {k: v for k, v in ckpt.tensors.items() if k.startswith("model.")} or ckpt.build_model().state_dict()


def train_losses(folder: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["step"]: r["train_loss"] for r in records if r["event"] == "train"}


def stderr_of(logs: Path, rank: int) -> str:
    return (logs / f"rank{rank}.err").read_text(encoding="utf-8", errors="replace")


def wait_for_checkpoint(folder: Path, processes, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not (folder / "last.json").is_file():
        assert all(p.poll() is None for p in processes) and time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


def test_two_ranks_train_what_one_process_with_the_global_batch_trains(corpus, tmp_path):
    ranks = start_ranks(train_args(corpus, tmp_path / "ddp", 4, 30), 2, tmp_path / "logs")
    single = subprocess.run([sys.executable, "-m", "rnnlab", "train",
                             *train_args(corpus, tmp_path / "one", 8, 30)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=180)
    assert finish(ranks) == [0, 0], stderr_of(tmp_path / "logs", 0) + stderr_of(tmp_path / "logs", 1)
    assert single.returncode == 0, single.stderr
    ddp, one = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "one")
    assert ddp.keys() == one.keys() and len(ddp) == 6
    assert all(abs(ddp[s] - one[s]) < 1e-5 for s in ddp)  # (the mean loss of the ranks: the global batch's)
    a, b = last_weights(tmp_path / "ddp"), last_weights(tmp_path / "one")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < TOLERANCE
    # rank 0 alone wrote the folder and reported; its first line gives the global batch
    assert "a global batch of 8 x 16 tokens" in stderr_of(tmp_path / "logs", 0)
    assert (tmp_path / "logs" / "rank1.out").read_text(encoding="utf-8") == ""
    records = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["ranks"] for r in records if r["event"] == "start"] == [2]
    assert len([r for r in records if r["event"] == "val"]) == 3  # (once per validation, not once per rank)


def test_a_two_rank_run_stopped_by_sigterm_resumes_bit_identical(corpus, tmp_path):
    # (with dropout: each rank's own RNG state must come back to it)
    straight = start_ranks(train_args(corpus, tmp_path / "straight", 4, 300, "--dropout", "0.3"), 2,
                           tmp_path / "logs-straight")
    assert finish(straight) == [0, 0], stderr_of(tmp_path / "logs-straight", 0)
    args = train_args(corpus, tmp_path / "stopped", 4, 300, "--dropout", "0.3")
    first = start_ranks(args, 2, tmp_path / "logs-first")
    wait_for_checkpoint(tmp_path / "stopped", first)
    first[1].send_signal(signal.SIGTERM)  # (one rank only: the ranks agree to stop at the same step)
    assert finish(first) == [0, 0], stderr_of(tmp_path / "logs-first", 0) + stderr_of(tmp_path / "logs-first", 1)
    stopped_at = read_pointer(tmp_path / "stopped", "last")
    step = load_checkpoint(tmp_path / "stopped" / stopped_at["file"]).trainer["progress"]["step"]
    assert step < 300
    resumed = start_ranks(["--resume", str(tmp_path / "stopped"), "--threads", "1", "--no-progress"], 2,
                          tmp_path / "logs-resumed")
    assert finish(resumed) == [0, 0], stderr_of(tmp_path / "logs-resumed", 0) + stderr_of(tmp_path / "logs-resumed", 1)
    a, b = last_weights(tmp_path / "straight"), last_weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # (the logged train loss is a mean over the steps since the last line: the one line whose window the
    # stop cut differs)
    window_cut = {s for s in train_losses(tmp_path / "straight") if step < s < step + 5}
    cut = {k: v for k, v in train_losses(tmp_path / "stopped").items() if k not in window_cut}
    assert cut == {k: v for k, v in train_losses(tmp_path / "straight").items() if k not in window_cut}


def test_a_killed_rank_ends_the_other_with_one_line_and_the_folder_still_samples(corpus, tmp_path):
    folder, logs = tmp_path / "run", tmp_path / "logs"
    ranks = start_ranks(train_args(corpus, folder, 4, 100_000), 2, logs)
    wait_for_checkpoint(folder, ranks)
    ranks[1].kill()
    killed_at = time.monotonic()
    code = ranks[0].wait(timeout=60)
    assert time.monotonic() - killed_at < 30
    err = stderr_of(logs, 0)
    assert code == 1 and "rnnlab: error: rank 0: lost the other ranks" in err and "Traceback" not in err, err
    assert f"--resume {folder}" in err
    sample = subprocess.run([sys.executable, "-m", "rnnlab", "sample", str(folder), "--length", "40"],
                            capture_output=True, text=True, timeout=120)
    assert sample.returncode == 0 and len(sample.stdout) >= 40, sample.stderr
    resumed = start_ranks(["--resume", str(folder), "--max-steps", "40", "--threads", "1", "--no-progress"], 2,
                          tmp_path / "logs-resumed")
    assert finish(resumed) == [0, 0], stderr_of(tmp_path / "logs-resumed", 0)


def test_two_torchrun_nodes_on_loopback_train_and_checkpoint(corpus, tmp_path):
    port = free_port()
    launchers = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank",
                                   str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                                   f"127.0.0.1:{port}", "--rdzv-id", "rnnlab-test", "-m", "rnnlab", "train",
                                   *train_args(corpus, tmp_path / "run", 4, 20)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
                 for node in range(2)]
    outputs = [launcher.communicate(timeout=240)[0].decode(errors="replace") for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs
    ckpt = load_checkpoint(tmp_path / "run" / read_pointer(tmp_path / "run", "last")["file"])
    assert ckpt.trainer["world_size"] == 2 and ckpt.trainer["progress"]["step"] == 20
    assert sorted(k for k in ckpt.tensors if k.startswith("rng.cpu.")) == ["rng.cpu.0", "rng.cpu.1"]
    assert ckpt.tensors["carry.0"].shape[1] == 8  # (both ranks' streams: the global batch)


def test_a_resume_on_another_number_of_ranks_is_refused_and_the_checkpoint_works_on_one(corpus, tmp_path):
    folder = tmp_path / "run"
    assert finish(start_ranks(train_args(corpus, folder, 4, 20), 2, tmp_path / "logs")) == [0, 0]
    alone = subprocess.run([sys.executable, "-m", "rnnlab", "train", "--resume", str(folder), "--max-steps", "30"],
                           capture_output=True, text=True, timeout=120)
    assert alone.returncode == 1 and len(alone.stderr.strip().splitlines()) == 1, alone.stderr
    assert "was trained on 2 ranks" in alone.stderr and "resume it on 2 ranks" in alone.stderr
    for command in (["sample", str(folder), "--length", "20"], ["eval", str(folder), str(corpus)]):
        done = subprocess.run([sys.executable, "-m", "rnnlab", *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("settings", [
    # (k1 < k2: each step's forward runs in segments, and a cluster of the adaptive head may go unused)
    ["--seq-length", "16", "--k1", "8", "--batching", "equidistant", "--tokenizer", "word", "--head", "adaptive",
     "--adaptive-cutoffs", "4,8", "--weight-drop", "0.2", "--optimizer", "nt-asgd", "--nt-asgd-interval", "1",
     "--precision", "bf16"],
    ["--scheme", "2", "--head", "mos"],  # (equidistant batches, a learned initial state, segmented forwards)
], ids=["word-segments-adaptive-weightdrop-ntasgd-bf16", "scheme2-mos"])
def test_the_rest_of_the_toolkit_trains_on_two_ranks(corpus, tmp_path, settings):
    folder, logs = tmp_path / "run", tmp_path / "logs"
    args = [str(corpus), "--checkpoint-dir", str(folder), "--hidden-size", "32", "--num-layers", "2",
            "--batch-size", "4", "--max-steps", "30", "--eval-every", "10", "--threads", "1", "--sample-length", "0",
            "--no-progress", *settings]
    assert finish(start_ranks(args, 2, logs)) == [0, 0], stderr_of(logs, 0) + stderr_of(logs, 1)
    ckpt = load_checkpoint(folder / read_pointer(folder, "last")["file"])
    assert ckpt.trainer["world_size"] == 2 and ckpt.trainer["progress"]["step"] == 30


def test_a_folder_rank_0_cannot_use_stops_every_rank_with_its_line(corpus, tmp_path):
    folder, logs = tmp_path / "taken", tmp_path / "logs"
    folder.mkdir()
    (folder / "lm_lstm_epoch1.00_1.0000.safetensors").write_bytes(b"another run")
    codes = finish(start_ranks(train_args(corpus, folder, 4, 20), 2, logs), limit=120)
    assert codes == [1, 1]
    for rank in (0, 1):
        lines = stderr_of(logs, rank).strip().splitlines()
        assert len(lines) == 1 and "holds another run" in lines[0], lines
