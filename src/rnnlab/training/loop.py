"""train(): the one linear training loop, from a RunConfig to checkpoints on disk.

Reading order: set up (seed, device, corpus, model, optimizer, batcher) -> maybe restore a
checkpoint -> loop (batch, forward, backward, clip, step; log; validate and checkpoint every
`eval_every` steps) -> final validation, checkpoint, and an over/underfitting hint.
Everything a resumed run needs to continue exactly is saved: weights, optimizer, step and epoch
position, the carried hidden state, RNG states, elapsed time and the checkpoint history.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rnnlab.config import PATH_SETTINGS, RunConfig
from rnnlab.data.batching import StreamBatcher, make_batcher
from rnnlab.data.corpus import prepare_from_config
from rnnlab.data.vocab import CharVocab, describe_chars
from rnnlab.errors import CheckpointError, ConfigError, CorpusError, RnnlabError
from rnnlab.evaluation import EvalResult, evaluate_tokens
from rnnlab.models.lm import RecurrentLM
from rnnlab.training.checkpoint import (
    Checkpoint,
    checkpoint_name,
    load_checkpoint,
    prune_checkpoints,
    read_pointer,
    save_checkpoint,
    update_pointer,
)
from rnnlab.training.optim import WeightAverage, build_optimizer, learning_rate_at, nt_asgd_triggered, set_learning_rate
from rnnlab.training.schemes import SequencePlan, plan_sequence, position_weights, starts_with_reset
from rnnlab.training.state import Progress, StateError, check_training_state, restore_weight_average

log = logging.getLogger("rnnlab")

OVERFIT_GAP = 0.10  # nats/char: val this far above train suggests overfitting (char-rnn's tip)
UNDERFIT_GAP = 0.02  # nats/char: val this close to train suggests underfitting


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


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA GPU is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where the hardware computes it natively, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


def train(config: RunConfig, *, resume: str | Path | None = None, init_from: str | Path | None = None,
          stop: StopRequest | None = None, progress_bar: bool = True) -> TrainResult:
    """Train a model as `config` says; with `resume`, continue that checkpoint's run exactly.

    With `resume`, pass the checkpoint's own config (the CLI does); with `init_from`, the new run
    starts from that checkpoint's weights and vocabulary.
    """
    stop = stop or StopRequest()
    config = _with_absolute_paths(config)  # saved in checkpoints: a resume from another folder finds the text
    resumed = load_checkpoint(resume, prefer="last") if resume else None
    tc = config.train
    device = select_device(tc.device)
    if tc.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision fp16 is for CUDA GPUs and this run is on {device.type}: use bf16 (or auto)")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)

    source = load_checkpoint(init_from, weights_only=True) if init_from else None
    model_vocab = source.vocab if source is not None else resumed.vocab if resumed is not None else None
    if model_vocab is not None and model_vocab.kind != config.data.tokenizer:
        raise ConfigError(f"the checkpoint's vocabulary is {model_vocab.kind}-level; train it with --tokenizer "
                          f"{model_vocab.kind}")
    corpus = _prepare_for(config, model_vocab, resumed)
    digest = corpus.meta["blake2b"]
    vocab, id_map = corpus.vocab, None
    if source is not None and model_vocab.kind == "char":
        vocab, id_map = source.vocab, _map_into_vocab(corpus.vocab, source.vocab, init_from)
    elif resumed is not None:
        vocab = resumed.vocab
        _check_same_corpus(resumed, digest)
        if vocab.kind == "char" and vocab.chars != corpus.vocab.chars:  # fine-tuning: the model keeps its own
            id_map = _map_into_vocab(corpus.vocab, vocab, resume)

    splits = corpus.splits(config.data.val_frac, config.data.test_frac)
    batcher = make_batcher(splits.train, tc, id_map)
    if len(splits.val) < 2:
        advice = ("use a longer validation file" if corpus.meta.get("split_tokens") and
                  not corpus.meta.get("split_fractions") else f"raise --val-frac (now {config.data.val_frac})")
        raise CorpusError(f"the validation split has {len(splits.val)} tokens; {advice}")
    val_tokens = id_map[np.asarray(splits.val)] if id_map is not None else splits.val

    model = RecurrentLM(config.model, len(vocab), learned_initial_state=tc.state == "learned").to(device)
    if init_from:
        _load_initial_weights(model, source)
    optimizer = build_optimizer(model.parameters(), tc, device)
    step = TrainingStep(model, optimizer, resolve_precision(tc.precision, device), tc.grad_clip, device)
    prog, carried = Progress(), None
    if resumed is not None:
        prog, carried = _restore(resumed, model, step, batcher, device)

    folder = Path(tc.checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    n_params = model.num_parameters()
    log.info("model: %s, %d layers x %d units, %s input, %s parameters; vocabulary %d; train %s / val %s / "
             "test %s tokens; device %s, %s", config.model.cell, config.model.num_layers,
             config.model.hidden_size,
             f"embedding {config.model.embedding_size}" if config.model.embedding_size else "one-hot",
             f"{n_params:,}", len(vocab), f"{len(splits.train):,}", f"{len(splits.val):,}",
             f"{len(splits.test):,}", device, step.precision)
    saver = _Saver(config, model, vocab, step, batcher, val_tokens, splits.lengths("val"), device, folder, digest)
    planned = prog.planned_steps or _planned_steps(tc, batcher)
    prog.planned_steps = planned  # frozen: a resumed run keeps the schedule even if its stop limit moves
    bar = tqdm(total=planned, initial=prog.step, disable=not progress_bar, unit="step", dynamic_ncols=True,
               leave=False)
    saved_at = prog.step if resumed is not None else -1
    train_loss = None
    started = time.monotonic() - prog.elapsed
    window_start, window_tokens = time.monotonic(), 0
    tokens_per_batch = tc.batch_size * tc.seq_length
    model.train()
    stop.training = True
    try:
        saver.log({"event": "start", "step": prog.step, "parameters": n_params, "resumed": bool(resumed),
                   "config": config.to_dict()})
        while not _finished(tc, prog, batcher, time.monotonic() - started, stop):
            progress = _progress_fraction(tc, prog.step, planned, time.monotonic() - started)
            lr = learning_rate_at(tc, prog.step, batcher.epoch, progress, prog.plateau_factor)
            batch = batcher.next_batch()
            set_learning_rate(optimizer, lr * batch.lr_scale)
            if tc.state != "carry" or batch.starts_epoch or starts_with_reset(batch.stream_position, tc):
                carried = None  # the model's initial state: zeros, or the learned h0/c0
            length = batch.inputs.shape[1]
            weights = position_weights(length, tc)
            loss, carried = step(batch.inputs.to(device), batch.targets.to(device), carried,
                                 plan_sequence(length, batch.stream_position, tc),
                                 weights.to(device) if weights is not None else None)
            if tc.state != "carry":
                carried = None
            prog.step += 1
            prog.tokens_seen += tokens_per_batch
            window_tokens += tokens_per_batch
            train_loss = loss.item()
            prog.recent_losses.append(train_loss)
            prog.first_loss = prog.first_loss if prog.first_loss is not None else train_loss
            _guard(train_loss, prog.first_loss, tc.loss_guard, prog.step, folder)
            rate = window_tokens / max(time.monotonic() - window_start, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{rate:,.0f}", epoch=f"{batcher.epoch_progress:.2f}",
                            refresh=False)
            if tc.max_minutes and prog.step % 10 == 0:  # the clock may end the run first: fix the bar's ETA
                elapsed = time.monotonic() - started
                bar.total = int(min(planned, prog.step * tc.max_minutes * 60.0 / max(elapsed, 1e-9)))
            if prog.step % tc.log_every == 0:
                saver.log({"event": "train", "step": prog.step, "epoch": batcher.epoch_progress,
                           "train_loss": train_loss, "lr": lr, "tokens_per_s": rate,
                           "elapsed": time.monotonic() - started})
                window_start, window_tokens = time.monotonic(), 0
            if prog.step % tc.eval_every == 0:
                prog.elapsed = time.monotonic() - started
                saver.validate_and_save(prog, carried, scheduled=True)
                saved_at = prog.step
        if stop.requested:
            log.info("%s: writing a checkpoint", stop.reason)
        prog.elapsed = time.monotonic() - started
        if saved_at != prog.step or not (folder / "best.json").is_file():
            saver.validate_and_save(prog, carried)
    finally:
        bar.close()
        saver.close()

    last = read_pointer(folder, "last")
    best = read_pointer(folder, "best")
    fit_loss, hint = None, ""
    if not stop.requested:  # (an interrupted run reports at once; the hint is for a finished one)
        with step.averager.swapped_in() if step.averager else contextlib.nullcontext():  # the weights val used
            fit = _train_split_loss(model, splits.train, splits.lengths("train"), id_map, len(val_tokens), tc,
                                    device)
        # the hint's thresholds are per character, so word and BPE losses are compared per character too
        fit_loss = fit.nats_per_token
        hint = fitting_hint(fit.nats_per_char, last["val_loss"] * _tokens_per_char(splits.lengths("val")))
    return TrainResult(folder, folder / last["file"], folder / best["file"], prog.best_val_loss, prog.step,
                       batcher.epoch_progress, fit_loss, last["val_loss"], stop.requested, hint, n_params)


class _Saver:
    """Validation, checkpoint files, pointers and the run log of one training run."""

    def __init__(self, config, model, vocab, step: TrainingStep, batcher, val_tokens, val_lengths, device,
                 folder: Path, digest: str):
        self.config, self.model, self.vocab, self.step = config, model, vocab, step
        self.batcher, self.val_tokens, self.val_lengths, self.device = batcher, val_tokens, val_lengths, device
        self.folder, self.digest = folder, digest
        self.run_log = open(folder / "log.jsonl", "a", encoding="utf-8")

    def _update_schedules(self, prog: Progress, val_loss: float) -> None:
        """After a validation: the plateau schedule's decay, and NT-ASGD's switch to averaging."""
        tc = self.config.train
        if prog.val_losses and val_loss >= min(prog.val_losses):
            prog.evals_without_improvement += 1
        else:
            prog.evals_without_improvement = 0
        if tc.schedule == "plateau" and prog.evals_without_improvement >= tc.patience:
            prog.plateau_factor *= tc.decay_rate
            prog.evals_without_improvement = 0
            log.info("plateau: learning rate x%.3g", prog.plateau_factor)
        prog.val_losses.append(val_loss)
        if tc.optimizer == "nt-asgd" and self.step.averager is None \
                and nt_asgd_triggered(prog.val_losses, tc.nt_asgd_interval):
            self.step.averager = WeightAverage(self.model.parameters())
            log.info("NT-ASGD: validation stopped improving at step %d; averaging the weights from now on", prog.step)

    def log(self, record: dict) -> None:
        self.run_log.write(json.dumps(record) + "\n")
        self.run_log.flush()

    def close(self) -> None:
        self.run_log.close()

    def validate_and_save(self, prog: Progress, carried, scheduled: bool = False) -> Path:
        """Validate and checkpoint. Only the loop's validations every eval_every steps are `scheduled`
        and feed the plateau schedule and NT-ASGD: an extra one (an interruption, the end of the run)
        must not, or a resumed run would differ from a straight one."""
        averager = self.step.averager
        if averager is None:
            return self._validate_and_save(prog, carried, {}, scheduled)
        with averager.swapped_in() as raw:  # NT-ASGD evaluates and saves the averaged weights
            return self._validate_and_save(prog, carried, {f"raw.{i}": t for i, t in enumerate(raw)}, scheduled)

    def _validate_and_save(self, prog: Progress, carried, raw_tensors: dict, scheduled: bool) -> Path:
        tc = self.config.train
        result = evaluate_tokens(self.model, self.val_tokens, tc.eval_batch_size, tc.seq_length, self.device,
                                 char_lengths=self.val_lengths)
        val_loss = result.nats_per_token
        if scheduled:
            self._update_schedules(prog, val_loss)
        improved = val_loss < prog.best_val_loss
        prog.best_val_loss = min(prog.best_val_loss, val_loss)
        epoch = self.batcher.epoch_progress
        recent = prog.recent_losses
        train_part = f"train loss {sum(recent) / len(recent):.4f}, " if recent else ""
        prog.recent_losses = []
        unit = "char" if self.vocab.kind == "char" else "token"
        log.info("step %d epoch %.2f: %sval loss %.4f nats/%s (perplexity %.2f, %.4f bits/char)%s", prog.step, epoch,
                 train_part, val_loss, unit, result.perplexity, result.bits_per_char, " (best)" if improved else "")
        self.log({"event": "val", "step": prog.step, "epoch": epoch, "val_loss": val_loss,
                  "val_perplexity": result.perplexity, "val_bits_per_char": result.bits_per_char,
                  "elapsed": prog.elapsed})
        file = self.folder / checkpoint_name(self.config.model.cell, epoch, val_loss)
        if file.name not in prog.saved:
            prog.saved.append(file.name)
        extra = {f"carry.{i}": s for i, s in enumerate(carried or ())}
        extra.update(_rng_tensors())
        extra.update(raw_tensors)
        averager = self.step.averager
        trainer = {"progress": prog.to_dict(), "batcher": self.batcher.state_dict(), "has_carry": carried is not None,
                   "grad_scaler": self.step.scaler.state_dict(),
                   "averaging": {"count": averager.count} if averager is not None else None}
        metrics = {"val_loss": val_loss, "val_bits_per_char": result.bits_per_char,
                   "val_perplexity": result.perplexity, "tokenizer": self.vocab.kind,
                   "best_val_loss": prog.best_val_loss, "step": prog.step, "epoch": epoch,
                   "corpus": self.config.data.path or "tinyshakespeare (embedded)", "corpus_digest": self.digest}
        save_checkpoint(file, self.model, self.config, self.vocab, optimizer=self.step.optimizer, trainer=trainer,
                        extra_tensors=extra, metrics=metrics)
        update_pointer(self.folder, "last", file, val_loss)
        if improved or not (self.folder / "best.json").is_file():
            update_pointer(self.folder, "best", file, val_loss)
        prog.saved = prune_checkpoints(self.folder, prog.saved, tc.keep_last)
        return file


class TrainingStep:
    """One optimizer step on one batch: forward (under autocast), backward, clip, update.

    The carried state comes back detached, so gradients never flow into the previous batch.
    """

    def __init__(self, model, optimizer, precision: str, grad_clip: float, device: torch.device):
        self.model, self.optimizer, self.grad_clip, self.device = model, optimizer, grad_clip, device
        self.precision = precision
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.averager: WeightAverage | None = None  # NT-ASGD's average, once triggered

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, state, plan: SequencePlan | None = None,
                 weights: torch.Tensor | None = None):
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            if plan is None or len(plan.cuts) == 1:
                _, loss, carried = self.model(inputs, state, targets, weights)
            else:
                loss, carried = self._segmented(inputs, targets, state, plan, weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        skipped = scale is not None and self.scaler.get_scale() < scale  # fp16 overflow: no step was taken
        if self.averager is not None and not skipped:
            self.averager.update()
        return loss.detach(), tuple(s.detach().float() for s in carried)

    def _segmented(self, inputs, targets, state, plan: SequencePlan, weights):
        """Forward in segments: zero the state at resets, capture the state to carry at k1."""
        total, weight_sum, carried, start = 0.0, 0.0, None, 0
        for end in plan.cuts:
            if start in plan.resets:
                state = tuple(torch.zeros_like(s) for s in state)
            piece = weights[start:end] if weights is not None else None
            piece_weight = float(piece.sum()) if piece is not None else float(end - start)
            _, loss, state = self.model(inputs[:, start:end], state, targets[:, start:end], piece)
            if piece_weight > 0:
                total, weight_sum = total + loss * piece_weight, weight_sum + piece_weight
            if end == plan.transfer_at:
                carried = state
            start = end
        return total / weight_sum, carried if plan.transfer_at else state


# --- pieces of the loop ------------------------------------------------------------------------

def _planned_steps(tc, batcher: StreamBatcher) -> float:
    by_epochs = math.ceil(tc.max_epochs * batcher.batches_per_epoch)
    return min(by_epochs, tc.max_steps) if tc.max_steps else by_epochs


def _progress_fraction(tc, step: int, planned: float, elapsed: float) -> float:
    """How far through the run we are: by steps, or by the clock when a time limit is set."""
    fraction = step / planned
    if tc.max_minutes:
        fraction = max(fraction, elapsed / (tc.max_minutes * 60.0))
    return fraction


def _finished(tc, prog: Progress, batcher: StreamBatcher, elapsed: float, stop: StopRequest) -> bool:
    return (stop.requested
            or (tc.max_steps and prog.step >= tc.max_steps)
            or batcher.epoch_progress >= tc.max_epochs
            or (tc.max_minutes and elapsed >= tc.max_minutes * 60.0))


def _guard(loss: float, first_loss: float, factor: float, step: int, folder: Path) -> None:
    if math.isfinite(loss) and not (factor and loss > factor * first_loss):
        return
    what = (f"became {loss}" if not math.isfinite(loss)
            else f"exploded to {loss:.4f} (over {factor:g}x the first loss {first_loss:.4f})")
    kept = (f"the last good checkpoint in {folder} is kept" if read_pointer(folder, "last")
            else "no checkpoint was written")
    raise TrainingDiverged(f"the training loss {what} at step {step}; stopped, {kept} "
                           f"(try a lower --learning-rate or --grad-clip)")


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.cpu.0": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def _restore(ckpt: Checkpoint, model, step: TrainingStep, batcher: StreamBatcher, device):
    """Put a checkpoint's run back in place, every part checked against this run before it is used
    (a crafted checkpoint must not reach the fused kernels with wrong shapes)."""
    if ckpt.optimizer_meta is None or "progress" not in ckpt.trainer:
        raise CheckpointError(f"{ckpt.path} holds no training state to resume; use --init-from to start a new run "
                              f"from its weights")
    ckpt.load_weights_into(model)
    optimizer_state = check_training_state(ckpt, model, step.optimizer, step.scaler, batcher.batch_size)
    try:
        prog = Progress.from_dict(ckpt.trainer["progress"])
        batcher.load_state_dict(ckpt.trainer["batcher"])
    except (StateError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path}: its training state is corrupt ({exc})") from None
    step.optimizer.load_state_dict(optimizer_state)
    if ckpt.trainer.get("grad_scaler"):
        step.scaler.load_state_dict(ckpt.trainer["grad_scaler"])
    step.averager = restore_weight_average(ckpt, model)
    torch.set_rng_state(ckpt.tensors["rng.cpu.0"])
    cuda_states = ckpt.prefixed("rng.cuda.")
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[:torch.cuda.device_count()])
    carried = tuple(t.to(device) for t in ckpt.prefixed("carry.")) if ckpt.trainer.get("has_carry") else None
    log.info("resuming %s at step %d", ckpt.path.name, prog.step)
    return prog, carried


def _with_absolute_paths(config: RunConfig) -> RunConfig:
    data = config.data
    absolute = {name: str(Path(value).expanduser().absolute()) for name in PATH_SETTINGS
                if (value := getattr(data, name))}
    folder = str(Path(config.train.checkpoint_dir).expanduser().absolute())
    return dataclasses.replace(config, data=dataclasses.replace(data, **absolute),
                               train=dataclasses.replace(config.train, checkpoint_dir=folder))


def _load_initial_weights(model: RecurrentLM, source: Checkpoint) -> None:
    """--init-from: the checkpoint's weights. A learned initial state (h0/c0) is the one part a new run
    may add (it starts at zero, as in a fresh run) or drop; anything else must fit exactly."""
    weights = source.build_model().state_dict()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    misfits = [k for k in (*missing, *unexpected) if not k.startswith("initial_state.")]
    if misfits:
        raise ConfigError(f"--init-from {source.path}: its weights do not fit this model ({', '.join(misfits[:4])})")


def _prepare_for(config: RunConfig, model_vocab, resumed: Checkpoint | None):
    """The prepared corpus of a run. A word or BPE model that already exists reads the text with its own
    vocabulary (unknown words become <unk>); a char model's vocabulary is mapped onto the text's later.
    A resumed run gets the corpus its checkpoint was trained on: prepared as usual, or, when that run
    was itself fine-tuned from another model, encoded with the model's vocabulary."""
    if model_vocab is None or model_vocab.kind == "char":
        return prepare_from_config(config.data)
    if resumed is not None:
        corpus = prepare_from_config(config.data)
        if corpus.meta["blake2b"] == resumed.metrics.get("corpus_digest"):
            return corpus
    return prepare_from_config(config.data, model_vocab)


def _check_same_corpus(ckpt: Checkpoint, digest: str) -> None:
    saved = ckpt.metrics.get("corpus_digest")
    if saved and saved != digest:
        raise CorpusError("the training text (or how an older rnnlab prepared it) changed since this checkpoint was "
                          "written; resume needs the same prepared text (use --init-from to go on training from it)")


def _map_into_vocab(corpus_vocab: CharVocab, model_vocab: CharVocab, init_from) -> np.ndarray:
    # (char-level only: word and BPE corpora are encoded with the model's own vocabulary)
    """Ids of the new corpus -> ids of the initial model's vocabulary (which must cover them)."""
    missing = [ch for ch in corpus_vocab.chars if ch not in model_vocab]
    if missing:
        raise CorpusError(f"--init-from {init_from}: the new text has characters the model's vocabulary lacks: "
                          f"{describe_chars(missing[:20])}{' ...' if len(missing) > 20 else ''}")
    return np.asarray(model_vocab.encode("".join(corpus_vocab.chars)), dtype=np.int64)


def _train_split_loss(model, train_tokens, train_lengths, id_map, length: int, tc, device) -> EvalResult:
    """Loss on the end of the train split, as long as the val split, in eval mode (no dropout)."""
    piece = np.asarray(train_tokens[-max(length, 2):])
    lengths = np.asarray(train_lengths[-len(piece):]) if train_lengths is not None else None
    if id_map is not None:
        piece = id_map[piece]
    return evaluate_tokens(model, piece, tc.eval_batch_size, tc.seq_length, device, char_lengths=lengths)


def _tokens_per_char(lengths) -> float:
    """Tokens per character of a split (1 for a character model)."""
    return 1.0 if lengths is None or not len(lengths) else len(lengths) / max(int(np.sum(lengths)), 1)


def fitting_hint(train_loss: float | None, val_loss: float | None) -> str:
    """char-rnn's advice on reading the gap between training and validation loss (both in nats/char)."""
    if train_loss is None or val_loss is None:
        return ""
    gap = val_loss - train_loss
    if gap > OVERFIT_GAP:
        return (f"val loss {val_loss:.4f} nats/char is well above train loss {train_loss:.4f}: the model may be "
                f"overfitting; try a smaller model (--hidden-size, --num-layers) or more --dropout")
    if gap < UNDERFIT_GAP:
        return (f"val loss {val_loss:.4f} nats/char is close to train loss {train_loss:.4f}: the model is likely "
                f"underfitting; try a larger model (--hidden-size, --num-layers) or train longer")
    return f"train loss {train_loss:.4f} nats/char, val loss {val_loss:.4f}: a healthy gap"
