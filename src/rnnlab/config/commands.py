"""The settings of the commands around a run: sampling, evaluation, serving and the schemes experiment."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rnnlab.config.fields import check_choices, check_seed, non_negative, positive, positive_float, setting
from rnnlab.errors import ConfigError


@dataclass
class SampleConfig:
    length: int = setting(2000, "tokens to generate (characters, for a char model)")
    temperature: float = setting(1.0, "divide the logits by this (> 0); lower is more conservative")
    top_k: int = setting(0, "sample only among the k most likely tokens (0 = all)")
    top_p: float = setting(1.0, "sample only from the smallest set holding this probability mass, in (0, 1]")
    argmax: bool = setting(False, "always take the most likely character (greedy)")
    beam_width: int = setting(0, "beam search with this many beams for the most likely continuation (0 = off)")
    num_samples: int = setting(1, "independent samples generated together as one batch")
    prime_text: str = setting("", "text that warms the model up before generating")
    prime_file: str | None = setting(None, "read the prime text from this UTF-8 file")
    unknown: str = setting("error", "prime characters (or, for a word model, words) not in the vocabulary",
                           choices=("error", "skip"))
    sampling: str = setting("progressive", "progressive: one step per new token with the carried state; "
                            "windowed: re-read the last --window tokens from a fresh state for every token",
                            choices=("progressive", "windowed"))
    window: int = setting(100, "tokens re-read per new token in windowed sampling",
                          needs=(lambda s: s.sampling == "windowed", "--sampling windowed"))
    seed: int = setting(0, "random seed: the same seed gives the same text on the same machine")
    fast: bool = setting(True, "use the single-step engine on CPU (--no-fast steps with the model's torch code)")
    engine_weights: str = setting("auto", "weights of the CPU engine: auto (the fastest whose next-token "
                                          "probabilities a probe on this checkpoint finds within 1e-2 of the fp32 "
                                          "model's: compiled int8, then int12 (AVX-512 VNNI, 1-2 streams; else "
                                          "fp16) for the lowest layer(s), then everywhere, then fp16, else exact "
                                          "fp32, said once), int8 (fastest, unchecked), int12 (16x finer than "
                                          "int8, 3/8 of fp32's memory, unchecked), fp16 (half the memory of fp32, "
                                          "unchecked) or fp32 (exact: the same text as --no-fast for a seed)",
                                  choices=("auto", "int8", "int12", "fp16", "fp32"),
                                  needs=(lambda s: s.fast, "--fast (it sets the CPU engine's weights)"))
    device: str = setting("cpu", "where to run the model", choices=("auto", "cpu", "cuda"))

    def validate(self) -> None:
        check_choices(self)
        check_seed(self.seed)
        positive(self, "length", "num_samples", "window")
        non_negative(self, "top_k", "beam_width")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.argmax and not self.beam_width:
            shaping = (("temperature", self.temperature, 1.0), ("top_k", self.top_k, 0), ("top_p", self.top_p, 1.0))
            ignored = [name for name, value, default in shaping if value != default]
            if ignored:
                raise ConfigError(f"argmax always takes the most likely token; it cannot be combined with "
                                  f"{', '.join(ignored)}")
        if self.beam_width:
            ignored = [name for name, value, default in (
                ("num_samples", self.num_samples, 1), ("temperature", self.temperature, 1.0),
                ("top_k", self.top_k, 0), ("top_p", self.top_p, 1.0), ("argmax", self.argmax, False),
                ("sampling", self.sampling, "progressive")) if value != default]
            if ignored:
                raise ConfigError(f"beam search finds the single most likely continuation; it cannot be combined "
                                  f"with {', '.join(ignored)}")


@dataclass
class EvalConfig:
    """`rnnlab eval`: how a text file is scored."""
    batch_size: int = setting(64, "parallel streams")
    seq_length: int = setting(0, "steps per chunk (0 = the training seq_length; with --dynamic, 50)")
    burn_in: int = setting(0, "read the file as one stream; its first N tokens only bootstrap the state and every "
                              "later one is scored (the paper's protocol, N = k2); 0: score all in parallel streams")
    dynamic: bool = setting(False, "dynamic evaluation: adapt the weights to the text as it is read (one stream)")
    dynamic_lr: float = setting(1e-4, "dynamic evaluation's learning rate")
    dynamic_decay: float = setting(2e-5, "dynamic evaluation's pull back toward the trained weights per step")
    sampling: str = setting("progressive", "progressive: the state carried through the text; windowed: every token "
                            "predicted from the last --window tokens only, from a fresh state, as windowed sampling "
                            "uses a model (the default for models trained with scheme 1 or 2)",
                            choices=("progressive", "windowed"))
    window: int = setting(100, "tokens of context in windowed evaluation (default for scheme 1/2 models: their k2)")
    device: str = setting("auto", "where to run", choices=("auto", "cpu", "cuda"))
    json: bool = setting(False, "print one JSON object")
    split: str = setting("", "score the checkpoint's own held-out split, val or test (its corpus, cut as its run "
                             "cut it), instead of a FILE", choices=("", "val", "test"))

    def validate(self) -> None:
        check_choices(self)
        positive(self, "batch_size", "window")
        non_negative(self, "seq_length", "burn_in")
        if self.sampling == "windowed" and (self.dynamic or self.burn_in):
            raise ConfigError("windowed evaluation reads every window from a fresh state: drop --dynamic and "
                              "--burn-in")
        if self.dynamic and (not (self.dynamic_lr > 0 and math.isfinite(self.dynamic_lr))
                             or not 0 <= self.dynamic_decay < 1):
            raise ConfigError("--dynamic needs --dynamic-lr > 0 (finite) and --dynamic-decay in [0, 1)")

    def check_given(self, given) -> None:
        """Settings given that this evaluation would not use are refused (they would silently do nothing)."""
        if self.dynamic and {"batch_size", "burn_in"} & set(given):
            raise ConfigError("--dynamic reads the file as one stream: drop --batch-size and --burn-in")
        if "window" in given and self.sampling != "windowed":
            raise ConfigError("--window sets windowed evaluation: add --sampling windowed")
        dynamic_only = [f"--{name.replace('_', '-')}" for name in ("dynamic_lr", "dynamic_decay") if name in given]
        if dynamic_only and not self.dynamic:
            raise ConfigError(f"{' and '.join(dynamic_only)} set dynamic evaluation: add --dynamic")


@dataclass
class SchemesExperimentConfig:
    """`rnnlab experiment schemes`: the paper's four schemes timed and trained on one corpus."""
    data: str | None = setting(None, "text file (default: the embedded corpus)", is_path=True)
    out: str = setting("", "folder for table4.md, fig9.png and summary.md", required=True, is_path=True)
    steps: int = setting(400, "training batches per scheme")
    max_minutes: float = setting(0.0, "training minutes per scheme instead of --steps (converted to steps from "
                                      "the timings)")
    architectures: str = setting("1x128,1x512,2x128,2x512", "r x gamma models for the timing table (the paper's "
                                                            "four)")
    curve_architecture: str = setting("1x128", "r x gamma model for the perplexity curves")
    k2: int = setting(100, "training sequence length")
    k1: int = setting(40, "stride between sequences")
    batch_size: int = setting(64, "sequences per batch")
    timing_batches: int = setting(5, "timed training batches per cell")
    timing_tokens: int = setting(200, "sampled tokens timed per cell (a tenth as many for the windowed schemes)")
    seed: int = setting(1234, "seed of every run")

    def validate(self) -> None:
        positive(self, "steps", "timing_batches", "timing_tokens", "batch_size", "k2", "k1")
        non_negative(self, "max_minutes")
        check_seed(self.seed)
        if self.k1 > self.k2:
            raise ConfigError(f"k1 ({self.k1}) must be <= k2 ({self.k2})")
        self.models()
        self.curve_model()

    def check_given(self, given) -> None:
        if {"steps", "max_minutes"} <= set(given):
            raise ConfigError("give --steps or --max-minutes, not both")

    def models(self) -> tuple[tuple[int, int], ...]:
        return parse_architectures(self.architectures)

    def curve_model(self) -> tuple[int, int]:
        return parse_architectures(self.curve_architecture)[0]


@dataclass
class GridExperimentConfig:
    """`rnnlab experiment grid`: the paper's experiment grid, each part a grid of runs on the sweep machinery."""
    data: list[str] = setting([], "NAME=PATH: a corpus (once per corpus; default: the embedded tinyshakespeare)",
                              flag="corpus")
    out: str = setting("", "folder for grid.md, grid.json, the figures and every run", required=True, is_path=True)
    parts: str = setting("architectures,schemes,k2", "which parts: architectures (Figs. 7/8: r x gamma against "
                                                     "schemes), schemes (Figs. 9/10), k2 (Fig. 11: k2 against "
                                                     "wall time)")
    schemes: str = setting("1,2,3,4", "the schemes of the schemes and k2 parts")
    architecture_schemes: str = setting("1,2", "the schemes of the architectures part (the paper's Figs. 7 and 8)")
    architectures: str = setting("1x128,1x512,2x128,2x512", "r x gamma models of the architectures part")
    curve_architecture: str = setting("1x512", "the r x gamma model of the schemes and k2 parts (the paper's best)")
    k1: str = setting("20,40,60,80,100", "k1 values: one line each per plot")
    k2: int = setting(100, "k2 of the architectures and schemes parts")
    k2_values: str = setting("20,40,60,80,100", "k2 values of the k2 part; each with k1 = k2, 2k2/3 and k2/3")
    k2_corpus: str = setting("", "the corpus of the k2 part (default: the last --corpus; the paper used Music)")
    repeats: int = setting(1, "runs of every configuration with seeds seed, seed+1, ...: the spread is shown")
    steps: int = setting(200, "training batches per run (the paper: 12,800)")
    points: int = setting(8, "log-spaced points at which each run is scored on the test text")
    batch_size: int = setting(64, "sequences per batch (the paper: 64)")
    test_chars: int = setting(11_100, "characters of each corpus's test text (its end; the paper: 11,100)")
    workers: int = setting(1, "worker processes sharing the runs")
    seed: int = setting(1234, "the first seed")

    def validate(self) -> None:
        positive(self, "k2", "repeats", "steps", "points", "batch_size", "test_chars", "workers")
        check_seed(self.seed)
        unknown = sorted(set(self.part_names()) - {"architectures", "schemes", "k2"})
        if unknown or not self.part_names():
            raise ConfigError(f"--parts takes architectures, schemes and k2 (comma-separated); got {self.parts!r}")
        for name in ("schemes", "architecture_schemes"):
            if not set(self.numbers(name)) <= {1, 2, 3, 4} or not self.numbers(name):
                raise ConfigError(f"--{name.replace('_', '-')} takes schemes 1-4, e.g. 1,2,3,4")
        self.numbers("k1")
        self.numbers("k2_values")
        parse_architectures(self.architectures)
        parse_architectures(self.curve_architecture)
        if max(self.numbers("k1")) > self.k2:
            raise ConfigError(f"every k1 must be <= k2 ({self.k2}); got {self.k1}")
        corpora = self.corpora()
        if self.k2_corpus and self.k2_corpus not in corpora:
            raise ConfigError(f"--k2-corpus {self.k2_corpus!r} is none of the corpora: {', '.join(corpora)}")

    def part_names(self) -> list[str]:
        return [p.strip() for p in self.parts.split(",") if p.strip()]

    def numbers(self, name: str) -> list[int]:
        try:
            values = [int(v) for v in getattr(self, name).split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--{name.replace('_', '-')} takes comma-separated integers; got "
                              f"{getattr(self, name)!r}") from None
        if not values or min(values) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} takes positive integers; got {getattr(self, name)!r}")
        return values

    def corpora(self) -> dict[str, str | None]:
        """NAME -> PATH (None: the embedded corpus)."""
        return named_paths(self.data, "corpus") if self.data else {"tinyshakespeare": None}


def parse_architectures(text: str) -> tuple[tuple[int, int], ...]:
    """'1x128,2x512' -> ((1, 128), (2, 512))."""
    try:
        pairs = tuple(tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item)
    except ValueError:
        raise ConfigError(f"architectures look like 1x128,2x512; got {text!r}") from None
    if not pairs or any(len(p) != 2 or min(p) <= 0 for p in pairs):
        raise ConfigError(f"architectures look like 1x128,2x512; got {text!r}")
    return pairs


@dataclass
class InspectConfig:
    """`rnnlab inspect`: how a checkpoint is described."""
    json: bool = setting(False, "print one JSON object (the whole config included)")

    def validate(self) -> None:
        """One on/off flag: nothing can be out of range."""


@dataclass
class PlotConfig:
    """`rnnlab plot`: loss curves of runs from their logs."""
    out: str = setting("", "the PNG file to write", required=True, is_path=True)
    x: str = setting("step", "the x axis: optimizer steps, epochs or wall time", choices=("step", "epoch", "time"))
    unit: str = setting("bits", "the y axis: bits per character, or nats per token", choices=("bits", "nats"))

    def validate(self) -> None:
        check_choices(self)
        if not self.out.lower().endswith(".png"):
            raise ConfigError(f"--out must name a .png file, got {self.out!r}")


@dataclass
class NoveltyConfig:
    """`rnnlab novelty`: how much of a sample is copied from the training text."""
    length: int = setting(2000, "tokens of sample to generate when SOURCE is a checkpoint")
    seed: int = setting(0, "seed of that sample")
    ngrams: str = setting("10,20,50", "n-gram lengths whose share found in the text is reported (characters; "
                                      "words for a word model)")
    passages: int = setting(5, "copied passages to show, longest first")
    cache_dir: str | None = setting(None, "where the text's index goes (default: beside its prepared corpus)",
                                    is_path=True)
    json: bool = setting(False, "print one JSON object")

    def validate(self) -> None:
        positive(self, "length", "passages")
        check_seed(self.seed)
        self.sizes()

    def sizes(self) -> tuple[int, ...]:
        try:
            sizes = tuple(int(v) for v in self.ngrams.split(",") if v.strip())
        except ValueError:
            sizes = ()
        if not sizes or min(sizes) <= 0:
            raise ConfigError(f"ngrams look like 10,20,50; got {self.ngrams!r}")
        return sizes


@dataclass
class MatrixConfig:
    """`rnnlab matrix`: every model evaluated on every corpus (the blog's cross-dataset table)."""
    out: str = setting("", "folder for matrix.md, matrix.csv, matrix.png, the models trained and the texts "
                           "scored", required=True, is_path=True)
    corpus: list[str] = setting([], "NAME=PATH: a corpus (a text file, or a folder with input.txt); once per "
                                    "corpus", required=True)
    model: list[str] = setting([], "NAME=CHECKPOINT: the model of corpus NAME (the others get one trained)")
    train_minutes: float = setting(2.0, "minutes of training for each corpus without a given model")
    train_steps: int = setting(0, "steps of training instead of minutes (0 = --train-minutes)")
    config: str | None = setting(None, "the preset those models are trained with (default: rnnlab's defaults)",
                                 is_path=True)
    val_frac: float = setting(0.05, "the share of each corpus, at its end before the test share, that every "
                                    "model is scored on")
    test_frac: float = setting(0.05, "the share of each corpus at its very end, held out")

    def validate(self) -> None:
        non_negative(self, "train_minutes", "train_steps")
        if not (self.train_minutes or self.train_steps):
            raise ConfigError("give --train-minutes or --train-steps a positive value")
        for name in ("val_frac", "test_frac"):
            if not 0.0 < getattr(self, name) < 0.5:
                raise ConfigError(f"{name} must be in (0, 0.5), got {getattr(self, name)}")
        corpora = self.named("corpus")
        unknown = sorted(set(self.named("model")) - set(corpora))
        if unknown:
            raise ConfigError(f"--model names {', '.join(unknown)}, which no --corpus is called")

    def named(self, field_name: str) -> dict[str, str]:
        return named_paths(getattr(self, field_name), field_name)


def named_paths(items: list[str], flag: str) -> dict[str, str]:
    """NAME=PATH items as {NAME: PATH}, each name once (a name is a folder's name in the outputs)."""
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or "/" in name:
            raise ConfigError(f"--{flag} takes NAME=PATH, got {item!r}")
        if name in named:
            raise ConfigError(f"two --{flag} items are named {name!r}")
        named[name] = path
    return named


@dataclass
class SweepConfig:
    """`rnnlab sweep`: a hyperparameter search on Optuna, each trial a normal run (the blog's odyssey)."""
    space: str = setting("", "the search space: a TOML file of config fields and their distributions, or 'blog' "
                             "(the blog's six knobs: batch size, learning rate, width, dropout, depth, state "
                             "resets, sized to this machine)", required=True)
    out: str = setting("", "the sweep's folder: its study (sweep.db), every trial's run, the report and plots",
                       required=True, is_path=True)
    config: str | None = setting(None, "the preset every trial starts from (default: rnnlab's defaults)",
                                 is_path=True)
    sampler: str = setting("tpe", "tpe: Optuna's Bayesian search; random; grid: every combination of the space's "
                                  "values (one knob gives the blog's one-at-a-time comparison)",
                           choices=("tpe", "random", "grid"))
    trials: int = setting(20, "trials in the study (a grid has at most its number of combinations)")
    max_minutes: float = setting(0.0, "start no trial after this many minutes of this command (0 = no limit)")
    trial_minutes: float = setting(3.0, "training minutes per trial (the blog's lesson: rough values with a "
                                        "small budget first)")
    trial_steps: int = setting(0, "optimizer steps per trial instead of minutes (0 = --trial-minutes)")
    validations: int = setting(10, "validations per trial, spread evenly over its budget: the points where "
                                   "trials are compared and pruned")
    pruner: str = setting("median", "stop a trial early whose validation is worse than the others' at the same "
                                    "point: median, hyperband, or none", choices=("median", "hyperband", "none"))
    prune_after: int = setting(4, "finished trials before the median pruner prunes anything")
    storage: str | None = setting(None, "the study's SQLAlchemy URL, e.g. postgresql://user:pass@host/db, shared "
                                        "by workers on several machines (default: sqlite in --out)")
    study: str = setting("rnnlab", "the study's name in its storage")
    workers: int = setting(1, "worker processes on this machine, sharing the study (each gets a share of the "
                                  "cores)")
    heartbeat: int = setting(10, "seconds between a running trial's heartbeats; a trial silent for 3 of them "
                                 "(its worker died) is marked failed and run again from its last checkpoint")
    seed: int = setting(0, "seed of the sampler (each worker adds its index); every trial trains with the "
                           "preset's seed")

    def validate(self) -> None:
        check_choices(self)
        check_seed(self.seed)
        positive(self, "trials", "validations", "workers", "heartbeat")
        non_negative(self, "max_minutes", "trial_minutes", "trial_steps", "prune_after")
        if not (self.trial_minutes or self.trial_steps):
            raise ConfigError("give --trial-minutes or --trial-steps a positive value")
        if self.trial_steps and self.trial_steps < self.validations:
            raise ConfigError(f"--trial-steps ({self.trial_steps}) must be at least --validations "
                              f"({self.validations})")

    def budget(self) -> dict:
        """The train settings that give every trial the same budget and the same validation points."""
        if self.trial_steps:
            return {"max_steps": self.trial_steps, "max_minutes": 0.0, "eval_every_minutes": 0.0,
                    "eval_every": self.trial_steps // self.validations}
        return {"max_minutes": self.trial_minutes, "max_steps": 0,
                "eval_every_minutes": self.trial_minutes / self.validations}


@dataclass
class ServeConfig:
    host: str = setting("127.0.0.1", "address to bind (loopback unless told otherwise)")
    port: int = setting(8000, "TCP port")
    max_prompt_chars: int = setting(4000, "longest prompt accepted by /v1/complete")
    max_length: int = setting(2000, "most tokens (characters, for a char model) one completion may ask for")
    max_n: int = setting(8, "most completions one request may ask for")
    max_streams: int = setting(64, "most completions generated at once across all requests; more get 503")
    max_score_chars: int = setting(100_000, "longest text accepted by /v1/score")
    max_score_tokens: int = setting(100_000, "most tokens of text /v1/score scores (it reads them in chunks with "
                                             "a carried state, off the server's event loop)")
    max_body_bytes: int = setting(2 * 1024 * 1024, "largest request body read (refused with 413 as soon as it is "
                                                   "over, before it is parsed)")
    request_timeout: float = setting(30.0, "seconds a client has to send its request body")
    idle_timeout: float = setting(5.0, "seconds an idle keep-alive connection stays open")
    max_batch: int = setting(0, "most completions one model advances per step (0 = all active: micro-batching; "
                                "1 = one completion at a time)")
    threads: int = setting(1, "torch threads for prompts and scoring (the engines' steps use every core anyway)")
    engine_weights: str = setting("auto", "weights of each model's CPU engine, as for sample: auto (the fastest "
                                          "within 1e-2 of the fp32 model on that checkpoint), int8, int12, fp16 or "
                                          "fp32 (exact, and in the model's own memory: no copy of the weights)",
                                  choices=("auto", "int8", "int12", "fp16", "fp32"))
    allowed_hosts: str = setting("", "Host header names accepted besides loopback and --host (comma-separated; "
                                     "* accepts any): what the server is reached as when it is exposed")
    api_key: str = setting("", "require this key on the API (header Authorization: Bearer KEY; the page takes it "
                               "as /#key=KEY); default: the RNNLAB_API_KEY environment variable, else none")
    docs: bool = setting(False, "serve the OpenAPI schema and its pages at /docs and /openapi.json")
    show_paths: bool = setting(False, "list each model's checkpoint path in /v1/models")

    def validate(self) -> None:
        positive(self, "port", "max_prompt_chars", "max_length", "max_n", "max_streams", "max_score_chars",
                  "max_score_tokens", "max_body_bytes", "threads")
        positive_float(self, "request_timeout", "idle_timeout")
        non_negative(self, "max_batch")
        if self.port > 65535:
            raise ConfigError(f"port must be <= 65535, got {self.port}")
