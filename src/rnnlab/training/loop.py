"""train(): the one linear training loop, from a Run (see run.resolve_run) to checkpoints on disk.

Reading order: per step (learning rate, batch, carry rule, forward/backward/step, guard, log); every
`eval_every` steps validate -> update the schedules -> checkpoint; at the end a last validation and
checkpoint, and an over/underfitting hint. Everything a resumed run needs to continue exactly is
saved: weights, optimizer, step and epoch position, the carried hidden state, RNG states, elapsed
time and the checkpoint history.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from rnnlab.config import RunConfig, SampleConfig
from rnnlab.errors import RnnlabError
from rnnlab.evaluation import EvalResult, evaluate_tokens
from rnnlab.sampling import complete_texts, prompt_ids
from rnnlab.training.checkpoint import checkpoint_name, prune_checkpoints, read_pointer, save_checkpoint, update_pointer
from rnnlab.training.distributed import RanksLost, collective
from rnnlab.training.optim import WeightAverage, learning_rate_at, nt_asgd_triggered, set_learning_rate
from rnnlab.training.run import Run, resolve_run
from rnnlab.training.schemes import plan_sequence, position_weights, starts_with_reset
from rnnlab.training.state import Progress
from rnnlab.training.step import torch_threads

log = logging.getLogger("rnnlab")

OVERFIT_GAP = 0.10  # nats/char: val this far above train suggests overfitting (char-rnn's tip)
UNDERFIT_GAP = 0.02  # nats/char: val this close to train suggests underfitting
MIN_VALIDATIONS = 3  # the fitting hint says nothing before the run has this many validations
STALLED = 2  # validations without improvement that, with a wide gap, mean overfitting
STOPPED_AFTER_VALIDATION = "stopped after validation"  # the reason when train()'s after_validation ends a run


class TrainingDiverged(RnnlabError):
    """The loss became NaN/inf or exploded; the last good checkpoint was kept."""


class StopRequest:
    """Set `requested` (e.g. from a signal handler) to make train() checkpoint and return."""

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self.training = False  # set once the loop runs: before that there is nothing to checkpoint

    def request(self, reason: str = "stop requested") -> None:
        self.requested, self.reason = True, reason


@dataclass
class TrainResult:
    checkpoint_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_val_loss: float
    steps: int
    epoch: float
    train_loss: float | None = None
    val_loss: float | None = None
    interrupted: bool = False
    hint: str = ""
    num_parameters: int = 0
    whole_val_loss: float | None = None  # the whole val split, at the end (validations may score a part of it)
    rank: int = 0  # under torchrun, this process's rank (only rank 0's result names checkpoints)


ValidationHook = Callable[[Run, EvalResult], bool]


def train(run: Run | RunConfig, *, resume: str | Path | None = None, init_from: str | Path | None = None,
          stop: StopRequest | None = None, progress_bar: bool = True,
          after_validation: ValidationHook | None = None) -> TrainResult:
    """Train a Run (from resolve_run); a RunConfig, with `resume` or `init_from`, is resolved first.

    after_validation(run, result) is called after every scheduled validation, once its checkpoint is
    written; returning True stops the run there (a sweep's pruner does this)."""
    if not isinstance(run, Run):
        run = resolve_run(run, resume=resume, init_from=init_from)
    with torch_threads(run.config.train.threads):
        return _train(run, stop or StopRequest(), progress_bar, after_validation)


def _train(run: Run, stop: StopRequest, progress_bar: bool, after_validation: ValidationHook | None) -> TrainResult:
    tc, prog, ranks = run.config.train, run.progress, run.ranks
    if ranks.main:
        run.folder.mkdir(parents=True, exist_ok=True)
    _log_start(run)
    saver = Saver(run)
    meter = Meter(run, progress_bar and ranks.main)
    saver.show_progress = progress_bar and not meter.lines
    saved_at = prog.step if run.resumed_from else -1
    run.model.train()
    stop.training = True
    try:
        agreed = Agreement(run, meter, stop)
        saver.log({"event": "start", "step": prog.step, "parameters": run.model.num_parameters(),
                   "resumed": run.resumed_from is not None, "config": run.config.to_dict(), "ranks": ranks.world})
        while not _finished(tc, prog, run.batcher, agreed.elapsed, agreed.stopping):
            with collective("a training step") if ranks.active else contextlib.nullcontext():
                train_loss, lr = train_batch(run, agreed.elapsed, agreed)
            meter.step_done(train_loss)
            if prog.step % tc.log_every == 0:  # (the train loss logged: the mean over the window's batches)
                saver.log({"event": "train", "step": prog.step, "epoch": run.batcher.epoch_progress,
                           "train_loss": meter.window_loss(), "lr": lr, "tokens_per_s": meter.rate(),
                           "elapsed": meter.elapsed()})
                meter.log_line(lr)
                meter.restart_window()
            if validation_due(tc, prog, agreed.elapsed):
                prog.elapsed = agreed.elapsed
                with saver.weights_to_save() as raw:  # (NT-ASGD validates and saves its averaged weights)
                    result = saver.validate(prog)
                    update_schedules(run, result.nats_per_token)
                    saver.save(prog, result, raw)
                saved_at = prog.step
                if after_validation is not None and ranks.from_main(after_validation(run, result) if ranks.main
                                                                    else None):
                    agreed.stop_all(STOPPED_AFTER_VALIDATION)
        stopped = agreed.stopping
        meter.finished = not stopped
        if stopped:
            log.info("%s: writing a checkpoint", stop.reason)
        prog.elapsed = agreed.elapsed
        if ranks.from_main(saved_at != prog.step or not (run.folder / "best.json").is_file()):
            with saver.weights_to_save() as raw:  # (an extra validation: it feeds no schedule)
                saver.save(prog, saver.validate(prog), raw)
        whole = validate_whole_split(run, saver) if not stopped else None
        result = _result(run, stopped)
        ranks.wait_for_all()  # (the ranks end together, once rank 0 has written everything)
    except RanksLost as exc:
        raise RanksLost(f"{exc}; the last checkpoint in {run.folder} is kept: resume with the same command and "
                        f"--resume {run.folder}") from None
    finally:
        meter.close()
        saver.close()
    if whole is not None:
        result.whole_val_loss = whole.nats_per_token
    elif not stopped:  # (every validation scored the whole split)
        result.whole_val_loss = result.val_loss
    return result


class Agreement:
    """What every rank must decide alike, once per step: the mean loss, whether to stop (a signal may reach
    one rank only; the divergence guard then sees the same mean everywhere) and the clock (rank 0's, for
    --max-minutes, time-based validations and schedules). On one process: the loss, the stop request and
    the meter's clock as they are."""

    def __init__(self, run: Run, meter: "Meter", stop: StopRequest):
        self.run, self.meter, self.stop = run, meter, stop
        self.distributed = run.ranks.active
        self.agreed_stop = False
        self.clock = meter.elapsed()
        if self.distributed:
            _, self.agreed_stop, self.clock = run.ranks.agree_on_step(0.0, stop.requested, self.clock, run.device)

    @property
    def elapsed(self) -> float:
        return self.clock if self.distributed else self.meter.elapsed()

    @property
    def stopping(self) -> bool:
        return self.agreed_stop if self.distributed else self.stop.requested

    def step_done(self, loss: float) -> float:
        """The step's loss as every rank sees it (the ranks' mean)."""
        if not self.distributed:
            return loss
        mean, any_stop, self.clock = self.run.ranks.agree_on_step(loss, self.stop.requested, self.meter.elapsed(),
                                                                   self.run.device)
        if any_stop and not self.agreed_stop:
            self.agreed_stop = True
            if not self.stop.requested:
                self.stop.request("another rank was stopped")
        return mean

    def stop_all(self, reason: str) -> None:
        """A decision every rank took alike (from rank 0's result): stop after this step."""
        self.stop.request(reason)
        self.agreed_stop = True


def train_batch(run: Run, elapsed: float, agreed: Agreement | None = None) -> tuple[float, float]:
    """One optimizer step of the run on its next batch; returns the train loss (the ranks' mean, under
    torchrun) and the learning rate."""
    tc, prog, batcher = run.config.train, run.progress, run.batcher
    lr = learning_rate_at(tc, prog.step, batcher.epoch, _progress_fraction(tc, prog.step, prog.planned_steps, elapsed),
                          prog.plateau_factor)
    batch = batcher.next_batch()
    set_learning_rate(run.step.optimizer, lr * batch.lr_scale)
    if tc.state != "carry" or batch.starts_epoch or starts_with_reset(batch.stream_position, tc):
        run.carried = None  # the model's initial state: zeros, or the learned h0/c0
    length = batch.inputs.shape[1]
    weights = position_weights(length, tc)
    loss, carried = run.step(batch.inputs.to(run.device), batch.targets.to(run.device), run.carried,
                             plan_sequence(length, batch.stream_position, tc),
                             weights.to(run.device) if weights is not None else None)
    run.carried = carried if tc.state == "carry" else None
    prog.step += 1
    prog.tokens_seen += batch.inputs.numel() * run.ranks.world
    train_loss = agreed.step_done(loss.item()) if agreed is not None else loss.item()
    prog.recent_losses.append(train_loss)
    prog.first_loss = prog.first_loss if prog.first_loss is not None else train_loss
    _guard(train_loss, prog.first_loss, tc.loss_guard, prog.step, run.folder if run.ranks.main else None)
    return train_loss, lr


def validation_due(tc, prog: Progress, elapsed: float) -> bool:
    """Every eval_every steps, or with eval_every_minutes every so many minutes of training (counted by
    the scheduled validations done, so a resumed run keeps the same times)."""
    if tc.eval_every_minutes:
        return elapsed >= (len(prog.val_losses) + 1) * tc.eval_every_minutes * 60.0
    return prog.step % tc.eval_every == 0


def update_schedules(run: Run, val_loss: float) -> None:
    """After a scheduled validation: the plateau schedule's decay, and NT-ASGD's switch to averaging.
    (Only the validations every eval_every steps count: an extra one at an interruption must not, or
    a resumed run would differ from a straight one.)"""
    tc, prog, step = run.config.train, run.progress, run.step
    if prog.val_losses and val_loss >= min(prog.val_losses):
        prog.evals_without_improvement += 1
    else:
        prog.evals_without_improvement = 0
    if tc.schedule == "plateau" and prog.evals_without_improvement >= tc.patience:
        prog.plateau_factor *= tc.decay_rate
        prog.evals_without_improvement = 0
        log.info("plateau: learning rate x%.3g", prog.plateau_factor)
    prog.val_losses.append(val_loss)
    if tc.optimizer == "nt-asgd" and step.averager is None and nt_asgd_triggered(prog.val_losses, tc.nt_asgd_interval):
        step.averager = WeightAverage(run.model.parameters())
        log.info("NT-ASGD: validation stopped improving at step %d; averaging the weights from now on", prog.step)


class Saver:
    """Validation, checkpoint files, pointers and the run log of one run."""

    def __init__(self, run: Run):
        self.run = run
        self.writes = run.ranks.main  # (under torchrun, rank 0 alone writes the folder)
        self.board = TensorBoard(run.folder / "tensorboard") if run.config.train.tensorboard and self.writes else None
        self.show_progress = False  # (a validation's own bar: set where the run has a terminal bar)
        self.run_log = open(run.folder / "log.jsonl", "a", encoding="utf-8") if self.writes else None

    def log(self, record: dict) -> None:
        if not self.writes:
            return
        self._log_still_there()
        self.run_log.write(json.dumps(record) + "\n")
        self.run_log.flush()
        if self.board is not None:
            self.board.write(record)

    def _log_still_there(self) -> None:
        """Someone removed the folder or the log under the running job: write a new one where it was
        (saying so), rather than into a deleted file."""
        path = self.run.folder / "log.jsonl"
        try:
            if os.stat(path).st_ino == os.fstat(self.run_log.fileno()).st_ino:
                return
        except FileNotFoundError:
            pass
        self.run_log.close()
        self.run.folder.mkdir(parents=True, exist_ok=True)
        self.run_log = open(path, "a", encoding="utf-8")
        log.warning("warning: the run log %s was removed while the run went on; a new one starts at step %d",
                    path, self.run.progress.step)

    def close(self) -> None:
        if self.run_log is not None:
            self.run_log.close()
        if self.board is not None:
            self.board.close()

    @contextlib.contextmanager
    def weights_to_save(self):
        """NT-ASGD's averaged weights swapped in (yields the raw ones, saved beside them); else as they are."""
        averager = self.run.step.averager
        if averager is None:
            yield {}
            return
        with averager.swapped_in() as raw:
            yield {f"raw.{i}": t for i, t in enumerate(raw)}

    def validate(self, prog: Progress) -> EvalResult:
        """Score the val split (under torchrun: on rank 0, its result shared, so every rank's schedules and
        stop decisions see the number a single process would)."""
        result = self._validate_here(prog) if self.run.ranks.main else None
        prog.recent_losses = []
        return self.run.ranks.from_main(result)

    def _validate_here(self, prog: Progress) -> EvalResult:
        run, tc = self.run, self.run.config.train
        cap = validation_tokens(run)
        lengths = run.splits.lengths("val")
        # (a bar that shows itself only when a validation takes more than a few seconds)
        with tqdm(total=100, desc="validating", unit="%", delay=3, leave=False, disable=not self.show_progress,
                  bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}") as bar:
            result = evaluate_tokens(run.model, run.splits.val[:cap], tc.eval_batch_size, tc.seq_length, run.device,
                                     char_lengths=lengths[:cap] if lengths is not None else None,
                                     progress=lambda done: bar.update(round(100 * done) - bar.n))
        recent = prog.recent_losses
        train_part = f"train loss {sum(recent) / len(recent):.4f}, " if recent else ""
        unit = "char" if run.vocab.kind == "char" else "token"
        best = " (best)" if result.nats_per_token < prog.best_val_loss else ""
        log.info("step %d epoch %.2f: %sval loss %.4f nats/%s (perplexity %.2f, %.4f bits/char)%s", prog.step,
                 run.batcher.epoch_progress, train_part, result.nats_per_token, unit, result.perplexity,
                 result.bits_per_char, best)
        self.log({"event": "val", "step": prog.step, "epoch": run.batcher.epoch_progress,
                  "val_loss": result.nats_per_token, "val_perplexity": result.perplexity,
                  "val_bits_per_char": result.bits_per_char, "elapsed": prog.elapsed})
        if run.config.train.preview_length:
            self.preview(prog.step)
        return result

    def preview(self, step: int) -> None:
        """A short seeded sample from the weights just validated (the blog's completion of "The"). It
        uses NumPy's generator and the model's eval-mode step, so the training's random state is
        untouched and a run with previews is the same run as one without."""
        run, tc = self.run, self.run.config.train
        config = SampleConfig(length=tc.preview_length, seed=tc.seed, fast=False)
        prompt = prompt_ids(run.vocab, tc.preview_prime)
        run.model.eval()
        try:
            text = complete_texts(run.model, run.vocab, prompt, config)[0]
        finally:
            run.model.train()
        log.info("preview at step %d: %s%s", step, prompt.text, text)
        self.log({"event": "preview", "step": step, "prime": prompt.text, "text": text})

    def save(self, prog: Progress, result: EvalResult, raw_tensors: dict) -> Path:
        """A checkpoint of the run as it is now, named by its val loss; pointers updated, old ones pruned."""
        run, folder = self.run, self.run.folder
        val_loss, epoch = result.nats_per_token, run.batcher.epoch_progress
        improved = val_loss < prog.best_val_loss
        prog.best_val_loss = min(prog.best_val_loss, val_loss)
        file = folder / checkpoint_name(run.config.model.cell, epoch, val_loss)
        if file.name not in prog.saved:
            prog.saved.append(file.name)
        extra = every_ranks_state(run)  # (a collective under torchrun: every rank gathers, rank 0 writes)
        if not self.writes:
            return file
        extra.update(raw_tensors)
        averager = run.step.averager
        trainer = {"progress": prog.to_dict(), "batcher": run.batcher.state_dict(),
                   "has_carry": run.carried is not None, "grad_scaler": run.step.scaler.state_dict(),
                   "averaging": {"count": averager.count} if averager is not None else None,
                   "world_size": run.ranks.world}
        metrics = {"val_loss": val_loss, "val_bits_per_char": result.bits_per_char,
                   "val_perplexity": result.perplexity, "tokenizer": run.vocab.kind,
                   "best_val_loss": prog.best_val_loss, "step": prog.step, "epoch": epoch,
                   "corpus": run.config.data.path or "tinyshakespeare (embedded)", "corpus_digest": run.digest}
        save_checkpoint(file, run.model, run.config, run.vocab, optimizer=run.step.optimizer, trainer=trainer,
                        extra_tensors=extra, metrics=metrics)
        update_pointer(folder, "last", file, val_loss)
        if improved or not (folder / "best.json").is_file():
            update_pointer(folder, "best", file, val_loss)
        prog.saved = prune_checkpoints(folder, prog.saved, run.config.train.keep_last)
        return file


class TensorBoard:
    """The run log's records as TensorBoard events (torch.utils.tensorboard; the [tensorboard] extra)."""

    SCALARS = {"train": {"train_loss": "train/loss", "lr": "train/learning_rate", "tokens_per_s": "train/tokens_per_s"},
               "val": {"val_loss": "val/loss", "val_bits_per_char": "val/bits_per_char",
                       "val_perplexity": "val/perplexity"},
               "val_full": {"val_loss": "val_whole_split/loss", "val_bits_per_char": "val_whole_split/bits_per_char"}}

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RnnlabError("--tensorboard needs the tensorboard package: pip install 'rnnlab[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def write(self, record: dict) -> None:
        event, step = record.get("event"), record.get("step", 0)
        for key, tag in self.SCALARS.get(event, {}).items():
            if isinstance(record.get(key), (int, float)) and math.isfinite(record[key]):
                self.writer.add_scalar(tag, record[key], step)
        if event == "preview":
            self.writer.add_text("preview", f"{record['prime']}{record['text']}", step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def validation_tokens(run: Run) -> int:
    """How much of the val split a validation scores: --eval-tokens, or by default 64 batches' worth of
    tokens, at least 65,536 (a forward pass costs about a third of a training step's, so at the default
    500 steps between validations about 4% of the training time); never more than the split. It
    depends on no setting a resume may change, so every validation of a run scores the same tokens."""
    tc = run.config.train
    cap = tc.eval_tokens or max(65_536, 64 * tc.batch_size * tc.seq_length)
    return min(cap, len(run.splits.val))


def validate_whole_split(run: Run, saver: Saver) -> EvalResult | None:
    """At the end of a run whose validations scored part of the val split: the whole split, once."""
    tc, val = run.config.train, run.splits.val
    if validation_tokens(run) >= len(val) or not run.ranks.main:  # (under torchrun, rank 0's alone)
        return None
    averager = run.step.averager
    with averager.swapped_in() if averager else contextlib.nullcontext():
        result = evaluate_tokens(run.model, val, tc.eval_batch_size, tc.seq_length, run.device,
                                 char_lengths=run.splits.lengths("val"))
    log.info("the whole val split (%s tokens): val loss %.4f nats/%s (%.4f bits/char)", f"{len(val):,}",
             result.nats_per_token, "char" if run.vocab.kind == "char" else "token", result.bits_per_char)
    saver.log({"event": "val_full", "step": run.progress.step, "val_loss": result.nats_per_token,
               "val_bits_per_char": result.bits_per_char, "tokens": len(val)})
    return result


class Meter:
    """The progress display, the clock of the run (resumed runs go on from their elapsed time) and the
    tokens-per-second window. On a terminal, a bar: over the time limit when there is one (so its ETA is
    right from the first step), else over the planned steps. Elsewhere (output to a file or a pipe), a
    plain line per --log-every steps, with no carriage returns."""

    def __init__(self, run: Run, enabled: bool):
        tc, prog = run.config.train, run.progress
        self.run, self.started = run, time.monotonic() - prog.elapsed
        self.by_time = bool(tc.max_minutes)
        self.lines = enabled and not _is_terminal(sys.stderr)
        self.finished = False
        self.first_step, self.first_elapsed = prog.step, prog.elapsed  # (where this session's steps began)
        if self.by_time:
            self.bar = tqdm(total=round(tc.max_minutes * 60.0), initial=min(round(prog.elapsed), round(tc.max_minutes * 60)),
                            disable=not enabled or self.lines, unit="s", dynamic_ncols=True, leave=False,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{remaining} left{postfix}]")
        else:
            self.bar = tqdm(total=prog.planned_steps, initial=prog.step, disable=not enabled or self.lines,
                            unit="step", dynamic_ncols=True, leave=False)
        self.restart_window()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def restart_window(self) -> None:
        self.window_start, self.window_tokens, self.window_losses = time.monotonic(), 0, []

    def rate(self) -> float:
        return self.window_tokens / max(time.monotonic() - self.window_start, 1e-9)

    def window_loss(self) -> float:
        """The mean train loss of the batches since the last log line."""
        return sum(self.window_losses) / len(self.window_losses) if self.window_losses else math.nan

    def eta(self) -> float:
        """Seconds left: to the time limit when there is one (or the planned steps, if they come first)."""
        tc, prog = self.run.config.train, self.run.progress
        done = prog.step - self.first_step
        per_step = (self.elapsed() - self.first_elapsed) / done if done else math.inf
        by_steps = max(prog.planned_steps - prog.step, 0) * per_step
        if self.by_time:
            return max(0.0, min(tc.max_minutes * 60.0 - self.elapsed(), by_steps))
        return by_steps

    def step_done(self, train_loss: float) -> None:
        tc = self.run.config.train
        self.window_tokens += tc.batch_size * tc.seq_length * self.run.ranks.world  # (every rank's tokens)
        self.window_losses.append(train_loss)
        if self.by_time:
            self.bar.update(min(round(self.elapsed()), self.bar.total) - self.bar.n)
        else:
            self.bar.update(1)
        self.bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{self.rate():,.0f}",
                             epoch=f"{self.run.batcher.epoch_progress:.2f}", refresh=False)

    def log_line(self, lr: float) -> None:
        """The plain progress line (when there is no terminal for a bar)."""
        if not self.lines:
            return
        prog, tc = self.run.progress, self.run.config.train
        limit = f"/{tc.max_steps:,}" if tc.max_steps else ""
        log.info("step %s%s epoch %.2f: train loss %.4f, lr %.3g, %s tokens/s, %s elapsed, %s left", f"{prog.step:,}",
                 limit, self.run.batcher.epoch_progress, self.window_loss(), lr, f"{self.rate():,.0f}",
                 _clock(self.elapsed()), _clock(self.eta()))

    def close(self) -> None:
        if self.finished and not self.bar.disable:  # a run that ended on its own limit ends at 100%
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# --- pieces of the loop ------------------------------------------------------------------------

def _log_start(run: Run) -> None:
    config, splits = run.config, run.splits
    cap, tc = validation_tokens(run), config.train
    if run.ranks.active:
        log.info("data parallel: %d ranks (%s), each training %d streams: a global batch of %d x %d tokens",
                 run.ranks.world, run.ranks.backend, tc.batch_size, tc.batch_size * run.ranks.world, tc.seq_length)
    every = f"{tc.eval_every_minutes:g} minutes" if tc.eval_every_minutes else f"{tc.eval_every:,} steps"
    if cap < len(splits.val):
        log.info("validation: the first %s of the %s val tokens every %s (--eval-tokens), the whole split at the end",
                 f"{cap:,}", f"{len(splits.val):,}", every)
    if run.resumed_from is not None:
        log.info("resuming %s at step %d", run.resumed_from.name, run.progress.step)
        for warning in resume_warnings(run):
            log.warning("warning: %s", warning)
    log.info("model: %s, %d layers x %d units, %s input, %s parameters; vocabulary %d; train %s / val %s / "
             "test %s tokens; device %s, %s", config.model.cell, config.model.num_layers, config.model.hidden_size,
             f"embedding {config.model.embedding_size}" if config.model.embedding_size else "one-hot",
             f"{run.model.num_parameters():,}", len(run.vocab), f"{len(splits.train):,}", f"{len(splits.val):,}",
             f"{len(splits.test):,}", run.device, run.step.precision)


def _result(run: Run, interrupted: bool) -> TrainResult:
    folder, prog = run.folder, run.progress
    if not run.ranks.main:  # (the folder may be on rank 0's machine only)
        return TrainResult(folder, None, None, prog.best_val_loss, prog.step, run.batcher.epoch_progress,
                           interrupted=interrupted, num_parameters=run.model.num_parameters(), rank=run.ranks.rank)
    last, best = read_pointer(folder, "last"), read_pointer(folder, "best")
    fit_loss, hint = None, ""
    if not interrupted:  # (an interrupted run reports at once; the hint is for a finished one)
        fit = _train_split_loss(run)
        # the hint's thresholds are per character, so word and BPE losses are compared per character too
        fit_loss = fit.nats_per_token
        per_char = _tokens_per_char(run.splits.lengths("val"))
        hint = fitting_hint(fit.nats_per_char, last["val_loss"] * per_char, [v * per_char for v in prog.val_losses])
    return TrainResult(folder, folder / last["file"], folder / best["file"], prog.best_val_loss, prog.step,
                       run.batcher.epoch_progress, fit_loss, last["val_loss"], interrupted, hint,
                       run.model.num_parameters())


def resume_warnings(run: Run) -> list[str]:
    """What a resumed run would do silently: nothing (its limit is already reached), or train on at the
    schedule's final rate (its horizon, planned when the run started, is behind it)."""
    tc, prog, batcher = run.config.train, run.progress, run.batcher
    warnings = []
    if tc.max_steps and prog.step >= tc.max_steps:
        warnings.append(f"the run is at step {prog.step:,}, its --max-steps is {tc.max_steps:,}: nothing to train; "
                        f"give a higher one (e.g. --max-steps {2 * prog.step:,})")
    elif batcher.epoch_progress >= tc.max_epochs:
        warnings.append(f"the run is at epoch {batcher.epoch_progress:.2f}, its --max-epochs is {tc.max_epochs:g}: "
                        f"nothing to train; give a higher one")
    elif tc.max_minutes and prog.elapsed >= tc.max_minutes * 60.0:
        warnings.append(f"the run has trained {prog.elapsed / 60:.1f} minutes, its --max-minutes is "
                        f"{tc.max_minutes:g}: nothing to train; give a higher one")
    elif tc.schedule == "cosine" and _progress_fraction(tc, prog.step, prog.planned_steps, prog.elapsed) >= 1.0:
        rate = learning_rate_at(tc, prog.step, batcher.epoch, 1.0, prog.plateau_factor)
        warnings.append(f"the cosine schedule was planned for {prog.planned_steps:,} steps when the run started and "
                        f"has ended: it trains on at its final rate {rate:.3g}; --extend-schedule stretches it "
                        f"over the new limit")
    return warnings


def _progress_fraction(tc, step: int, planned: float, elapsed: float) -> float:
    """How far through the run we are: by steps, or by the clock when a time limit is set."""
    fraction = step / planned
    if tc.max_minutes:
        fraction = max(fraction, elapsed / (tc.max_minutes * 60.0))
    return fraction


def _finished(tc, prog: Progress, batcher, elapsed: float, stopping: bool) -> bool:
    return (stopping
            or (tc.max_steps and prog.step >= tc.max_steps)
            or batcher.epoch_progress >= tc.max_epochs
            or (tc.max_minutes and elapsed >= tc.max_minutes * 60.0))


def _guard(loss: float, first_loss: float, factor: float, step: int, folder: Path | None) -> None:
    """Stop a diverged run (under torchrun every rank sees the same mean loss; rank 0, which has the
    folder, says what was kept)."""
    if math.isfinite(loss) and not (factor and loss > factor * first_loss):
        return
    what = (f"became {loss}" if not math.isfinite(loss)
            else f"exploded to {loss:.4f} (over {factor:g}x the first loss {first_loss:.4f})")
    if folder is None:
        kept = "rank 0 keeps the last good checkpoint"
    else:
        kept = (f"the last good checkpoint in {folder} is kept" if read_pointer(folder, "last")
                else "no checkpoint was written")
    raise TrainingDiverged(f"the training loss {what} at step {step}; stopped, {kept} "
                           f"(try a lower --learning-rate or --grad-clip)")


def every_ranks_state(run: Run) -> dict[str, torch.Tensor]:
    """The carried state and RNG states a checkpoint keeps: this process's, or under torchrun every
    rank's (the carried state joined back into the global batch's streams, an RNG state per rank)."""
    carried = tuple(s.cpu() for s in run.carried or ())
    if not run.ranks.active:
        tensors = {f"carry.{i}": s for i, s in enumerate(carried)}
        tensors["rng.cpu.0"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        return tensors
    cuda = torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None
    ranks = run.ranks.gathered((carried, torch.get_rng_state(), cuda))
    tensors = {}
    if carried:  # (streams are blocks in rank order: see Ranks.rows)
        tensors = {f"carry.{i}": torch.cat([rank[0][i] for rank in ranks], dim=1) for i in range(len(carried))}
    for r, (_, cpu_state, cuda_state) in enumerate(ranks):
        tensors[f"rng.cpu.{r}"] = cpu_state
        if cuda_state is not None:
            tensors[f"rng.cuda.{r}"] = cuda_state
    return tensors


def _train_split_loss(run: Run) -> EvalResult:
    """Loss on the end of the train split, as long as a validation, in eval mode (no dropout), with the
    weights validation used."""
    tc, splits = run.config.train, run.splits
    piece = np.asarray(splits.train[-max(validation_tokens(run), 2):])
    lengths = splits.lengths("train")
    lengths = np.asarray(lengths[-len(piece):]) if lengths is not None else None
    averager = run.step.averager
    with averager.swapped_in() if averager else contextlib.nullcontext():
        return evaluate_tokens(run.model, piece, tc.eval_batch_size, tc.seq_length, run.device, char_lengths=lengths)


def _tokens_per_char(lengths) -> float:
    """Tokens per character of a split (1 for a character model)."""
    return 1.0 if lengths is None or not len(lengths) else len(lengths) / max(int(np.sum(lengths)), 1)


def fitting_hint(train_loss: float | None, val_loss: float | None, val_history=()) -> str:
    """char-rnn's advice on reading the gap between training and validation loss (both in nats/char),
    given only once the run has a validation history to read (MIN_VALIDATIONS of them): overfitting
    when validation has stopped improving (its last STALLED validations above its best) while the gap
    is wide; underfitting when the gap is narrow."""
    if train_loss is None or val_loss is None:
        return ""
    history = list(val_history)
    gap = val_loss - train_loss
    if len(history) < MIN_VALIDATIONS:
        return (f"val loss {val_loss:.4f} nats/char, train loss {train_loss:.4f}: too early to tell over- from "
                f"underfitting ({len(history)} validation{'s' if len(history) != 1 else ''}; the hint needs "
                f"{MIN_VALIDATIONS})")
    stalled = min(history[-STALLED:]) > min(history)
    if gap > OVERFIT_GAP and stalled:
        return (f"val loss {val_loss:.4f} nats/char is well above train loss {train_loss:.4f} and has not improved "
                f"in the last {STALLED} validations: the model is overfitting; try a smaller model (--hidden-size, "
                f"--num-layers) or more --dropout")
    if gap > OVERFIT_GAP:
        return (f"val loss {val_loss:.4f} nats/char is well above train loss {train_loss:.4f} but still falling: "
                f"not overfitting yet; train on, and watch the gap")
    if gap < UNDERFIT_GAP:
        return (f"val loss {val_loss:.4f} nats/char is close to train loss {train_loss:.4f}: the model is likely "
                f"underfitting; try a larger model (--hidden-size, --num-layers) or train longer")
    return f"val loss {val_loss:.4f} nats/char, train loss {train_loss:.4f}: a healthy gap"
