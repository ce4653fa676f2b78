"""A shared study on a real PostgreSQL server: two `rnnlab sweep` processes (as on two machines, each with
its own folder) run one grid; every point is run exactly once and the study completes.

The server is a throwaway cluster this module starts with the installed PostgreSQL (Debian's
`postgresql` package; `.ci/run` installs it), or the one RNNLAB_TEST_POSTGRES_URL names. Where neither
exists the test is skipped, unless RNNLAB_REQUIRE_POSTGRES is set (CI sets it): then it fails.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import free_port

SPACE = """
[model.hidden_size]
type = "categorical"
choices = [16, 20, 24]

[train.learning_rate]
type = "categorical"
choices = [0.004, 0.008]
"""

BASE = """
[model]
num_layers = 1
embedding_size = 8
dropout = 0.0
[train]
batch_size = 4
seq_length = 16
eval_batch_size = 16
"""


def unavailable(reason: str):
    if os.environ.get("RNNLAB_REQUIRE_POSTGRES"):
        pytest.fail(f"RNNLAB_REQUIRE_POSTGRES is set but {reason}")
    pytest.skip(reason)


def postgres_binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="module")
def postgres_url():
    for module in ("optuna", "psycopg2", "matplotlib", "tomli_w"):
        try:
            __import__(module)
        except ImportError:
            unavailable(f"{module} is not installed")
    if os.environ.get("RNNLAB_TEST_POSTGRES_URL"):
        yield os.environ["RNNLAB_TEST_POSTGRES_URL"]
        return
    binaries = postgres_binaries()
    if binaries is None:
        unavailable("PostgreSQL is not installed (apt-get install postgresql)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="rnnlab-postgres-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own system user runs the cluster
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()

    def run(*command):
        subprocess.run([*as_user, *map(str, command)], check=True, capture_output=True, timeout=120)

    try:
        run(binaries / "initdb", "-D", data, "-U", "rnnlab", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(binaries / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-t", "60", "-o",
            f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -F", "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        unavailable(f"the PostgreSQL cluster did not start: {exc.stderr.decode(errors='replace').strip()[-300:]}")
    try:
        yield f"postgresql+psycopg2://rnnlab@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_study_on_postgresql(postgres_url, tmp_path):
    import optuna

    from rnnlab.experiments.sweep import live_trials

    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]
    text = "\n".join(" ".join(words[(i * 5 + j * 2) % len(words)] for j in range(9)) for i in range(1200))
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    (tmp_path / "space.toml").write_text(SPACE, encoding="utf-8")
    (tmp_path / "base.toml").write_text(BASE, encoding="utf-8")
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    common = [str(tmp_path / "corpus.txt"), "--space", str(tmp_path / "space.toml"), "--config",
              str(tmp_path / "base.toml"), "--sampler", "grid", "--pruner", "none", "--trials", "6",
              "--trial-steps", "60", "--validations", "2", "--storage", postgres_url, "--study", "shared",
              "--heartbeat", "2", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "rnnlab", "sweep", *common, "--out", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for out in outs]
    outputs = [worker.communicate(timeout=240)[0].decode() for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    live = live_trials(study.trials)  # (both workers may draw a 7th: the later one gives it up as surplus)
    assert len(live) == 6 and all(t.state.name == "COMPLETE" for t in live)
    assert all(t.user_attrs["outcome"] == "surplus" for t in study.trials if t not in live)
    points = [(t.params["model.hidden_size"], t.params["train.learning_rate"]) for t in live]
    assert sorted(points) == sorted((h, lr) for h in (16, 20, 24) for lr in (0.004, 0.008))  # each once
    names = [t.user_attrs["folder"] for t in live]  # (relative to the --out of whichever machine ran it)
    assert len(set(names)) == 6
    folders = [out / name for name in names for out in outs if (out / name / "log.jsonl").is_file()]
    assert len(folders) == 6  # each trial's run is on one machine only
    for folder in folders:  # no trial was run twice: one run in each folder, from step 0 to the end
        records = [json.loads(line) for line in (folder / "log.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [r["resumed"] for r in records if r["event"] == "start"] == [False]
    assert all(any(f.is_relative_to(out) for f in folders) for out in outs)  # both workers ran trials
    for out in outs:  # each machine's report lists the whole study
        assert (out / "report.md").read_text(encoding="utf-8").startswith("# Sweep shared: 6 of 6 trials finished")
