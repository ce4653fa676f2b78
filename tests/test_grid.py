"""`rnnlab experiment grid`: the paper's grid on the sweep machinery — several corpora, the k2 part with
k1 = k2, 2k2/3, k2/3, repeats with their spread, every scheme scored the way it samples (checked
against the evaluators on the run's own checkpoint), the figures, and a second run that redoes nothing."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("matplotlib")

from rnnlab.cli import main  # noqa: E402
from rnnlab.config import DataConfig  # noqa: E402
from rnnlab.data.corpus import prepare_from_config  # noqa: E402
from rnnlab.evaluation import evaluate_tokens, evaluate_windowed  # noqa: E402
from rnnlab.experiments.grid import log_spaced_points  # noqa: E402
from rnnlab.training.checkpoint import load_checkpoint, read_pointer  # noqa: E402

TEST_CHARS = 240


def grid_args(folder: Path, *extra: str) -> list[str]:
    return ["--quiet", "experiment", "grid", "--corpus", f"a={folder / 'a.txt'}", "--corpus", f"b={folder / 'b.txt'}",
            "--out", str(folder / "out"), "--parts", "schemes,k2", "--schemes", "1,3", "--curve-architecture", "1x12",
            "--k1", "4,8", "--k2", "8", "--k2-values", "6", "--repeats", "2", "--steps", "8", "--points", "2",
            "--batch-size", "4", "--test-chars", str(TEST_CHARS), *extra]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    rng = random.Random(0)
    (folder / "a.txt").write_text("".join(rng.choice("abcdefgh \n") for _ in range(12_000)), encoding="utf-8")
    (folder / "b.txt").write_text("".join(rng.choice("abcXYZ \n") for _ in range(12_000)), encoding="utf-8")
    assert main(grid_args(folder)) == 0
    return folder


def runs_of(folder: Path) -> list[dict]:
    return json.loads((folder / "out" / "grid.json").read_text(encoding="utf-8"))["runs"]


def test_every_part_runs_on_every_corpus_with_its_repeats(grid):
    runs = runs_of(grid)
    schemes = [r for r in runs if r["part"] == "schemes"]
    assert len(schemes) == 2 * 2 * 2 * 2  # corpora x schemes x k1 x repeats
    assert {(r["corpus"], r["scheme"], r["k1"]) for r in schemes} == {
        (c, s, k) for c in "ab" for s in (1, 3) for k in (4, 8)}
    assert {r["seed"] for r in schemes} == {1234, 1235}
    k2 = [r for r in runs if r["part"] == "k2"]
    assert {r["corpus"] for r in k2} == {"b"}  # the last corpus, as the paper used one (Music)
    assert sorted({r["k1"] for r in k2}) == [2, 4, 6]  # k1 = k2, 2k2/3, k2/3
    for run in runs:
        assert [p["steps"] for p in run["curve"]] == log_spaced_points(8, 2)
        assert all(math.isfinite(p["perplexity"]) and p["seconds"] > 0 for p in run["curve"])


def test_repeats_differ_and_the_report_shows_their_range(grid):
    runs = [r for r in runs_of(grid) if r["part"] == "schemes" and (r["corpus"], r["scheme"], r["k1"]) == ("a", 1, 4)]
    assert len(runs) == 2 and runs[0]["curve"][-1]["perplexity"] != runs[1]["curve"][-1]["perplexity"]
    low, high = sorted(r["curve"][-1]["perplexity"] for r in runs)
    report = (grid / "out" / "grid.md").read_text(encoding="utf-8")
    assert f"({low:.2f}-{high:.2f})" in report
    assert "## What agrees with the paper's conclusions" in report
    assert "The paper: windowed sampling (scheme 1) is more robust to k1 than progressive (scheme 3). Here:" in report
    assert "| 1 | windowed |" in report and "| 3 | progressive |" in report


def test_each_scheme_is_scored_the_way_it_samples(grid):
    """A scheme-1 run's points are its windowed perplexity, a scheme-3 run's its progressive one, on the
    same characters: recomputed here from each run's own last checkpoint."""
    import optuna

    study = optuna.load_study(study_name="a-schemes", storage=f"sqlite:///{grid / 'out' / 'grid.db'}")
    corpus = prepare_from_config(DataConfig(path=str(grid / "a.txt")))
    fraction = TEST_CHARS / len(corpus.tokens)
    test = corpus.splits(fraction, fraction).test
    seen = set()
    for trial in study.trials:
        scheme = trial.params["train.scheme"]
        folder = grid / "out" / "a" / "schemes" / trial.user_attrs["folder"]
        model = load_checkpoint(folder / read_pointer(folder, "last")["file"]).build_model()
        windowed = evaluate_windowed(model, test, window=8, burn_in=8).nats_per_token
        progressive = evaluate_tokens(model, test, batch_size=1, seq_length=256, burn_in=8).nats_per_token
        expected = windowed if scheme == 1 else progressive
        assert trial.user_attrs["curve"][-1]["perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)
        assert abs(windowed - progressive) > 1e-6  # (the two ways differ: which one was used matters)
        seen.add(scheme)
    assert seen == {1, 3}


def test_the_figures_are_written_with_labelled_axes(grid):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rnnlab.experiments.grid_report import k2_figure, schemes_figure

    for name in ("schemes.png", "corpora.png", "k2.png"):
        assert (grid / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = runs_of(grid)
    figure = schemes_figure(plt, [r for r in runs if r["part"] == "schemes"], ["a", "b"], [1, 3], [4, 8], "corpus")
    assert [ax.get_title() for ax in figure.axes] == ["a", "b"]
    assert all(ax.get_xlabel() == "number of training sequences" and ax.get_xscale() == "log" for ax in figure.axes)
    assert all(ax.get_ylabel() == "test perplexity (e^nats/char)" for ax in figure.axes)
    assert len(figure.axes[0].lines) == 2 * 2  # a line per scheme and k1 (repeats drawn as one, with a band)
    plt.close(figure)
    figure = k2_figure(plt, [r for r in runs if r["part"] == "k2"], [1, 3], [6])
    assert all(ax.get_xlabel() == "training time (seconds)" for ax in figure.axes)
    assert len(figure.axes[0].lines) == 3  # k1 = 6, 4, 2
    plt.close(figure)


def test_a_second_run_redoes_nothing(grid):
    before = {p: p.stat().st_mtime_ns for p in (grid / "out").rglob("log.jsonl")}
    assert main(grid_args(grid)) == 0
    after = {p: p.stat().st_mtime_ns for p in (grid / "out").rglob("log.jsonl")}
    assert after == before and len(runs_of(grid)) == 16 + 12


def test_the_architectures_part_compares_r_by_gamma(tmp_path):
    rng = random.Random(1)
    (tmp_path / "a.txt").write_text("".join(rng.choice("abcdefgh \n") for _ in range(12_000)), encoding="utf-8")
    code = main(["--quiet", "experiment", "grid", "--corpus", f"a={tmp_path / 'a.txt'}", "--out", str(tmp_path / "out"),
                 "--parts", "architectures", "--architecture-schemes", "2", "--architectures", "1x8,2x8", "--k1", "8",
                 "--k2", "8", "--steps", "4", "--points", "2", "--batch-size", "4", "--test-chars", str(TEST_CHARS)])
    assert code == 0
    runs = runs_of(tmp_path)
    assert sorted((r["num_layers"], r["hidden_size"]) for r in runs) == [(1, 8), (2, 8)]
    assert all(r["scheme"] == 2 and r["curve"][-1]["sampling"] == "windowed" for r in runs)
    assert (tmp_path / "out" / "architectures.png").is_file()
    assert "r=1, γ=512 is the best architecture. Not in this grid" in (tmp_path / "out" / "grid.md").read_text(
        encoding="utf-8")


@pytest.mark.parametrize("flags, message", [
    (["--parts", "schemes,fig12"], "--parts takes architectures, schemes and k2"),
    (["--k1", "20,200"], "every k1 must be <= k2 (100)"),
    (["--schemes", "1,5"], "--schemes takes schemes 1-4"),
    (["--k2-corpus", "music"], "--k2-corpus 'music' is none of the corpora"),
    (["--test-chars", "5000000"], "too few for 5,000,000 of test text"),
])
def test_bad_grid_settings_are_one_line(flags, message, tmp_path, capsys):
    code = main(["experiment", "grid", "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1
