"""`rnnlab experiment grid`: the paper's experiment grid, not one slice of it.

Each part is a grid of runs on the sweep machinery (one Optuna study per corpus and part in
DIR/grid.db, its configurations queued as trials; workers, resuming after Ctrl-C or kill -9 and
the per-trial run folders are the sweep's):

* architectures (the paper's Figs. 7 and 8): r x gamma against schemes 1 and 2, a line per k1;
* schemes (Figs. 9 and 10): the four schemes on every corpus at one architecture, a line per k1;
* k2 (Fig. 11): k2 in {20, ..., 100} with k1 = k2, 2k2/3 and k2/3, against wall time.

Every configuration runs `--repeats` times (seeds seed, seed+1, ...); plots draw the mean with the
range of the repeats shaded. A run trains to log-spaced numbers of batches and, at each, is scored
on the corpus's test text (its last `--test-chars` characters) **the way its scheme samples**:
schemes 1 and 2 windowed (each character from its last k2 only, from the learned initial state),
schemes 3 and 4 progressively (one pass with the carried state) — both after the same k2
characters of bootstrap, so the same characters are scored. Perplexity is e^(nats/char), the paper's.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from rnnlab.config import GridExperimentConfig, SweepConfig, merge, parse_architectures
from rnnlab.config.run import WINDOWED_SCHEMES
from rnnlab.data.corpus import prepare_from_config
from rnnlab.errors import ConfigError, CorpusError
from rnnlab.evaluation import evaluate_tokens, evaluate_windowed
from rnnlab.experiments.space import Knob, nested
from rnnlab.experiments.sweep import (
    Sweep,
    SweepInterrupted,
    live_trials,
    open_study,
    optuna,
    require_optuna,
    run_sweep,
)
from rnnlab.training.checkpoint import atomic_write, read_pointer
from rnnlab.training.loop import train
from rnnlab.training.run import absolute_paths, resolve_run

log = logging.getLogger("rnnlab")

PAPER_COLOURS = ("tab:blue", "tab:green", "tab:red", "gold", "tab:purple", "tab:brown", "tab:pink", "tab:grey")
K1_FRACTIONS = (1.0, 2.0 / 3.0, 1.0 / 3.0)  # Fig. 11: k1 = k2, 2k2/3, k2/3


def log_spaced_points(steps: int, points: int) -> list[int]:
    """Batch counts at which a run is scored: `points` of them, log-spaced up to `steps`."""
    values = {max(1, round(steps ** (i / max(points - 1, 1)))) for i in range(points)} | {steps}
    return sorted(values)


@dataclass
class CurveTrainer:
    """How a grid trial trains: to each log-spaced point in turn (resuming its own run), scored there on
    the test text the way its scheme samples. Its curve is kept in the study and in curve.jsonl."""
    points: tuple[int, ...]

    def __call__(self, objective, trial, folder: Path, values: dict) -> float:
        resume = bool(objective.continuing and read_pointer(folder, "last"))
        curve = _read_curve(folder) if resume else []
        if not curve:
            (folder / "curve.jsonl").unlink(missing_ok=True)  # (points of an attempt that left no checkpoint)
        done = curve[-1]["steps"] if curve else 0
        for point in self.points:
            if point <= done:
                continue
            run = self._run_to(objective, folder, values, point, resume)
            resume = True
            result = train(run, stop=objective.stop, progress_bar=False)
            if result.interrupted:
                raise SweepInterrupted(f"trial {trial.number} stopped; the same command continues it")
            curve.append(score_point(run))
            _append_curve(folder, curve[-1])
            trial.set_user_attr("curve", curve)
            trial.report(curve[-1]["perplexity"], step=len(curve))
        if not math.isfinite(curve[-1]["perplexity"]):  # a diverged scheme is a result (the paper's scheme 4)
            trial.set_user_attr("outcome", "diverged")
            raise optuna.TrialPruned("diverged")
        trial.set_user_attr("outcome", "complete")
        return curve[-1]["perplexity"]

    @staticmethod
    def _run_to(objective, folder: Path, values: dict, point: int, resume: bool):
        if resume:
            return resolve_run(None, {"train": {"max_steps": point, "threads": objective.threads}}, resume=folder)
        sweep = objective.sweep
        settings = {"checkpoint_dir": str(folder), "overwrite": True, "max_steps": point, "threads": objective.threads}
        return resolve_run(sweep.preset, merge(merge(sweep.overrides, nested(values)), {"train": settings}))


def score_point(run) -> dict:
    """Test perplexity of the run as it is, the way its scheme samples; with its batches, sequences and time."""
    tc = run.config.train
    test = run.splits.test
    if tc.scheme in WINDOWED_SCHEMES:
        result = evaluate_windowed(run.model, test, window=tc.seq_length, batch_size=256, device=run.device,
                                   burn_in=tc.seq_length)
    else:
        result = evaluate_tokens(run.model, test, batch_size=1, seq_length=256, device=run.device,
                                 burn_in=tc.seq_length)
    nats = result.nats_per_token
    return {"steps": run.progress.step, "sequences": run.progress.step * tc.batch_size,
            "seconds": run.progress.elapsed, "perplexity": math.exp(nats) if math.isfinite(nats) and nats < 700
            else math.inf, "sampling": "windowed" if tc.scheme in WINDOWED_SCHEMES else "progressive"}


def _read_curve(folder: Path) -> list[dict]:
    path = folder / "curve.jsonl"
    if not path.is_file():
        return []
    points = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            points.append(json.loads(line))
        except ValueError:  # (a line torn by a kill: that point is scored again)
            break
    return points


def _append_curve(folder: Path, point: dict) -> None:
    with open(folder / "curve.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(point) + "\n")


# --- the parts -------------------------------------------------------------------------------------

def part_trials(config: GridExperimentConfig, part: str) -> list[dict]:
    """The configurations of one part, as {"section.field": value}."""
    seeds = [config.seed + i for i in range(config.repeats)]
    k1s = config.numbers("k1")
    curve_r, curve_g = parse_architectures(config.curve_architecture)[0]
    trials = []
    if part == "architectures":
        for scheme in config.numbers("architecture_schemes"):
            for r, g in parse_architectures(config.architectures):
                for k1 in k1s:
                    trials += [{"train.scheme": scheme, "model.num_layers": r, "model.hidden_size": g,
                                "train.seq_length": config.k2, "train.k1": k1, "train.seed": s} for s in seeds]
    elif part == "schemes":
        for scheme in config.numbers("schemes"):
            for k1 in k1s:
                trials += [{"train.scheme": scheme, "model.num_layers": curve_r, "model.hidden_size": curve_g,
                            "train.seq_length": config.k2, "train.k1": k1, "train.seed": s} for s in seeds]
    else:
        for scheme in config.numbers("schemes"):
            for k2 in config.numbers("k2_values"):
                for k1 in sorted({max(1, round(k2 * f)) for f in K1_FRACTIONS}, reverse=True):
                    trials += [{"train.scheme": scheme, "model.num_layers": curve_r, "model.hidden_size": curve_g,
                                "train.seq_length": k2, "train.k1": k1, "train.seed": s} for s in seeds]
    unique = {json.dumps(t, sort_keys=True): t for t in trials}  # (a value given twice is one configuration)
    return list(unique.values())


def knobs_of(trials: list[dict]) -> list[Knob]:
    names = list(trials[0])
    return [Knob(name, "categorical", choices=tuple(sorted({t[name] for t in trials}))) for name in names]


def part_sweep(config: GridExperimentConfig, corpus: str, path: str | None, part: str, fractions: tuple,
               digest: str) -> tuple[Sweep, list[dict]]:
    trials = part_trials(config, part)
    out = Path(config.out)
    points = tuple(log_spaced_points(config.steps, config.points))
    settings = SweepConfig(space="grid", out=str(out / corpus / part), sampler="random", trials=len(trials),
                           trial_steps=config.steps, validations=min(config.points, config.steps), pruner="none",
                           storage=f"sqlite:///{out / 'grid.db'}", study=f"{corpus}-{part}", workers=config.workers,
                           seed=config.seed)
    val_frac, test_frac = fractions
    overrides = absolute_paths({
        "data": {"path": path, "val_frac": val_frac, "test_frac": test_frac},
        "model": {"architecture": "paper"},
        "train": {"batch_size": config.batch_size, "eval_every": 10 ** 9, "sample_length": 0, "keep_last": 1,
                  "loss_guard": 0.0}})
    sweep = Sweep(settings, None, overrides, knobs_of(trials), digest, trainer=CurveTrainer(points), queued_only=True)
    for values in trials:  # every configuration valid before any runs (one line if not)
        try:
            sweep.run_config(values)
        except ConfigError as exc:
            raise ConfigError(f"{part}: {', '.join(f'{k}={v}' for k, v in values.items())}: {exc}") from None
    return sweep, trials


def split_fractions(path: str | None, test_chars: int, k2: int) -> tuple[tuple[float, float], str]:
    """(val_frac, test_frac) giving `test_chars` characters of test text (and as many of validation), and
    the corpus digest."""
    from rnnlab.config import DataConfig

    corpus = prepare_from_config(DataConfig(path=path))
    total = len(corpus.tokens)
    fraction = test_chars / total
    if not 0 < fraction < 0.25:
        raise CorpusError(f"{path or 'the embedded corpus'} has {total:,} characters: too few for "
                          f"{test_chars:,} of test text (and as many of validation); lower --test-chars")
    if test_chars <= k2 + 1:
        raise ConfigError(f"--test-chars ({test_chars}) must be more than the k2 ({k2}) characters of bootstrap")
    return (fraction, fraction), corpus.meta["blake2b"]


def run_grid(config: GridExperimentConfig, progress_bar: bool = True, verbose: bool = True) -> dict:
    """Every part on every corpus (continuing what a stopped run left), then the report and figures."""
    require_optuna()
    corpora = config.corpora()
    k2_corpus = config.k2_corpus or list(corpora)[-1]
    results: dict = {"config": {k: getattr(config, k) for k in config.__dataclass_fields__}, "runs": []}
    for corpus, path in corpora.items():
        k2_max = max([config.k2, *config.numbers("k2_values")])
        fractions, digest = split_fractions(path, config.test_chars, k2_max)
        for part in config.part_names():
            if part == "k2" and corpus != k2_corpus:
                continue
            sweep, trials = part_sweep(config, corpus, path, part, fractions, digest)
            study = open_study(sweep, worker=0)
            for values in trials:
                study.enqueue_trial(values, skip_if_exists=True)
            if verbose:
                log.warning("grid: %s, %s: %d runs of %d batches", corpus, part, len(trials), config.steps)
            run_sweep(sweep, progress_bar=progress_bar, verbose=verbose)
            results["runs"] += collect_runs(study, corpus, part, config.steps)
    out = Path(config.out)
    atomic_write(out / "grid.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2), encoding="utf-8"))
    from rnnlab.experiments.grid_report import write_report

    write_report(results, config, out)
    return results


def collect_runs(study, corpus: str, part: str, steps: int) -> list[dict]:
    """The finished runs of a part: complete (their curve reached `steps`) or diverged."""
    runs = []
    for trial in live_trials(study.get_trials(deepcopy=False)):  # (a retried copy stands in for its originals)
        curve = trial.user_attrs.get("curve")
        if trial.state.name not in ("COMPLETE", "PRUNED") or not curve:
            continue
        if trial.user_attrs.get("outcome") != "diverged" and curve[-1]["steps"] < steps:
            continue  # (a run that stopped short: its last point is no final figure)
        params = {k.split(".", 1)[1]: v for k, v in trial.params.items()}
        runs.append({"corpus": corpus, "part": part, **params, "curve": curve,
                     "outcome": trial.user_attrs.get("outcome", trial.state.name.lower())})
    return runs


def spread(values: list[float]) -> tuple[float, float, float]:
    """(mean, min, max) of finite values (nan where there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, math.nan
    return statistics.fmean(finite), min(finite), max(finite)
