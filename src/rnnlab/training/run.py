"""resolve_run(): the one door to a training run, from (preset, overrides, resume, init-from) to a Run.

The CLI, the experiments, the benchmarks and a library user all start runs here, so a run resumed
from Python is the run the CLI would resume. Reading order: the config (fresh, resumed or fine-tuned;
which settings a resume may change and which shape the weights is metadata on the config fields, see
config.setting) -> the corpus, encoded in the model's own vocabulary -> model, optimizer, batcher ->
the checkpoint's training state, checked and put back.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnlab.config import DataConfig, ModelConfig, RunConfig, build_run_config, load_toml, marked, merge, sections
from rnnlab.data.batching import make_batcher
from rnnlab.data.corpus import PreparedCorpus, Splits, prepare_from_config, user_cache_root
from rnnlab.data.vocab import Vocab, describe_chars
from rnnlab.errors import CheckpointError, ConfigError, CorpusError, RnnlabError, os_error_line
from rnnlab.models.lm import RecurrentLM
from rnnlab.models.size import check_fits, parameter_count, training_bytes
from rnnlab.training.checkpoint import Checkpoint, load_checkpoint
from rnnlab.training.distributed import Ranks, current_ranks, wrap_for_ranks
from rnnlab.training.folder import check_encodable_path, prepare_folder
from rnnlab.training.optim import build_optimizer
from rnnlab.training.state import Progress, restore_training_state
from rnnlab.training.step import TrainingStep, resolve_precision, select_device

log = logging.getLogger("rnnlab")


@dataclass
class Run:
    """A run ready to train: its config, corpus, model, optimizer step, batcher and position."""
    config: RunConfig
    vocab: Vocab
    splits: Splits
    digest: str  # of the prepared corpus: a resume must find the same one
    model: RecurrentLM
    step: TrainingStep
    batcher: object
    progress: Progress
    carried: tuple | None
    device: torch.device
    resumed_from: Path | None = None
    ranks: Ranks = Ranks()  # (under torchrun: this process's place among the job's ranks)

    @property
    def folder(self) -> Path:
        return Path(self.config.train.checkpoint_dir)


def resolve_run(preset: str | Path | RunConfig | None = None, overrides: dict | None = None, *,
                resume: str | Path | None = None, init_from: str | Path | None = None) -> Run:
    """The run that `rnnlab train` would start.

    preset: a TOML file, a RunConfig, or None for the defaults; overrides: nested settings as the
    command line gives them ({"train": {"max_steps": 100}}). With `resume`, the checkpoint's own run
    continues (only settings marked resumable may differ); with `init_from`, a new run starts from a
    checkpoint's weights and vocabulary (its architecture kept)."""
    overrides = copy.deepcopy(overrides or {})
    if resume and init_from:
        raise ConfigError("--resume continues a run and --init-from starts a new one: give only one")
    if resume:
        ckpt = load_checkpoint(resume, prefer="last")
        return build_run(resumed_config(ckpt, preset, overrides), resumed=ckpt)
    if init_from:
        source = load_checkpoint(init_from, weights_only=True)
        return build_run(fine_tuning_config(source, preset, overrides), source=source)
    return build_run(fresh_config(preset, overrides))


# --- the config -------------------------------------------------------------------------------

def fresh_config(preset, overrides: dict) -> RunConfig:
    if isinstance(preset, RunConfig):
        config = RunConfig.from_dict(merge(preset.to_dict(), overrides))
        config.validate()
        return config
    return build_run_config(preset, overrides)


def resumed_config(ckpt: Checkpoint, preset, overrides: dict) -> RunConfig:
    """The checkpoint's config with what a resume may change (the fields marked resumable)."""
    if preset is not None and not isinstance(preset, RunConfig):
        raise ConfigError("--resume uses the checkpoint's own config; drop --config")
    saved = ckpt.config
    saved.train.checkpoint_dir = str(ckpt.path.parent)  # keep writing next to the checkpoint being resumed
    given = merge(_differences(absolute_paths(preset), saved), overrides) if preset is not None else overrides
    given = absolute_paths(given)  # checkpoints hold absolute paths
    changed = sorted(f"{section}.{key}" for section, values in given.items() for key, value in values.items()
                     if getattr(getattr(saved, section), key) != value
                     and key not in marked(sections()[section], "resumable"))
    if changed:
        raise ConfigError(f"cannot change {', '.join(changed)} when resuming (it would not be the same run); "
                          f"use --init-from to start a new run from the checkpoint")
    data = given.get("data", {})
    if "cache_dir" not in data:
        # a checkpoint's own paths are read (its text) but never written to unless the user names them:
        # the cache goes where a fresh run on the user's --data would put it, else to the user's cache
        saved.data.cache_dir = None if data.get("path") else str(user_cache_root())
    config = RunConfig.from_dict(merge(saved.to_dict(), given))
    config.validate()
    return config


def fine_tuning_config(source: Checkpoint, preset, overrides: dict) -> RunConfig:
    """A new run on the checkpoint's architecture and vocabulary; regularizers and training may change."""
    saved = source.config
    if isinstance(preset, RunConfig):
        config = fresh_config(preset, overrides)
        _check_keeps_architecture(saved, dataclasses.asdict(config.model), {})
        return config
    raw = load_toml(preset) if preset else {}
    given = {section: {**(raw[section] if isinstance(raw.get(section), dict) else {}),
                       **overrides.get(section, {})} for section in ("model", "data")}
    _check_keeps_architecture(saved, given["model"], given["data"])
    # the checkpoint's model and tokenizer stand in for the defaults; the preset and flags go on top
    return build_run_config(preset, overrides,
                            defaults={"model": dataclasses.asdict(saved.model),
                                      "data": {"tokenizer": saved.data.tokenizer}})


def _check_keeps_architecture(saved: RunConfig, model: dict, data: dict) -> None:
    clash = [k for k in marked(ModelConfig, "shapes_weights") if k in model and model[k] != getattr(saved.model, k)]
    if clash:
        raise ConfigError(f"--init-from keeps the checkpoint's architecture; it has "
                          f"{', '.join(f'{k}={getattr(saved.model, k)}' for k in clash)}")
    vocabulary = [k for k in marked(DataConfig, "shapes_weights") if k in data]
    if vocabulary:
        raise ConfigError(f"--init-from keeps the checkpoint's vocabulary; drop "
                          f"{' and '.join('--' + k.replace('_', '-') for k in vocabulary)}")


def _differences(config: RunConfig, saved: RunConfig) -> dict:
    """The settings of `config` that differ from `saved`, as nested overrides."""
    ours, theirs = config.to_dict(), saved.to_dict()
    return {section: {k: v for k, v in values.items() if theirs[section][k] != v}
            for section, values in ours.items()}


def absolute_paths(config):
    """Every setting marked is_path made absolute (in a RunConfig or in nested overrides): checkpoints
    store them so, and a run resumes from any folder."""
    if config is None:
        return None
    if isinstance(config, RunConfig):
        return RunConfig.from_dict(absolute_paths(config.to_dict()))
    result = copy.deepcopy(config)
    for section, values in result.items():
        section_type = sections().get(section)
        if section_type is None or not isinstance(values, dict):
            continue
        for name in marked(section_type, "is_path"):
            if values.get(name):
                values[name] = str(Path(values[name]).expanduser().absolute())
    return result


# --- the run ----------------------------------------------------------------------------------

def build_run(config: RunConfig, resumed: Checkpoint | None = None, source: Checkpoint | None = None) -> Run:
    """Corpus, model, optimizer and batcher of a config; with `resumed`, its training state put back."""
    config = absolute_paths(config)
    tc = config.train
    for section in ("data", "train"):
        for name in marked(sections()[section], "is_path"):
            if value := getattr(getattr(config, section), name):
                check_encodable_path(value, f"--{name.replace('_', '-')}")
    device = select_device(tc.device)
    ranks = current_ranks(device.type, tc.dist_timeout)
    if resumed is not None:
        check_same_ranks(config, resumed, ranks)
    if ranks.active:
        if device.type == "cuda":
            device = torch.device("cuda", ranks.gpu)
    # (rank 0 alone writes the run folder; if it cannot, every rank stops with its line)
    on_rank_zero(ranks, lambda: prepare_folder(Path(tc.checkpoint_dir), resuming=resumed is not None,
                                               overwrite=tc.overwrite))
    precision = resolve_precision(tc.precision, device)
    torch.manual_seed(tc.seed)
    model_vocab = (source or resumed).vocab if (source or resumed) is not None else None
    if model_vocab is not None and model_vocab.kind != config.data.tokenizer:
        raise ConfigError(f"the checkpoint's vocabulary is {model_vocab.kind}-level; train it with --tokenizer "
                          f"{model_vocab.kind}")
    corpus = local_rank_zero_first(ranks, lambda: corpus_in_vocabulary(  # (one process per machine prepares it)
        config.data, model_vocab, compare_own=resumed is not None,
        named=(source or resumed).path if model_vocab is not None else None))
    if resumed is not None:
        _check_same_corpus(resumed, corpus)
    splits = corpus.splits(config.data.val_frac, config.data.test_frac)
    batcher = make_batcher(splits.train, tc, ranks=ranks)
    if len(splits.val) < 2:
        advice = ("use a longer validation file" if corpus.meta.get("split_tokens") and
                  not corpus.meta.get("split_fractions") else f"raise --val-frac (now {config.data.val_frac})")
        raise CorpusError(f"the validation split has {len(splits.val)} tokens; {advice}")
    learned = tc.state == "learned"
    check_fits(training_bytes(config.model, len(corpus.vocab), tc.batch_size, tc.seq_length, learned), device,
               f"training a {config.model.num_layers}x{config.model.hidden_size} {config.model.cell} "
               f"({parameter_count(config.model, len(corpus.vocab), learned):,} parameters, vocabulary "
               f"{len(corpus.vocab):,}) with batches of {tc.batch_size}x{tc.seq_length}",
               "lower the model's sizes (--hidden-size, --embedding-size, --num-layers, --mos-experts) or the "
               "batch (--batch-size, --seq-length)")
    model = RecurrentLM(config.model, len(corpus.vocab), learned_initial_state=learned).to(device)
    if ranks.rank:  # (same weights everywhere, from the seed; each rank its own dropout masks from here on)
        torch.manual_seed(tc.seed + 1_000_003 * ranks.rank)
    if source is not None:
        _load_initial_weights(model, source)
    step = TrainingStep(model, build_optimizer(model.parameters(), tc, device), precision, tc.grad_clip, device)
    progress, carried = Progress(), None
    if resumed is not None:
        progress, carried = restore_training_state(resumed, model, step, batcher, device, ranks)
    step.forward = wrap_for_ranks(step.forward, ranks, device)
    # the schedule's horizon, fixed when the run starts: a resumed run keeps it even if its stop limit moves,
    # unless told to stretch it over the new limit
    if not progress.planned_steps or (resumed is not None and tc.extend_schedule):
        progress.planned_steps = planned_steps(tc, batcher)
    return Run(config, corpus.vocab, splits, corpus.meta["blake2b"], model, step, batcher, progress, carried,
               device, resumed.path if resumed is not None else None, ranks)


def local_rank_zero_first(ranks: Ranks, work):
    """work() on local rank 0 of each machine first (e.g. preparing the corpus cache), then on the others,
    which find its result made rather than race it. If it fails there, every rank stops with its line
    (rather than waiting for a rank that will never come)."""
    if not ranks.active:
        return work()
    result = _shared_outcome(ranks, work, ranks.local_rank == 0, everyone_hears=ranks.gathered)
    return result if ranks.local_rank == 0 else work()


def on_rank_zero(ranks: Ranks, work) -> None:
    """work() on rank 0 alone; a failure there is every rank's one line."""
    if not ranks.active:
        work()
        return
    _shared_outcome(ranks, work, ranks.main, everyone_hears=lambda message: [ranks.from_main(message)])


def _shared_outcome(ranks: Ranks, work, here: bool, everyone_hears):
    result, failure = None, None
    if here:
        try:
            result = work()
        except Exception as exc:  # (told to the others first, then raised here as it is)
            failure = exc
    heard = [message for message in everyone_hears(_one_line(failure) if failure else None) if message]
    if failure is not None:
        raise failure
    if heard:
        raise RnnlabError(heard[0])
    return result


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return os_error_line(exc)
    return str(exc) if isinstance(exc, RnnlabError) else f"{type(exc).__name__}: {exc}"


def check_same_ranks(config: RunConfig, resumed: Checkpoint, ranks: Ranks) -> None:
    """A run resumes on as many ranks as it trained on: on another number its global batch (and so the run)
    would differ. Refused in one line."""
    saved = resumed.trainer.get("world_size", 1)
    if isinstance(saved, bool) or not isinstance(saved, int) or saved < 1:
        raise CheckpointError(f"{resumed.path}: trainer.world_size must be a positive integer, got {saved!r}")
    if saved == ranks.world:
        return
    how = "one process (no torchrun)" if saved == 1 else f"{saved} ranks (torchrun with {saved} processes in all)"
    raise ConfigError(f"{resumed.path} was trained on {saved} rank{'s' if saved != 1 else ''} (a global batch of "
                      f"{saved} x {config.train.batch_size} streams), this job has {ranks.world}: resume it on {how}, "
                      f"or start a new run from its weights with --init-from")


def planned_steps(tc, batcher) -> int:
    by_epochs = math.ceil(tc.max_epochs * batcher.batches_per_epoch)
    return min(by_epochs, tc.max_steps) if tc.max_steps else by_epochs


def corpus_in_vocabulary(data: DataConfig, model_vocab: Vocab | None, compare_own: bool = False,
                         named=None) -> PreparedCorpus:
    """The prepared corpus, encoded in the model's vocabulary when there is a model (a fine-tuned or
    resumed one), the same way for every tokenizer: the text's own preparation is used when its
    vocabulary is the model's, otherwise the text is encoded with the model's (a word or BPE model
    reads unknown words as <unk> or bytes; a character model must know every character)."""
    if model_vocab is None:
        return prepare_from_config(data)
    if compare_own or model_vocab.kind == "char":
        own = prepare_from_config(data)
        if own.vocab.to_dict() == model_vocab.to_dict():
            return own
        if model_vocab.kind == "char":
            missing = [ch for ch in own.vocab.chars if ch not in model_vocab]
            if missing:
                raise CorpusError(f"--init-from {named}: the new text has characters the model's vocabulary lacks: "
                                  f"{describe_chars(missing[:20])}{' ...' if len(missing) > 20 else ''}")
    return prepare_from_config(data, model_vocab)


def _check_same_corpus(ckpt: Checkpoint, corpus: PreparedCorpus) -> None:
    saved = ckpt.metrics.get("corpus_digest")
    if saved and saved != corpus.meta["blake2b"]:
        raise CorpusError("the training text (or how an older rnnlab prepared it) changed since this checkpoint was "
                          "written; resume needs the same prepared text (use --init-from to go on training from it)")


def _load_initial_weights(model: RecurrentLM, source: Checkpoint) -> None:
    """--init-from: the checkpoint's weights. A learned initial state (h0/c0) is the one part a new run
    may add (it starts at zero, as in a fresh run) or drop; anything else must fit exactly."""
    weights = source.build_model().state_dict()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    misfits = [k for k in (*missing, *unexpected) if not k.startswith("initial_state.")]
    if misfits:
        raise ConfigError(f"--init-from {source.path}: its weights do not fit this model ({', '.join(misfits[:4])})")
