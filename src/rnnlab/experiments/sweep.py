"""`rnnlab sweep`: a hyperparameter search on Optuna where every trial is a normal rnnlab run.

Reading order: run_sweep (the base preset, the space, the corpus checked once, the study, the
workers, the report) -> work (one worker's loop: which trial next, when to stop) -> Objective (one
trial: its values, its run through the one door, its validations reported to the pruner).

The study lives in a SQLAlchemy database (SQLite in DIR by default, any URL with --storage), so the
same command continues a stopped sweep and several workers share one. Each trial trains in
DIR/trials/NNNN with its own checkpoints and log. A trial whose worker died (kill -9, a lost
machine) stops sending heartbeats: Optuna marks it failed and queues a copy, which resumes the
dead trial's run from its last checkpoint. A trial stopped by Ctrl-C is queued again the same way.
Budgets: every trial gets the same minutes or steps and validates at the same fractions of them,
so its k-th validation is comparable with every other trial's k-th: that is what the pruner
compares (the median of the finished trials, or Hyperband's rungs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import random
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rnnlab.config import RunConfig, SweepConfig, build_run_config, marked, merge, sections
from rnnlab.data.corpus import prepare_from_config
from rnnlab.errors import ConfigError, RnnlabError
from rnnlab.experiments.space import Knob, load_space, nested
from rnnlab.training.checkpoint import read_pointer
from rnnlab.training.loop import STOPPED_AFTER_VALIDATION, StopRequest, TrainingDiverged, train
from rnnlab.training.run import absolute_paths, resolve_run
from rnnlab.training.step import select_device

log = logging.getLogger("rnnlab")

try:
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState
except ImportError:  # pragma: no cover - the [sweep] extra is missing
    optuna = None


class SweepInterrupted(Exception):
    """Ctrl-C (or SIGTERM) during a trial: its run was checkpointed and it is queued to continue. (Not an
    RnnlabError: those are a trial's own failures, which the sweep records and goes on after.)"""


def require_optuna() -> None:
    if optuna is None:
        raise RnnlabError("rnnlab sweep runs on Optuna: pip install 'rnnlab[sweep]'")


@dataclass
class Sweep:
    """What every worker of one sweep shares: its settings, base preset (a TOML file and settings on top,
    so that what a preset derives from a swept value, e.g. a scheme's settings, follows it), knobs and
    corpus."""
    config: SweepConfig
    preset: str | None
    overrides: dict
    knobs: list[Knob]
    corpus_digest: str
    # how a trial trains and what its value is, when not one run to its budget scored by validation bits/char
    # (the paper's grid trains to log-spaced points, scoring each on the test text): (objective, trial, folder,
    # values) -> value; it must pickle, for --workers
    trainer: Callable | None = None
    queued_only: bool = False  # only trials queued in the study run (a grid experiment's configurations)

    def run_config(self, values: dict) -> RunConfig:
        """The config a trial with these {"section.field": value} values trains (validated)."""
        return absolute_paths(build_run_config(self.preset, merge(self.overrides, nested(values))))

    @property
    def base(self) -> RunConfig:
        return self.run_config({})

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def trials_dir(self) -> Path:
        """Where the trials' runs are: DIR/trials for the default study, DIR/trials-NAME for --study NAME (so
        two studies in one folder never share a run folder)."""
        default = SweepConfig.__dataclass_fields__["study"].default
        return self.out / ("trials" if self.config.study == default else f"trials-{self.config.study}")

    def trial_folder(self, attrs: dict) -> Path | None:
        """A trial's run folder from its user attributes (kept relative to --out: the study may be shared by
        machines whose --out differ)."""
        folder = attrs.get("folder")
        return self.out / folder if folder else None

    @property
    def storage_url(self) -> str:
        return self.config.storage or f"sqlite:///{self.out / 'sweep.db'}"

    @property
    def grid(self) -> bool:
        return self.config.sampler == "grid"

    def grid_size(self) -> int:
        size = 1
        for knob in self.knobs:
            size *= len(knob.grid_values())
        return size

    def planned_trials(self) -> int:
        return min(self.config.trials, self.grid_size()) if self.grid else self.config.trials

    def identity(self) -> dict:
        """What makes two invocations the same sweep: space, budget and the preset (paths aside: each
        machine has its own), and the corpus by its digest."""
        base = {section: {k: v for k, v in values.items() if k not in placement(section)}
                for section, values in self.base.to_dict().items()}
        return {"space": [dataclasses.asdict(k) for k in self.knobs], "base": base, "budget": self.config.budget(),
                "sampler": self.config.sampler, "corpus": self.corpus_digest}


def placement(section: str) -> tuple[str, ...]:
    """A section's settings that may differ between a sweep's machines: paths, and what a resume may change."""
    section_type = sections()[section]
    return marked(section_type, "is_path") + marked(section_type, "resumable")


# --- the sweep ---------------------------------------------------------------------------------

def prepare_sweep(config: SweepConfig, data: str | None) -> Sweep:
    """Base preset, space and corpus, each checked once before any trial runs."""
    require_optuna()
    overrides = absolute_paths({"data": {"path": data}} if data else {})
    base = absolute_paths(build_run_config(config.config, overrides))
    sweep = Sweep(config, config.config, overrides, [], "")
    sweep.knobs = load_space(config.space, sweep.run_config, select_device(base.train.device).type)
    corpus = prepare_from_config(base.data)  # (a missing or bad corpus is one line here, not one per trial)
    sweep.corpus_digest = corpus.meta["blake2b"]
    if sweep.grid:
        sweep.grid_size()  # (a float knob without a step is refused here)
    return sweep


def run_sweep(sweep: Sweep, progress_bar: bool = True, verbose: bool = True) -> "optuna.Study":
    """Run the sweep's trials (continuing its study if it exists) with its workers; returns the study.
    A line per finished trial (verbose); each trial's own training lines go to its run log only."""
    study = open_study(sweep, worker=0)
    retry_interrupted(study)
    workers = sweep.config.workers
    with trial_bar(sweep, progress_bar, verbose) as bar, _quiet_trials():
        if workers == 1:
            work(sweep, 0, threads_per_worker(sweep), bar)
        else:
            run_worker_processes(sweep, bar)
    return study


def open_study(sweep: Sweep, worker: int) -> "optuna.Study":
    sweep.out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # (each trial gets our own line; a stopped one is no error)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # workers starting together may race to create the study's tables or the study itself: the loser
    # finds them made when it tries again
    for attempt in range(5):
        try:
            study = _create_study(sweep, worker)
            break
        except ImportError as exc:
            raise RnnlabError(f"the storage {_shown_url(sweep.storage_url)} needs a database driver: {exc}") from None
        except Exception as exc:  # SQLAlchemy's errors: a wrong URL, a server that is down, bad credentials
            if not type(exc).__module__.startswith(("sqlalchemy", "optuna")):
                raise
            if attempt == 4 or "could not connect" in str(exc) or "unable to open" in str(exc):
                raise RnnlabError(f"cannot open the study in {_shown_url(sweep.storage_url)}: "
                                  f"{str(exc).splitlines()[0]}") from None
            time.sleep(0.5 + random.random())
    check_same_sweep(study, sweep)
    return study


def _create_study(sweep: Sweep, worker: int):
    config = sweep.config
    engine = {"connect_args": {"timeout": 60}} if sweep.storage_url.startswith("sqlite") else {}
    storage = optuna.storages.RDBStorage(
        sweep.storage_url, engine_kwargs=engine, heartbeat_interval=config.heartbeat,
        grace_period=3 * config.heartbeat,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True))
    if sweep.storage_url.startswith("sqlite"):
        serialise_sqlite_transactions(storage.engine)
    study = optuna.create_study(study_name=config.study, storage=storage, direction="minimize",
                                pruner=make_pruner(config), load_if_exists=True)
    study.sampler = make_sampler(sweep, worker, len(study.get_trials(deepcopy=False)))
    return study


def serialise_sqlite_transactions(engine) -> None:
    """Every transaction on the SQLite file takes its write lock when it begins (BEGIN IMMEDIATE): Optuna
    claims a queued trial by reading it WAITING and then writing RUNNING, which row locks make atomic on a
    server but which two SQLite readers could otherwise both do."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _driver_leaves_transactions_to_us(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # (connections made before the listeners would not run them)


def _shown_url(url: str) -> str:
    """The URL without its password."""
    head, sep, tail = url.partition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, credentials = head.partition("://")
    user, has_password, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{tail}"


def check_same_sweep(study, sweep: Sweep) -> None:
    identity = json.loads(json.dumps(sweep.identity()))  # (as the storage gives it back)
    saved = study.user_attrs.get("sweep")
    if saved is None:
        study.set_user_attr("sweep", identity)
        return
    if sweep.config.space == "blog" and saved.get("space") != identity["space"]:
        # the built-in space scales its ranges to the machine that started the sweep: another machine (or
        # device) continuing it takes the study's ranges, not its own
        sweep.knobs = [Knob(**{k: tuple(v) if isinstance(v, list) else v for k, v in knob.items()})
                       for knob in saved["space"]]
        identity = json.loads(json.dumps(sweep.identity()))
    differ = sorted(key for key in identity if saved.get(key) != identity[key])
    if differ:
        raise ConfigError(f"the study {sweep.config.study!r} in {_shown_url(sweep.storage_url)} is another sweep "
                          f"(these differ: {', '.join(differ)}); continue it with the same settings, or give another "
                          f"--out or --study")


def make_sampler(sweep: Sweep, worker: int, trials_so_far: int):
    """The sampler of one worker. Its seed depends on the worker and on how many trials the study has, so
    a continued sweep or a second worker does not draw the first one's values again (yet reruns the same)."""
    seed = sweep.config.seed + 1_000_003 * worker + trials_so_far
    if sweep.grid:
        return optuna.samplers.GridSampler({k.name: k.grid_values() for k in sweep.knobs}, seed=sweep.config.seed)
    if sweep.config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, sweep.config.trials // 4)))


def make_pruner(config: SweepConfig):
    if config.pruner == "median":
        # (the first validation is mostly noise: trials are compared from the second one)
        return optuna.pruners.MedianPruner(n_startup_trials=config.prune_after, n_warmup_steps=2)
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=config.validations, reduction_factor=3)
    return optuna.pruners.NopPruner()


def threads_per_worker(sweep: Sweep) -> int:
    if sweep.base.train.threads:
        return sweep.base.train.threads
    return max(1, (os.cpu_count() or 1) // sweep.config.workers)


def retry_interrupted(study) -> None:
    """Trials of an earlier invocation that were stopped (Ctrl-C) rather than failed on their own are
    queued again; each continues its run from its last checkpoint. (Two invocations starting together may
    both queue a copy: only the first copy runs, see claim_conflict.)"""
    trials = study.get_trials(deepcopy=False)
    superseded = superseded_numbers(trials)
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("outcome") == "stopped" \
                and trial.number not in superseded:
            retry(study, trial)


def retry(study, trial) -> None:
    RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, trial)


def superseded_numbers(trials) -> set[int]:
    """Trials a retried copy stands in for."""
    return {number for t in trials for number in t.system_attrs.get("retry_history", [])}


def live_trials(trials) -> list:
    """The study's trials that count: not superseded by a retried copy, not a surplus claim."""
    superseded = superseded_numbers(trials)
    return [t for t in trials if t.number not in superseded and t.user_attrs.get("outcome") != "surplus"]


def claim_key(trial):
    """What a queued trial is a copy of, for spotting two copies of one: a retry of one attempt, or one
    queued configuration (a grid's); None for a fresh trial the sampler drew."""
    if "retry_history" in trial.system_attrs:
        return ("retry", tuple(trial.system_attrs["retry_history"]))
    if "fixed_params" in trial.system_attrs:
        return ("queued", json.dumps(trial.system_attrs["fixed_params"], sort_keys=True))
    return None


def claim_conflict(sweep: Sweep, trial, trials) -> str:
    """Why a trial this worker just claimed must not run ("" if it may): an earlier copy of the same queued
    trial exists (two invocations queued it together), it is a fresh draw where only queued trials may run
    (a grid's configurations; another worker took the last queued one first), or the study already has
    its trials."""
    key = claim_key(trial)
    others = [t for t in trials if t.number != trial.number and t.user_attrs.get("outcome") != "surplus"]
    if key is not None:
        if any(t.number < trial.number and claim_key(t) == key for t in others):
            return "an earlier copy of this trial runs it"
        return ""
    if sweep.queued_only:
        return "only queued trials run in this study"
    if len(live_trials([t for t in others if t.number < trial.number])) >= sweep.planned_trials():
        return "the study has its trials"
    return ""


# --- one worker --------------------------------------------------------------------------------

def work(sweep: Sweep, worker: int, threads: int, bar=None) -> None:
    """Run trials of the study until it has its trials (or time is up), then wait for the trials other
    workers run, so that a dead one's trial is found (by its heartbeat) and run again."""
    study = open_study(sweep, worker)
    started = time.monotonic()
    stop = StopRequest()
    with _stop_on_signals(stop):
        while True:
            live = live_trials(study.get_trials(deepcopy=False))
            if bar is not None:
                bar.refresh_from(live)
            if stop.requested:
                return
            if not any(t.state == TrialState.WAITING for t in live):
                time_up = sweep.config.max_minutes and time.monotonic() - started >= sweep.config.max_minutes * 60
                if len(live) >= sweep.planned_trials() or time_up or sweep.queued_only:
                    if any(t.state == TrialState.RUNNING for t in live):
                        time.sleep(min(sweep.config.heartbeat, 5))
                        optuna.storages.fail_stale_trials(study)
                        continue
                    return
            objective = Objective(sweep, threads, stop)
            try:
                study.optimize(objective, n_trials=1, catch=(RnnlabError,), gc_after_trial=False)
            except SweepInterrupted:
                retry(study, next(t for t in study.get_trials(deepcopy=False) if t.number == objective.number))
                raise
            except ValueError:
                if not objective.taken_away:
                    raise
                # (Optuna cannot tell a trial it already marked failed: the trial was queued again for another
                # worker while this one was suspended; that copy continues its run)
                log.warning("sweep: trial %s was taken over after its heartbeat stopped", objective.number)
            if bar is not None and not objective.surplus:
                bar.trial_done(study, objective.number)


@contextlib.contextmanager
def _stop_on_signals(stop: StopRequest):
    """Ctrl-C or SIGTERM: the running trial checkpoints and is queued again; a second Ctrl-C stops at once."""
    def request_stop(signum, _frame):
        if not stop.training:
            raise KeyboardInterrupt
        stop.request(f"received {signal.Signals(signum).name}")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    try:
        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: no signal handling of our own
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Objective:
    """One trial: its values, its run (new, or continued from a dead attempt's checkpoint), its
    validations reported to the pruner, and its best validation bits/char as the value."""

    def __init__(self, sweep: Sweep, threads: int, stop: StopRequest):
        self.sweep, self.threads, self.stop = sweep, threads, stop
        self.number: int | None = None
        self.pruned = False
        self.user_stopped = False  # Ctrl-C arrived while the pruner was deciding: the sweep stops all the same
        self.surplus = False
        self.taken_away = False  # the study failed this trial (a stale heartbeat) while it ran here
        self.continuing = False  # a retried copy: it continues the run its folder holds

    def __call__(self, trial) -> float:
        self.number = trial.number
        trials = trial.study.get_trials(deepcopy=False)
        frozen = next(t for t in trials if t.number == trial.number)  # (its system attributes: is it a copy?)
        conflict = claim_conflict(self.sweep, frozen, trials)
        if conflict:
            return self.give_up(trial, conflict)
        # (a retried copy has its original's user attributes: its folder, where its run continues)
        folder = self.sweep.trial_folder(trial.user_attrs) or self.sweep.trials_dir / f"{trial.number:04d}"
        values = {knob.name: knob.suggest(trial, self.sweep.grid) for knob in self.sweep.knobs}
        trial.set_user_attr("folder", os.path.relpath(folder, self.sweep.out))
        folder.mkdir(parents=True, exist_ok=True)
        with folder_lock(folder) as locked:
            if not locked:
                return self.give_up(trial, f"another process trains {folder}")
            return self.run_trial(trial, frozen, folder, values)

    def give_up(self, trial, why: str) -> float:
        """Leave a claimed trial that must not run (failed, marked surplus: no report counts it)."""
        self.surplus = True
        trial.set_user_attr("outcome", "surplus")
        trial.set_user_attr("message", why)
        raise SurplusTrial(why)

    def run_trial(self, trial, frozen, folder: Path, values: dict) -> float:
        self.continuing = continues_run(frozen)
        try:
            if self.sweep.trainer is not None:
                return self.sweep.trainer(self, trial, folder, values)
            run = self.resolve(folder, values)
            result = train(run, stop=self.stop, progress_bar=False,
                           after_validation=lambda run, result: self.report(trial, run, result))
        except TrainingDiverged as exc:
            record(trial, folder, "diverged", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        except RnnlabError as exc:
            record(trial, folder, "error", str(exc))
            raise
        except (SweepInterrupted, KeyboardInterrupt):
            with contextlib.suppress(Exception):
                trial.set_user_attr("outcome", "stopped")
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            self.taken_away = True
            raise TrialTakenAway() from None
        except Exception as exc:  # not one of rnnlab's own errors: recorded like one (never retried), the
            # traceback kept in the trial's folder for a bug report
            (folder / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            message = f"{type(exc).__name__}: {exc} (traceback in {folder / 'error.txt'})"
            record(trial, folder, "error", message)
            raise RnnlabError(message) from exc
        if self.taken_away:
            raise TrialTakenAway()
        if self.pruned and self.stop.reason == STOPPED_AFTER_VALIDATION and not self.user_stopped:
            self.stop.requested = False  # (the pruner stopped this run, not the user: the sweep goes on)
        if result.interrupted and not self.pruned:
            record(trial, folder, "stopped")
            raise SweepInterrupted(f"trial {trial.number} stopped; the same command continues it")
        summary = record(trial, folder, "pruned" if self.pruned else "complete")
        if self.pruned:
            raise optuna.TrialPruned()
        return summary["bits_per_char"]

    def resolve(self, folder: Path, values: dict):
        if self.continuing and read_pointer(folder, "last"):  # a dead or stopped attempt of this trial: continue its run
            log.info("sweep: trial in %s continues from its last checkpoint", folder)
            return resolve_run(None, {"train": {"threads": self.threads}}, resume=folder)
        trial_settings = {**self.sweep.config.budget(), "checkpoint_dir": str(folder), "overwrite": True,
                          "sample_length": 0, "threads": self.threads}
        return resolve_run(self.sweep.preset, merge(merge(self.sweep.overrides, nested(values)),
                                                    {"train": trial_settings}))

    def report(self, trial, run, result) -> bool:
        """After each scheduled validation: its bits/char at its index; True stops a pruned trial."""
        self.user_stopped = self.stop.requested
        try:
            trial.report(result.bits_per_char, step=len(run.progress.val_losses))
        except optuna.exceptions.UpdateFinishedTrialError:
            self.taken_away = True
            return True
        self.pruned = trial.should_prune()
        return self.pruned


class SurplusTrial(RnnlabError):
    """A claimed trial that must not run (see claim_conflict); it is failed and marked surplus."""


class TrialTakenAway(RnnlabError):
    """The study failed this trial (its heartbeat stopped, e.g. the machine slept) while it ran."""


def continues_run(trial) -> bool:
    """Only a retried copy continues the run its folder holds; a fresh trial starts its own over whatever
    is there (e.g. a study deleted and begun again in the same folder)."""
    return "retry_history" in trial.system_attrs


@contextlib.contextmanager
def folder_lock(folder: Path):
    """An exclusive lock on a trial's folder while it trains (yields False if another process holds it):
    whatever goes wrong with the study's claims, two processes never train one run. POSIX only."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the study's claim alone
        yield True
        return
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record(trial, folder: Path, outcome: str, message: str = "") -> dict:
    """The trial's summary from its run log, kept in the study (so a report needs no local folder)."""
    summary = run_summary(folder)
    summary.update(outcome=outcome, message=message[:500])
    if outcome == "error":
        summary["error"] = message[:500]
    for key, value in summary.items():
        trial.set_user_attr(key, value)
    return summary


def run_summary(folder: Path) -> dict:
    """Best validation bits/char, and the run's steps, epochs and minutes, from its run log."""
    vals = [r for r in read_log(folder) if r.get("event") == "val"]
    if not vals:
        return {"bits_per_char": None, "steps": 0, "epoch": 0.0, "minutes": 0.0, "validations": 0}
    return {"bits_per_char": min(r["val_bits_per_char"] for r in vals), "steps": vals[-1]["step"],
            "epoch": vals[-1]["epoch"], "minutes": vals[-1]["elapsed"] / 60.0, "validations": len(vals)}


def read_log(folder: Path) -> list[dict]:
    records = []
    with contextlib.suppress(FileNotFoundError):
        for line in (folder / "log.jsonl").read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


# --- several workers on this machine -----------------------------------------------------------

def run_worker_processes(sweep: Sweep, bar) -> None:
    """--workers N: N processes (spawned: each its own torch), sharing the study; this one watches."""
    context = multiprocessing.get_context("spawn")
    threads = threads_per_worker(sweep)
    processes = [context.Process(target=_worker_main, args=(sweep, index, threads), daemon=False)
                 for index in range(sweep.config.workers)]
    for process in processes:
        process.start()
    study = open_study(sweep, worker=0)
    try:
        while any(p.is_alive() for p in processes):
            for process in processes:
                process.join(timeout=2.0 / len(processes))
            bar.refresh_from(live_trials(study.get_trials(deepcopy=False)))
    except KeyboardInterrupt:  # the workers got Ctrl-C too: let them checkpoint their trials
        for process in processes:
            process.join()
        raise
    failed = [p.exitcode for p in processes if p.exitcode not in (0, None)]
    if failed:
        raise RnnlabError(f"{len(failed)} of {len(processes)} sweep workers failed (exit codes "
                          f"{', '.join(map(str, failed))}); the same command continues the sweep")


def _worker_main(sweep: Sweep, index: int, threads: int) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # (a spawned process starts bare)
    try:
        work(sweep, index, threads)
    except SweepInterrupted:
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except RnnlabError as exc:
        print(f"rnnlab: error: sweep worker {index}: {exc}")
        raise SystemExit(1) from None


@contextlib.contextmanager
def _quiet_trials():
    """The trials' progress lines (steps, validations) go to their run logs, not to the terminal."""
    logger = logging.getLogger("rnnlab")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


# --- the progress bar over trials --------------------------------------------------------------

class TrialBar:
    """tqdm over the study's trials, with the best value so far; a line per finished trial."""

    def __init__(self, sweep: Sweep, enabled: bool, verbose: bool):
        from tqdm import tqdm
        self.tqdm = tqdm
        self.bar = tqdm(total=sweep.planned_trials(), unit="trial", disable=not enabled, dynamic_ncols=True)
        self.verbose = verbose

    def refresh_from(self, live) -> None:
        finished = [t for t in live if t.state.is_finished()]
        self.bar.n = len(finished)
        values = [t.value for t in finished if t.state == TrialState.COMPLETE and t.value is not None]
        if values:
            self.bar.set_postfix(best=f"{min(values):.4f} bits/char", refresh=False)
        self.bar.refresh()

    def trial_done(self, study, number: int | None) -> None:
        trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
        if trial is None:
            return
        attrs = trial.user_attrs
        bits = attrs.get("bits_per_char")
        if "curve" in attrs:  # (a grid trial: scored on the test text at its points)
            last = attrs["curve"][-1]
            shown = f"test perplexity {last['perplexity']:.3f} after {last['steps']} batches"
        else:
            shown = (f"{bits:.4f} bits/char" if bits is not None else "no validation") + \
                f" after {attrs.get('validations', 0)} validations"
        values = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        line = f"trial {number}: {attrs.get('outcome', trial.state.name.lower())}, {shown} ({values})"
        if attrs.get("outcome") in ("error", "diverged"):
            line += f": {attrs.get('message', '')}"
        if self.verbose:
            self.tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@contextlib.contextmanager
def trial_bar(sweep: Sweep, enabled: bool, verbose: bool):
    bar = TrialBar(sweep, enabled, verbose)
    try:
        yield bar
    finally:
        bar.close()
