"""The run's config tree: data, model and training settings (RunConfig), the paper's scheme and
architecture presets, and the merge of defaults < TOML preset < flags into one validated RunConfig."""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path

from rnnlab.config.fields import (
    check_choices,
    check_seed,
    load_toml,
    merge,
    non_negative,
    positive,
    positive_float,
    section_from_dict,
    setting,
)
from rnnlab.data.vocab import vocab_size_problem
from rnnlab.errors import ConfigError

log = logging.getLogger("rnnlab")


def _single_file(data: "DataConfig") -> bool:
    """Whether the corpus is one text cut by fractions (a folder without input.txt holds split files)."""
    folder = Path(data.path).expanduser() if data.path else None
    return not data.val_file and not (folder and folder.is_dir() and not (folder / "input.txt").is_file())


_SINGLE_FILE = (lambda c: _single_file(c.data),
                "a single corpus file (not --val-file or a folder of train/valid/test files)")


@dataclass
class DataConfig:
    path: str | None = setting(
        None, "UTF-8 text file, or a folder holding input.txt (default: embedded tinyshakespeare)", flag="data"
    , is_path=True, resumable=True)
    val_frac: float = setting(0.05, "fraction of the corpus (its end, before test) used for validation", needs=_SINGLE_FILE)
    test_frac: float = setting(0.05, "fraction of the corpus (its very end) held out for testing", needs=_SINGLE_FILE)
    cache_dir: str | None = setting(
        None, "where prepared token files go (default: .rnnlab_cache next to the input, else ~/.cache/rnnlab)"
    , is_path=True, resumable=True)
    val_file: str | None = setting(None, "a separate validation file (then DATA is the training text and the "
                                         "fractions are not used; a folder with train/valid/test files, like "
                                         "ptb.train.txt, is found by itself)", is_path=True)
    test_file: str | None = setting(None, "a separate test file (with --val-file)", is_path=True)
    tokenizer: str = setting("char", "char: Unicode characters; word: whitespace-separated words with <eos> at line "
                             "ends and <unk> for rare words (PTB/WikiText conventions); bpe: byte-level BPE "
                             "trained on the training text (Hugging Face tokenizers)", choices=("char", "word", "bpe"))
    vocab_size: int = setting(0, "word: keep at most this many ids, the most frequent words (0 = all); bpe: the "
                                 "vocabulary to learn (0 = 4096); char: not used", shapes_weights=True)
    min_count: int = setting(1, "word: words seen fewer times become <unk>; bpe: merges seen fewer times are not "
                                "learned", shapes_weights=True)

    def validate(self) -> None:
        check_choices(self)
        non_negative(self, "vocab_size")
        positive(self, "min_count")
        if self.tokenizer == "char" and (self.vocab_size or self.min_count != 1):
            raise ConfigError("--vocab-size and --min-count apply to the word and bpe tokenizers, not to char")
        if problem := vocab_size_problem(self.tokenizer, self.vocab_size):
            raise ConfigError(problem)
        if self.test_file and not self.val_file:
            raise ConfigError("--test-file needs --val-file too")
        for name in ("val_frac", "test_frac"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if self.val_frac + self.test_frac >= 1.0:
            raise ConfigError(
                f"val_frac + test_frac must leave data for training, got {self.val_frac} + {self.test_frac}"
            )


@dataclass
class ModelConfig:
    cell: str = setting("lstm", "recurrent cell (qrnn: quasi-recurrent, gates from a convolution, parallel pooling)",
                        choices=("lstm", "gru", "rnn", "qrnn"), shapes_weights=True)
    qrnn_window: int = setting(2, "QRNN convolution width: 1 (x_t) or 2 (x_t and x_(t-1))", choices=(1, 2), shapes_weights=True, needs=(lambda c: c.model.cell == "qrnn", "--cell qrnn"))
    qrnn_pooling: str = setting("fo", "QRNN pooling", choices=("f", "fo", "ifo"), shapes_weights=True, needs=(lambda c: c.model.cell == "qrnn", "--cell qrnn"))
    num_layers: int = setting(2, "number of stacked recurrent layers", shapes_weights=True)
    hidden_size: int = setting(512, "units per recurrent layer", shapes_weights=True)
    embedding_size: int = setting(128, "input embedding width; 0 feeds one-hot vectors as char-rnn does", shapes_weights=True)
    dropout: float = setting(0.25, "dropout between recurrent layers and before the output layer, in [0, 1)")
    architecture: str = setting("default", "default: recurrent layers -> linear output; paper: one-hot input, "
                                "LSTM layers, a dense 1024 leaky-ReLU (0.01) layer, then the output, with orthogonal "
                                "recurrent and Glorot-uniform dense initialization (and, unless set, the paper's "
                                "Adam 1e-3, batch 64, clipping at 50, no dropout)", choices=("default", "paper"), shapes_weights=True)
    dense_size: int = setting(1024, "width of the paper architecture's dense layer", shapes_weights=True, needs=(lambda c: c.model.architecture == "paper", "--architecture paper"))
    head: str = setting("softmax", "output layer: softmax (linear + softmax), adaptive (PyTorch's adaptive softmax: "
                        "frequent tokens cheap, rare ones in smaller clusters; ids must be sorted by frequency, as "
                        "word vocabularies are) or mos (mixture of --mos-experts softmaxes)",
                        choices=("softmax", "adaptive", "mos"), shapes_weights=True)
    tie_weights: bool = setting(False, "share the output layer's weights with the embedding (a linear projection "
                                       "maps the last layer to the embedding width when they differ)", shapes_weights=True)
    adaptive_cutoffs: str = setting("", "adaptive softmax cluster boundaries, e.g. 2000,10000 (default: V/10,V/3)", shapes_weights=True, needs=(lambda c: c.model.head == "adaptive", "--head adaptive"))
    mos_experts: int = setting(5, "softmaxes mixed by the mos head", shapes_weights=True, needs=(lambda c: c.model.head == "mos", "--head mos"))
    dropout_embedding: float = setting(0.0, "AWD-LSTM embedding dropout: drop whole tokens (rows of the embedding)")
    dropout_input: float = setting(0.0, "AWD-LSTM locked (variational) dropout on the first layer's inputs")
    dropout_hidden: float = setting(0.0, "AWD-LSTM locked dropout between recurrent layers, one mask per sequence", needs=(lambda c: c.model.num_layers > (2 if c.model.dropout_last_input is not None else 1), "--num-layers 2 or more (3 or more with --dropout-last-input)"))
    dropout_output: float = setting(0.0, "AWD-LSTM locked dropout on the last recurrent layer's outputs")
    weight_drop: float = setting(0.0, "AWD-LSTM weight drop: DropConnect on the hidden-to-hidden weights, one mask "
                                      "per sequence, inside the fused kernel's weights")
    dropout_last_input: float | None = setting(
        None, "locked dropout on the last recurrent layer's input, when it should differ from --dropout-hidden "
              "(LSTMLM gives the last layer its own keep probability: with tied weights it is often narrower)", needs=(lambda c: c.model.num_layers > 1, "--num-layers 2 or more"))
    weight_drop_input: float = setting(0.0, "DropConnect on the input-to-hidden weights W, one mask per sequence "
                                            "(LSTMLM's input_weight_keep_prob = 1 - this)")
    dropout_recurrent: float = setting(0.0, "LSTM recurrent dropout on the candidate tanh(g), one mask per sequence "
                                            "(LSTMLM's recurrent_keep_prob = 1 - this); trains step by step, slower")
    activation_regularization: float = setting(0.0, "AR: add alpha * mean(dropped last-layer outputs^2) to the "
                                                    "training loss", flag="ar")
    temporal_activation_regularization: float = setting(0.0, "TAR: add beta * mean((h_t - h_(t-1))^2) of the "
                                                             "last layer to the training loss", flag="tar")

    def validate(self) -> None:
        check_choices(self)
        positive(self, "num_layers", "hidden_size")
        for name in ("dropout", "dropout_embedding", "dropout_input", "dropout_hidden", "dropout_output",
                     "weight_drop", "weight_drop_input", "dropout_recurrent", "dropout_last_input"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if self.dropout_recurrent and self.cell != "lstm":
            raise ConfigError("dropout_recurrent drops the LSTM's candidate; it needs --cell lstm")
        if self.weight_drop_input and self.cell == "qrnn":
            raise ConfigError("the QRNN's --weight-drop already drops its (input) convolution weights; "
                              "weight_drop_input is for lstm, gru and rnn")
        non_negative(self, "activation_regularization", "temporal_activation_regularization")
        if self.dropout_embedding and not self.embedding_size:
            raise ConfigError("dropout_embedding needs an embedding (--embedding-size > 0)")
        positive(self, "mos_experts", "dense_size")
        if self.embedding_size < 0:
            raise ConfigError(f"embedding_size must be >= 0 (0 = one-hot), got {self.embedding_size}")
        if self.architecture == "paper" and (self.cell != "lstm" or self.embedding_size):
            raise ConfigError("the paper architecture is an LSTM on one-hot input: drop --cell/--embedding-size")
        if self.tie_weights and not self.embedding_size:
            raise ConfigError("tie_weights shares the embedding with the output layer: set --embedding-size > 0")
        if self.architecture == "paper" and (self.head != "softmax" or self.tie_weights):
            raise ConfigError("the paper architecture has a plain softmax output")
        self.cutoffs(None)

    def cutoffs(self, vocab_size: int | None) -> list[int]:
        """The adaptive softmax's cluster boundaries for a vocabulary (checked: increasing, inside it)."""
        try:
            given = [int(v) for v in self.adaptive_cutoffs.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"adaptive_cutoffs must be integers like 2000,10000; got "
                              f"{self.adaptive_cutoffs!r}") from None
        if vocab_size is None:
            if any(b <= a for a, b in zip(given[:-1], given[1:], strict=True)) or (given and given[0] < 1):
                raise ConfigError(f"adaptive cutoffs {given} must be positive and increasing")
            return given
        cutoffs = given or sorted({max(1, vocab_size // 10), max(2, vocab_size // 3)})
        if any(b <= a for a, b in zip(cutoffs[:-1], cutoffs[1:], strict=True)) or cutoffs[0] < 1 \
                or cutoffs[-1] >= vocab_size:
            raise ConfigError(f"adaptive cutoffs {cutoffs} must increase and stay inside the vocabulary of "
                              f"{vocab_size}")
        return cutoffs


def check_precision_on(precision: str, device: str) -> None:
    """fp16 needs CUDA's loss scaling and kernels: refused on a CPU, whether named (a config) or found
    (a run with device auto on a machine without a GPU)."""
    if precision == "fp16" and device not in ("cuda", "auto"):
        raise ConfigError(f"precision fp16 is for CUDA GPUs and this run is on {device}: use bf16 (or auto)")


@dataclass
class TrainConfig:
    batch_size: int = setting(16, "parallel streams per batch (under torchrun, per rank: N ranks train a global "
                                  "batch of N x this)")
    seq_length: int = setting(64, "k2: time steps per training sequence; gradients never flow further back",
                              aliases=("--k2",))
    k1: int = setting(0, "stride between the starts of consecutive sequences of a stream (0 = k2: no overlap); "
                         "k1 <= k2 uses every position")
    loss_positions: str = setting("all", "positions that carry a loss: all k2 (multi-loss), the last one "
                                  "(single-loss) or the last k3", choices=("all", "last", "last-k"))
    k3: int = setting(1, "with --loss-positions last-k: the number of final positions that carry a loss", needs=(lambda c: c.train.loss_positions == "last-k", "--loss-positions last-k"))
    loss_decay: str = setting("none", "weight of earlier positions in the loss (the paper's section 5): none, "
                              "linear (i/(k2-1)) or exponential (e^(i-k2+1))",
                              choices=("none", "linear", "exponential"), needs=(lambda c: c.train.loss_positions != "last", "--loss-positions all or last-k"))
    state: str = setting("carry", "initial state of every sequence: carry (the state reached after k1 steps of "
                         "the previous sequence, detached), zero, or learned (trainable h0/c0)",
                         choices=("carry", "zero", "learned"))
    reset_every: int = setting(0, "with --state carry: reset the carried state to zero every N tokens of a stream "
                                  "(0 = never)")
    scheme: int = setting(0, "the paper's schemes (set loss positions, state, batching, k2=100, k1=40 and the "
                          "checkpoint's sampling; explicit flags win): 1 multi-loss + learned h0 + windowed "
                          "sampling, 2 single-loss + learned h0 + windowed, 3 multi-loss + learned h0 + "
                          "progressive, 4 multi-loss + state transfer at k1 + progressive (0 = none)",
                          choices=(0, 1, 2, 3, 4))
    batching: str = setting("streams", "streams: char-rnn's contiguous columns; equidistant: the paper's eq. 8 with "
                            "a circular shift every epoch; random: uniformly random windows; variable: AWD-LSTM's "
                            "random sequence length around k2", choices=("streams", "equidistant", "random",
                                                                         "variable"))
    learning_rate: float = setting(3e-3, "peak learning rate")
    optimizer: str = setting("adam", "optimizer; nt-asgd is AWD-LSTM's SGD that starts averaging the weights once "
                             "validation stops improving (non-monotonically triggered)",
                             choices=("adam", "adamw", "amsgrad", "rmsprop", "sgd", "adagrad", "adadelta",
                                      "nt-asgd"))
    nt_asgd_interval: int = setting(5, "nt-asgd: average once val loss is worse than the best of all earlier "
                                       "validations but the N just before it (AWD-LSTM's nonmono)", needs=(lambda c: c.train.optimizer == "nt-asgd", "--optimizer nt-asgd"))
    weight_decay: float = setting(0.0, "L2 penalty (decoupled for adamw)")
    momentum: float = setting(0.9, "momentum of sgd (Nesterov)", needs=(lambda c: c.train.optimizer == "sgd", "--optimizer sgd"))
    schedule: str = setting(
        "cosine", "learning-rate schedule: none (constant), char-rnn (per-epoch decay), cosine, cyclic (triangular "
        "between min_lr_frac and 1 of the peak every cycle_steps), plateau (times decay_rate after `patience` "
        "validations without improvement)", choices=("none", "constant", "char-rnn", "cosine", "cyclic", "plateau"))
    cycle_steps: int = setting(2000, "cyclic schedule: steps per up-and-down cycle", needs=(lambda c: c.train.schedule == "cyclic", "--schedule cyclic"))
    patience: int = setting(2, "plateau schedule: validations without improvement before the rate decays", needs=(lambda c: c.train.schedule == "plateau", "--schedule plateau"))
    warmup_steps: int = setting(0, "linear warm-up steps at the start of the schedule")
    decay_after: int = setting(10, "char-rnn schedule: first epoch after which the rate decays", needs=(lambda c: c.train.schedule == "char-rnn", "--schedule char-rnn"))
    decay_rate: float = setting(0.97, "char-rnn schedule: factor applied once per epoch after decay_after", needs=(lambda c: c.train.schedule in ("char-rnn", "plateau"), "--schedule char-rnn or plateau"))
    min_lr_frac: float = setting(0.05, "cosine schedule: final rate as a fraction of the peak", needs=(lambda c: c.train.schedule in ("cosine", "cyclic"), "--schedule cosine or cyclic"))
    grad_clip: float = setting(5.0, "clip the global gradient norm to this (0 disables)")
    precision: str = setting(
        "auto", "autocast precision of the forward pass (weights stay fp32): auto picks bf16 where the CPU or GPU "
        "computes it natively (~1.4x faster on AVX512-BF16 CPUs), else fp32; fp16 adds a gradient scaler (CUDA)",
        choices=("auto", "fp32", "bf16", "fp16"))
    max_epochs: float = setting(50.0, "stop after this many passes over the training split", resumable=True)
    max_steps: int = setting(0, "stop after this many optimizer steps (0 = no limit)", resumable=True)
    max_minutes: float = setting(0.0, "stop after this many minutes of training (0 = no limit)", resumable=True)
    extend_schedule: bool = setting(False, "with --resume: stretch the cosine schedule over the new --max-steps or "
                                           "--max-epochs (otherwise it keeps the horizon planned when the run "
                                           "started, and past it trains at its final rate)", resumable=True,
                                    needs=(lambda c: c.train.schedule == "cosine", "--schedule cosine"))
    eval_every: int = setting(500, "validate on the whole val split and checkpoint every N steps", resumable=True)
    eval_every_minutes: float = setting(0.0, "validate and checkpoint every N minutes of training instead of every "
                                             "--eval-every steps (0 = by steps); a sweep's time-budgeted trials use "
                                             "it so that the k-th validation of every trial falls at the same time",
                                        resumable=True)
    eval_tokens: int = setting(0, "validate on the first N tokens of the val split (0 = auto: 64 batches' worth, "
                                  "at least 65,536 — a few percent of the training time at the default cadence); "
                                  "the whole split is scored once more at the end. Fixed for a run: every "
                                  "validation of it scores the same tokens")
    eval_batch_size: int = setting(64, "parallel streams when validating")
    log_every: int = setting(50, "write a train-loss line to the run log every N steps", resumable=True)
    checkpoint_dir: str = setting("checkpoints", "where checkpoints and the run log are written", resumable=True,
                                  is_path=True)
    tensorboard: bool = setting(False, "also write TensorBoard event files (train/val loss, bits/char, learning "
                                       "rate, tokens/s, previews) to CHECKPOINT_DIR/tensorboard (needs the "
                                       "[tensorboard] extra)", resumable=True)
    keep_last: int = setting(3, "keep the newest N checkpoints (the best one is always kept)", resumable=True)
    overwrite: bool = setting(False, "start this run in a --checkpoint-dir that holds another run, removing that "
                                     "run's checkpoints, pointers and log (without it, such a folder is refused)",
                              resumable=True)
    loss_guard: float = setting(3.0, "stop when the loss exceeds this multiple of the first loss (0 disables)")
    sample_length: int = setting(200, "tokens (characters, for a char model) of preview printed after training "
                                      "(0 disables)", resumable=True)
    preview_length: int = setting(0, "after every validation, print (and write to the run log) a seeded sample of "
                                     "this many tokens from the model as validated (0 = none)", resumable=True)
    preview_prime: str = setting("", "the text previews continue (default: a line start), e.g. \"The\" as the "
                                     "blog did", resumable=True)
    seed: int = setting(1234, "seed for weights, batching, dropout and previews")
    device: str = setting("auto", "where to train", choices=("auto", "cpu", "cuda"), resumable=True)
    threads: int = setting(0, "CPU threads for PyTorch (0 = all cores)", resumable=True)
    dist_timeout: float = setting(30.0, "under torchrun: minutes a rank waits for the others (a step, rank 0's "
                                  "validation or checkpoint) before the job ends", resumable=True)

    def validate(self) -> None:
        check_choices(self)
        check_seed(self.seed)
        check_precision_on(self.precision, self.device)
        positive(self, "batch_size", "seq_length", "k3", "eval_every", "eval_batch_size", "log_every", "keep_last",
                  "nt_asgd_interval", "cycle_steps", "patience")
        non_negative(self, "k1", "reset_every")
        if self.k1 > self.seq_length:
            raise ConfigError(f"k1 ({self.k1}) must be <= k2 ({self.seq_length}), or some positions are never used")
        if self.k3 > self.seq_length:
            raise ConfigError(f"k3 ({self.k3}) must be <= k2 ({self.seq_length})")
        if self.reset_every and self.state != "carry":
            raise ConfigError("--reset-every applies to a carried state; it needs --state carry")
        if self.reset_every and self.k1 and self.k1 < self.seq_length:
            raise ConfigError("--reset-every needs non-overlapping sequences (k1 = k2)")
        if self.k1 and self.k1 < self.seq_length and self.batching == "streams":
            raise ConfigError("overlapping sequences (k1 < k2) need --batching equidistant")
        if self.batching in ("random", "variable") and self.k1:
            raise ConfigError(f"--k1 has no meaning with --batching {self.batching}")
        if self.batching == "random" and self.state == "carry":
            raise ConfigError("random windows are unrelated to each other: use --state zero or learned")
        positive_float(self, "learning_rate", "decay_rate", "max_epochs")
        non_negative(self, "warmup_steps", "decay_after", "max_steps", "max_minutes", "grad_clip",
                      "weight_decay", "loss_guard", "sample_length", "threads", "preview_length",
                      "eval_every_minutes", "eval_tokens")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.min_lr_frac <= 1.0:
            raise ConfigError(f"min_lr_frac must be in [0, 1], got {self.min_lr_frac}")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.data.validate()
        self.model.validate()
        self.train.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "RunConfig":
        return cls(**{name: section_from_dict(section_type, raw.get(name, {}), name)
                      for name, section_type in _sections(cls).items()})


def sections() -> dict[str, type]:
    """A RunConfig's section names and their dataclasses."""
    return _sections(RunConfig)


def _sections(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# The paper's schemes as presets under whatever the user sets explicitly. Every scheme uses the
# paper's equidistant batching with k2 = 100 and k1 = 40 (its Table 4 setting).
SCHEMES = {
    1: {"loss_positions": "all", "state": "learned"},
    2: {"loss_positions": "last", "state": "learned"},
    3: {"loss_positions": "all", "state": "learned"},
    4: {"loss_positions": "all", "state": "carry"},
}
WINDOWED_SCHEMES = (1, 2)  # schemes that sample windowed (Algorithm 4); 3 and 4 sample progressively
# The paper's network and optimizer (its Table 3), as defaults under explicit settings.
PAPER_ARCHITECTURE = {"model": {"cell": "lstm", "embedding_size": 0, "dropout": 0.0},
                      "train": {"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 64, "grad_clip": 50.0,
                                "schedule": "constant"}}


def scheme_settings(scheme: int) -> dict:
    if not scheme:
        return {}
    return {"batching": "equidistant", "seq_length": 100, "k1": 40, "loss_decay": "none", "reset_every": 0,
            **SCHEMES[scheme]}


def build_run_config(config_file: str | None, overrides: dict, defaults: dict | None = None) -> RunConfig:
    """Dataclass defaults < `defaults` (e.g. a checkpoint's model) < the TOML file < `overrides` (flags)."""
    raw = load_toml(config_file) if config_file else {}
    unknown = sorted(set(raw) - set(_sections(RunConfig)))
    if unknown:
        raise ConfigError(f"unknown section(s) in {config_file}: {', '.join(unknown)}")
    for name, section_type in _sections(RunConfig).items():  # the file alone must be valid, whatever flags
        if name in raw:                                       # later replace
            section_from_dict(section_type, raw[name], name)
    explicit = merge(raw, overrides)
    scheme = explicit.get("train", {}).get("scheme", 0)
    if scheme not in SCHEMES and scheme != 0:
        raise ConfigError(f"scheme must be one of 1, 2, 3, 4; got {scheme!r}")
    presets = {"train": scheme_settings(scheme)}
    if explicit.get("model", {}).get("architecture") == "paper":
        presets = merge(presets, PAPER_ARCHITECTURE)
    config = RunConfig.from_dict(merge(merge(presets, defaults or {}), explicit))
    config.validate()
    for message in unused_settings(config, explicit):
        log.warning("warning: %s", message)
    return config


def unused_settings(config: RunConfig, explicit: dict) -> list[str]:
    """Messages for settings given explicitly (flags or TOML) that this config never reads."""
    messages = []
    for section, section_type in _sections(RunConfig).items():
        for f in dataclasses.fields(section_type):
            if f.metadata.get("needs") and f.name in explicit.get(section, {}):
                used, needs = f.metadata["needs"]
                if not used(config):
                    messages.append(f"{_flag(section, f.name)} has no effect here: it needs {needs}")
    if config.model.head == "adaptive" and config.data.tokenizer != "word":
        messages.append(f"--head adaptive puts the lowest ids in its cheapest cluster, which assumes ids sorted by "
                        f"frequency (word vocabularies are); {config.data.tokenizer} ids are not, so its clusters "
                        f"are arbitrary: prefer --head softmax")
    return messages


def _flag(section: str, name: str) -> str:
    section_type = _sections(RunConfig)[section]
    metadata = next(f.metadata for f in dataclasses.fields(section_type) if f.name == name)
    return "--" + (metadata.get("flag") or name).replace("_", "-")
