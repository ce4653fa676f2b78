"""`rnnlab sweep`: the space file (every distribution, each bad space in one line), a small sweep that
writes every output and a best.toml that trains, continuing a stopped sweep (same command, Ctrl-C and
kill -9) without redoing finished trials, the pruner stopping a trial known to be bad, and several
workers on one machine sharing the study."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("matplotlib")
pytest.importorskip("tomli_w")

from rnnlab.cli import main  # noqa: E402
from rnnlab.config import RunConfig, SweepConfig, build_run_config  # noqa: E402
from rnnlab.errors import ConfigError  # noqa: E402
from rnnlab.experiments.space import nested, parse_space, sweepable_fields  # noqa: E402
from rnnlab.experiments.sweep import open_study, prepare_sweep, run_sweep  # noqa: E402
from rnnlab.experiments.sweep_report import curves_figure, trial_rows, write_outputs  # noqa: E402

BASE = """
[model]
num_layers = 1
hidden_size = 24
embedding_size = 8
dropout = 0.0
[train]
batch_size = 4
seq_length = 16
eval_batch_size = 16
log_every = 5
"""

SPACE = """
[train.learning_rate]
type = "float"
low = 2e-3
high = 1e-2
log = true

[model.hidden_size]
type = "categorical"
choices = [16, 24]
"""

EVERY_KIND = """
[train.learning_rate]
type = "float"
low = 1e-4
high = 1e-2
log = true

[model.dropout]
type = "float"
low = 0.0
high = 0.5
step = 0.25

[model.num_layers]
type = "int"
low = 1
high = 3

[train.batch_size]
type = "int"
low = 4
high = 64
log = true

[model.cell]
type = "categorical"
choices = ["lstm", "gru"]

[model.tie_weights]
type = "categorical"
choices = [true, false]

[train.reset_every]
type = "categorical"
choices = [0, 64, 320]
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep-files")
    words = ["the", "king", "shall", "not", "speak", "of", "love", "and", "war", "to", "me", "thee"]
    text = "\n".join(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8)) for i in range(1500))
    (folder / "corpus.txt").write_text(text, encoding="utf-8")
    (folder / "base.toml").write_text(BASE, encoding="utf-8")
    (folder / "space.toml").write_text(SPACE, encoding="utf-8")
    return folder


def sweep_args(files, out, *extra):
    return ["--quiet", "sweep", str(files / "corpus.txt"), "--space", str(files / "space.toml"), "--config",
            str(files / "base.toml"), "--out", str(out), "--trial-steps", "24", "--validations", "3", *extra]


def starts(folder: Path) -> list[dict]:
    lines = (folder / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == "start"]


def study_of(out: Path):
    return optuna.load_study(study_name="rnnlab", storage=f"sqlite:///{out / 'sweep.db'}")


# --- the space ------------------------------------------------------------------------------------

def space_of(text: str, tmp_path):
    from rnnlab.config.fields import tomllib

    return parse_space(tomllib.loads(text), defaults_with)


def defaults_with(values: dict) -> RunConfig:
    return build_run_config(None, nested(values))


def test_a_space_with_every_distribution_parses_and_samples_within_it(tmp_path):
    knobs = {k.name: k for k in space_of(EVERY_KIND, tmp_path)}
    assert knobs["train.learning_rate"].log and knobs["train.learning_rate"].kind == "float"
    assert knobs["model.dropout"].grid_values() == [0.0, 0.25, 0.5]
    assert knobs["model.num_layers"].grid_values() == [1, 2, 3]
    assert knobs["model.tie_weights"].choices == (True, False)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        values = {name: knob.suggest(trial) for name, knob in knobs.items()}
        assert 1e-4 <= values["train.learning_rate"] <= 1e-2 and values["model.dropout"] in (0.0, 0.25, 0.5)
        assert isinstance(values["train.batch_size"], int) and 4 <= values["train.batch_size"] <= 64
        assert values["model.cell"] in ("lstm", "gru") and values["train.reset_every"] in (0, 64, 320)
        study.tell(trial, 1.0)


@pytest.mark.parametrize("space, message", [
    ('[train.lr]\ntype = "float"\nlow = 1\nhigh = 2', "train.lr cannot be swept; the fields a sweep can vary are: "),
    ('[data.path]\ntype = "categorical"\nchoices = ["a"]', "data.path cannot be swept"),
    ('[train.max_minutes]\ntype = "float"\nlow = 1\nhigh = 2', "train.max_minutes cannot be swept"),
    ('[model.dropout]\ntype = "int"\nlow = 0\nhigh = 1', "model.dropout is float: it cannot take a int distribution"),
    ('[model.hidden_size]\ntype = "categorical"\nchoices = ["big"]', "must be of type int"),
    ('[model.hidden_size]\ntype = "int"\nlow = 64\nhigh = 32', "empty range: low 64 > high 32"),
    ('[train.learning_rate]\ntype = "float"\nlow = 0.0\nhigh = 0.1\nlog = true', "low must be > 0"),
    ('[model.cell]\ntype = "categorical"\nchoices = []', "choices must be a non-empty list"),
    ('[model.hidden_size]\ntype = "int"\nlow = 8\nhigh = 16\nstep = 4\nlog = true', "log or step, not both"),
    ('[model.hidden_size]\ntype = "int"\nlow = 8\nhigh = 16\nsize = 2', "unknown: size"),
    ('[model.hidden_size]\nlow = 8\nhigh = 16', "needs type ="),
    ('[model.dropout]\ntype = "float"\nlow = 0.2\nhigh = 1.5', "model.dropout = 1.5 gives an invalid run"),
    ('[model]\ndropout = 0.2', "[model] must hold one table per field"),
    ('', "names no field to sweep"),
])
def test_each_bad_space_fails_in_one_line(space, message, tmp_path):
    with pytest.raises(ConfigError) as caught:
        space_of(space, tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_unknown_field_error_names_the_valid_fields(tmp_path):
    with pytest.raises(ConfigError) as caught:
        space_of('[train.lr]\ntype = "float"\nlow = 1\nhigh = 2', tmp_path)
    named = str(caught.value).split("can vary are: ")[1].split(", ")
    assert set(named) == set(sweepable_fields())
    assert {"train.learning_rate", "model.hidden_size", "train.batch_size", "model.dropout",
            "train.reset_every"} <= set(named)
    assert not {"train.checkpoint_dir", "train.max_minutes", "data.path"} & set(named)


def test_a_bad_space_on_the_command_line_is_one_line(files, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text('[model.hidden_size]\ntype = "int"\nlow = 64\nhigh = 32\n', encoding="utf-8")
    code = main(["sweep", str(files / "corpus.txt"), "--space", str(tmp_path / "bad.toml"), "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "empty range" in err
    assert not (tmp_path / "out").exists()


def test_a_grid_needs_the_values_of_a_float(files, tmp_path, capsys):
    code = main(sweep_args(files, tmp_path / "out", "--sampler", "grid"))
    err = capsys.readouterr().err
    assert code == 1 and "grid sampler needs the values of train.learning_rate" in err


def test_the_blog_space_has_the_six_knobs_sized_to_the_machine():
    from rnnlab.experiments.space import load_space

    knobs = {k.name: k for k in load_space("blog", defaults_with, "cpu")}
    assert set(knobs) == {"train.batch_size", "train.learning_rate", "model.hidden_size", "model.dropout",
                          "model.num_layers", "train.reset_every"}
    assert max(knobs["model.hidden_size"].choices) < max(
        {k.name: k for k in load_space("blog", defaults_with, "cuda")}["model.hidden_size"].choices)
    assert all(r % RunConfig().train.seq_length == 0 for r in knobs["train.reset_every"].choices)


# --- a sweep and its outputs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    assert main(sweep_args(files, out, "--trials", "3")) == 0
    return out


def test_a_small_sweep_writes_every_output(finished):
    for name in ("trials.csv", "report.md", "best.toml", "curves.png", "history.png", "importances.png",
                 "slice.png", "parallel.png", "sweep.db"):
        assert (finished / name).is_file(), name
    for png in finished.glob("*.png"):
        import matplotlib.image

        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(png).shape[0] > 200
    with open(finished / "trials.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and {r["outcome"] for r in rows} == {"complete"}
    values = [float(r["val_bits_per_char"]) for r in rows]
    assert values == sorted(values)  # best first
    for r in rows:  # each trial is a normal run, with its own checkpoints and log
        folder = Path(r["folder"])
        assert (folder / "best.json").is_file() and len(starts(folder)) == 1 and r["steps"] == "24"
        assert float(r["val_2^H_per_char"]) == pytest.approx(2 ** (float(r["val_bits_per_char"]) * 0.693147), 1e-4)
    report = (finished / "report.md").read_text(encoding="utf-8")
    assert "| trial | outcome | bits/char | 2^H | train.learning_rate | model.hidden_size |" in report
    assert report.index(f"| {rows[0]['trial']} |") < report.index(f"| {rows[2]['trial']} |")
    assert "![curves.png](curves.png)" in report and "Parameter importances" in report


def test_the_best_run_samples_and_its_preset_trains(finished, tmp_path, capsys):
    assert (finished / "best").is_symlink()
    assert main(["sample", str(finished / "best"), "--length", "20", "--seed", "1"]) == 0
    best = (finished / "best.toml").read_text(encoding="utf-8")
    assert best.startswith("# rnnlab sweep: the best of") and "checkpoint_dir" not in best
    code = main(["--quiet", "train", "--config", str(finished / "best.toml"), "--max-steps", "5",
                 "--checkpoint-dir", str(tmp_path / "again")])
    assert code == 0 and (tmp_path / "again" / "best.json").is_file()
    trained = starts(tmp_path / "again")[0]["config"]
    best_trial = trial_rows(study_of(finished), finished)[0]
    assert trained["model"]["hidden_size"] == best_trial.params["model.hidden_size"]
    assert trained["train"]["learning_rate"] == pytest.approx(best_trial.params["train.learning_rate"])
    capsys.readouterr()


def test_the_curves_figure_has_labelled_axes_and_one_row_per_knob(files, finished):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = prepare_sweep(SweepConfig(space=str(files / "space.toml"), out=str(finished),
                                      config=str(files / "base.toml"), trial_steps=24, validations=3),
                          str(files / "corpus.txt"))
    figure = curves_figure(plt, sweep.knobs, trial_rows(study_of(finished), finished))
    axes = [ax for ax in figure.axes if ax.get_xlabel()]
    assert [ax.get_xlabel() for ax in axes[:2]] == ["epoch (passes over the training split)", "wall time (minutes)"]
    assert all(ax.get_ylabel() == "validation bits per character" for ax in axes[:4])
    assert len(axes[0].lines) >= 3  # a curve per trial
    plt.close(figure)


def test_the_same_command_continues_without_redoing_finished_trials(files, tmp_path):
    out = tmp_path / "out"
    assert main(sweep_args(files, out, "--trials", "2")) == 0
    before = {p.name: (p / "log.jsonl").read_text(encoding="utf-8") for p in (out / "trials").iterdir()}
    assert main(sweep_args(files, out, "--trials", "3")) == 0
    after = {p.name: (p / "log.jsonl").read_text(encoding="utf-8") for p in (out / "trials").iterdir()}
    assert len(after) == 3 and all(after[name] == text for name, text in before.items())
    trials = study_of(out).trials
    assert len(trials) == 3 and len({tuple(sorted(t.params.items())) for t in trials}) == 3  # no value drawn again
    assert main(sweep_args(files, out, "--trials", "3")) == 0  # nothing left to do
    assert len(study_of(out).trials) == 3


def test_a_different_sweep_in_the_same_folder_is_refused(files, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(sweep_args(files, out, "--trials", "1")) == 0
    code = main(sweep_args(files, out, "--trials", "1", "--validations", "4"))
    err = capsys.readouterr().err
    assert code == 1 and "is another sweep (these differ: budget)" in err


def run_in_background(args, log):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "rnnlab", *args], stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_for_checkpoint(folder: Path, process, limit=120.0):
    deadline = time.monotonic() + limit
    while not list(folder.glob("*.safetensors")):
        assert process.poll() is None and time.monotonic() < deadline, "the sweep ended before the checkpoint"
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_a_stopped_sweep_continues_its_trial_from_the_checkpoint(files, tmp_path, how):
    out = tmp_path / "out"
    args = sweep_args(files, out, "--trials", "2", "--heartbeat", "1")
    args[args.index("--trial-steps") + 1] = "400"
    args[args.index("--validations") + 1] = "8"
    with open(tmp_path / "first.log", "wb") as log:
        process = run_in_background(args, log)
        wait_for_checkpoint(out / "trials" / "0001", process)
        process.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
        code = process.wait(timeout=120)
    assert code == (130 if how == "sigint" else -9), (tmp_path / "first.log").read_text()
    if how == "sigint":  # stopped cleanly: the report is written and says what is left
        assert (out / "report.md").is_file()
    assert main(args) == 0
    folder = out / "trials" / "0001"
    runs = starts(folder)
    assert [r["resumed"] for r in runs] == [False, True] and runs[1]["step"] > 0
    assert len(starts(out / "trials" / "0000")) == 1  # the finished trial was not run again
    rows = trial_rows(study_of(out), out)
    assert sorted(r.outcome for r in rows) == ["complete", "complete"]
    assert {Path(r.folder).name for r in rows} == {"0000", "0001"}
    assert next(r for r in rows if r.folder.endswith("0001")).steps == 400


def test_the_pruner_stops_a_trial_that_is_worse_than_the_median(files, tmp_path):
    (tmp_path / "lr.toml").write_text('[train.learning_rate]\ntype = "categorical"\nchoices = [0.006, 0.008, 1e-7]\n',
                                      encoding="utf-8")
    config = SweepConfig(space=str(tmp_path / "lr.toml"), out=str(tmp_path / "out"), config=str(files / "base.toml"),
                         sampler="random", trials=3, trial_steps=40, validations=4, prune_after=2)
    sweep = prepare_sweep(config, str(files / "corpus.txt"))
    study = open_study(sweep, worker=0)
    for rate in (0.006, 0.008, 1e-7):  # the bad rate last, once the pruner has trials to compare with
        study.enqueue_trial({"train.learning_rate": rate})
    run_sweep(sweep, progress_bar=False, verbose=False)
    rows = {r.params["train.learning_rate"]: r for r in trial_rows(study_of(tmp_path / "out"), tmp_path / "out")}
    assert rows[0.006].outcome == rows[0.008].outcome == "complete"
    bad = rows[1e-7]
    assert bad.outcome == "pruned" and bad.validations == 2 and bad.steps == 20  # stopped at its second validation
    assert study_of(tmp_path / "out").trials[2].state.name == "PRUNED"
    written = write_outputs(sweep, study_of(tmp_path / "out"))
    assert "| **pruned** |" in written["report.md"].read_text(encoding="utf-8")


def test_workers_on_one_machine_share_the_study(files, tmp_path):
    out = tmp_path / "out"
    assert main(sweep_args(files, out, "--trials", "4", "--workers", "2")) == 0
    from rnnlab.experiments.sweep import live_trials

    everything = study_of(out).trials
    trials = live_trials(everything)  # (both workers may draw a 5th at once: the later one gives it up)
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert all(t.user_attrs["outcome"] == "surplus" for t in everything if t not in trials)
    folders = sorted(p.name for p in (out / "trials").iterdir())
    assert folders == sorted(f"{t.number:04d}" for t in trials)  # (a surplus trial never made a folder)
    assert all(len(starts(out / "trials" / f)) == 1 for f in folders)


# --- claims, retries and folders --------------------------------------------------------------------

def small_sweep(files, out: Path, **settings) -> "Sweep":  # noqa: F821
    config = SweepConfig(space=str(files / "space.toml"), out=str(out), config=str(files / "base.toml"),
                         trial_steps=24, validations=3, **settings)
    return prepare_sweep(config, str(files / "corpus.txt"))


def test_sqlite_transactions_take_the_write_lock_when_they_begin(files, tmp_path):
    """Optuna claims a queued trial by reading it and then writing it: on SQLite that is atomic only if
    every transaction takes the write lock first (BEGIN IMMEDIATE), so a read waits for another writer."""
    import sqlite3
    import threading

    study = open_study(small_sweep(files, tmp_path / "out"), worker=0)
    holder = sqlite3.connect(tmp_path / "out" / "sweep.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    reader = threading.Thread(target=study.get_trials)
    reader.start()
    reader.join(timeout=1.0)
    assert reader.is_alive()  # (a deferred transaction would have read at once)
    holder.execute("ROLLBACK")
    reader.join(timeout=30)
    assert not reader.is_alive()


def test_two_queued_copies_of_one_trial_run_once_and_a_queue_only_study_draws_nothing(files, tmp_path):
    from rnnlab.errors import RnnlabError
    from rnnlab.experiments.sweep import Objective, live_trials
    from rnnlab.training.loop import StopRequest

    sweep = small_sweep(files, tmp_path / "out", trials=2)
    sweep.queued_only = True
    study = open_study(sweep, worker=0)
    for values in ({"train.learning_rate": 0.006, "model.hidden_size": 16},) * 2 + \
            ({"train.learning_rate": 0.008, "model.hidden_size": 24},):  # (two invocations queued the first)
        study.enqueue_trial(values, skip_if_exists=False)
    run_sweep(sweep, progress_bar=False, verbose=False)
    trials = study_of(tmp_path / "out").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[1].user_attrs["outcome"] == "surplus" and not (tmp_path / "out" / "trials" / "0001").exists()
    assert [t.number for t in live_trials(trials)] == [0, 2]
    assert len(trial_rows(study, tmp_path / "out")) == 2
    # a fresh draw (another worker took the last queued trial first) is given up, not run off the queue
    study.optimize(Objective(sweep, 1, StopRequest()), n_trials=1, catch=(RnnlabError,))
    last = study_of(tmp_path / "out").trials[-1]
    assert last.state.name == "FAIL" and last.user_attrs["outcome"] == "surplus"
    assert not (tmp_path / "out" / "trials" / f"{last.number:04d}").exists()


def test_a_fresh_trial_starts_over_what_a_deleted_study_left_and_folders_are_relative(files, tmp_path):
    out = tmp_path / "out"
    assert main(sweep_args(files, out, "--trials", "1")) == 0
    assert study_of(out).trials[0].user_attrs["folder"] == "trials/0000"  # (machines' --out may differ)
    (out / "sweep.db").unlink()
    assert main(sweep_args(files, out, "--trials", "1")) == 0
    runs = starts(out / "trials" / "0000")
    assert runs and not any(r["resumed"] for r in runs)  # a new trial 0, not a resume of the old one's run
    before = (out / "trials" / "0000" / "log.jsonl").read_text(encoding="utf-8")
    assert main(sweep_args(files, out, "--trials", "1", "--study", "other")) == 0
    assert len(starts(out / "trials-other" / "0000")) == 1  # another study in the folder: its own run folders
    assert (out / "trials" / "0000" / "log.jsonl").read_text(encoding="utf-8") == before


def crashing_trainer(objective, trial, folder, values):
    raise RuntimeError("boom")


def test_a_trial_that_fails_on_a_non_rnnlab_error_is_recorded_and_not_retried(files, tmp_path):
    from rnnlab.experiments.sweep import retry_interrupted

    sweep = small_sweep(files, tmp_path / "out", trials=1)
    sweep.trainer = crashing_trainer
    study = run_sweep(sweep, progress_bar=False, verbose=False)
    (trial,) = study.trials
    assert trial.state.name == "FAIL" and trial.user_attrs["outcome"] == "error"
    assert trial.user_attrs["message"].startswith("RuntimeError: boom (traceback in ")
    assert "crashing_trainer" in (tmp_path / "out" / "trials" / "0000" / "error.txt").read_text(encoding="utf-8")
    retry_interrupted(study)
    assert len(study.trials) == 1


def test_a_trial_the_study_failed_while_it_ran_stops_quietly(files, tmp_path):
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from rnnlab.experiments.sweep import Objective
    from rnnlab.training.loop import StopRequest

    study = open_study(small_sweep(files, tmp_path / "out"), worker=0)
    trial = study.ask()
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # (its heartbeat went stale)
    objective = Objective(small_sweep(files, tmp_path / "out"), 1, StopRequest())
    run = SimpleNamespace(progress=SimpleNamespace(val_losses=[1.0]))
    assert objective.report(trial, run, SimpleNamespace(bits_per_char=1.0)) is True and objective.taken_away


def test_ctrl_c_during_a_validation_is_kept_when_the_pruner_also_stops_the_trial(files, tmp_path):
    from types import SimpleNamespace

    from rnnlab.experiments.sweep import Objective
    from rnnlab.training.loop import StopRequest

    study = open_study(small_sweep(files, tmp_path / "out"), worker=0)
    stop = StopRequest()
    objective = Objective(small_sweep(files, tmp_path / "out"), 1, stop)
    stop.request("received SIGINT")  # (during the validation the pruner is about to see)
    objective.report(study.ask(), SimpleNamespace(progress=SimpleNamespace(val_losses=[1.0])),
                     SimpleNamespace(bits_per_char=1.0))
    assert objective.user_stopped


def test_the_blog_space_continues_with_the_ranges_the_study_began_with(files, tmp_path):
    config = SweepConfig(space="blog", out=str(tmp_path / "out"), trial_steps=24)
    first = prepare_sweep(config, str(files / "corpus.txt"))
    study = open_study(first, worker=0)
    saved = study.user_attrs["sweep"]
    hidden = next(k for k in saved["space"] if k["name"] == "model.hidden_size")
    hidden["choices"] = [32, 48]  # (as another machine, e.g. one with a GPU, sized it)
    study.set_user_attr("sweep", saved)
    again = prepare_sweep(config, str(files / "corpus.txt"))
    open_study(again, worker=0)  # (not refused as another sweep)
    assert next(k for k in again.knobs if k.name == "model.hidden_size").choices == (32, 48)
