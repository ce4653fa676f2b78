"""The three-line API: `rnnlab.train(...)`, `rnnlab.load(...)`, then `lm.complete(...)` and `lm.score(...)`.

    import rnnlab
    result = rnnlab.train("input.txt", max_minutes=6, hidden_size=256)   # = rnnlab train input.txt ...
    lm = rnnlab.load(result.checkpoint_dir)
    print(lm.complete("ROMEO:", length=200, temperature=0.8), lm.score("To be, or not to be"))

Everything here goes through the same doors as the CLI: `train` through resolve_run and the loop
(its flat keywords are the config tree's fields, checked the same way), `complete` through the one
sampler with the fastest engine for the model, `score` through the evaluator.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rnnlab.config import SampleConfig, build_section, sections
from rnnlab.errors import ConfigError


def settings_from_keywords(keywords: dict) -> dict:
    """Flat keywords (hidden_size=256, max_minutes=6) -> nested settings ({"model": {...}, "train": {...}}):
    every field name of the config tree is unique, so each names its section."""
    where = {f.name: section for section, section_type in sections().items() for f in dataclasses.fields(section_type)}
    nested: dict = {}
    for name, value in keywords.items():
        if name not in where:
            raise ConfigError(f"train() has no setting {name!r}; the settings are the fields of "
                              f"{', '.join(sections())}: {', '.join(sorted(where))}")
        nested.setdefault(where[name], {})[name] = value
    return nested


def train(data=None, *, config: str | Path | None = None, resume: str | Path | None = None,
          init_from: str | Path | None = None, progress_bar: bool = True, after_validation=None, **settings):
    """Train a model as `rnnlab train` does and return its TrainResult (checkpoint_dir, best_checkpoint,
    best_val_loss, ...).

    data: a text file or folder (None: the embedded tinyshakespeare), or a Run / RunConfig already built
    (then the other arguments are those of rnnlab.training.loop.train); config: a preset's name or TOML
    file; settings: any field of the config tree as a keyword (max_minutes=6, hidden_size=256, ...)."""
    from rnnlab.config import RunConfig
    from rnnlab.training.loop import train as train_run
    from rnnlab.training.run import Run, resolve_run

    if isinstance(data, (Run, RunConfig)):
        if settings or config is not None:
            raise ConfigError("train(run) trains that run as it is: give settings to resolve_run instead")
        return train_run(data, resume=resume, init_from=init_from, progress_bar=progress_bar,
                         after_validation=after_validation)
    _show_progress_lines()
    overrides = settings_from_keywords(settings)
    if data is not None:
        overrides.setdefault("data", {})["path"] = str(data)
    run = resolve_run(config, overrides, resume=resume, init_from=init_from)
    return train_run(run, progress_bar=progress_bar, after_validation=after_validation)


def _show_progress_lines() -> None:
    """Outside the CLI (a notebook, a script) rnnlab's log lines would go nowhere: give its logger a
    handler to stderr unless the program configured logging itself."""
    import logging
    import sys

    logger = logging.getLogger("rnnlab")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


class LanguageModel:
    """A trained checkpoint, ready to complete and score text (see rnnlab.load)."""

    def __init__(self, checkpoint, device: str = "cpu"):
        from rnnlab.training.step import select_device

        self.checkpoint = checkpoint
        self.vocab = checkpoint.vocab
        self.device = select_device(device)
        self.model = checkpoint.build_model(self.device)
        self._steppers: dict = {}

    @property
    def config(self):
        """The run's config (data, model, train), as it was trained."""
        return self.checkpoint.config

    def __repr__(self) -> str:
        m = self.config.model
        return (f"LanguageModel({self.checkpoint.path.name}: {m.num_layers}x{m.hidden_size} {m.cell}, "
                f"{self.vocab.kind} vocabulary of {len(self.vocab):,})")

    def complete(self, prompt: str = "", length: int = 200, *, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, n: int = 1, **sampling) -> str | list[str]:
        """The continuation of `prompt` (not including it): `length` tokens (characters, for a char model),
        sampled with the checkpoint's own sampling defaults (windowed for scheme 1/2 models) under the
        settings given; a seed gives the same text again. With n > 1, a list of n continuations.
        Other keywords are fields of SampleConfig (argmax, beam_width, unknown, engine_weights, ...)."""
        from rnnlab.sampling import complete_texts, prompt_ids, sample_config_for

        given = {"length": length, "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed,
                 "num_samples": n, **sampling}
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(SampleConfig)})
        if unknown:
            raise ConfigError(f"complete() has no setting {', '.join(unknown)}")
        config = sample_config_for(self.config.train, given)
        texts = complete_texts(self._stepper(config), self.vocab, prompt_ids(self.vocab, prompt, config.unknown),
                               config)
        return texts if n > 1 else texts[0]

    def _stepper(self, config: SampleConfig):
        """The fastest stepper for these engine settings, built once."""
        from rnnlab.sampling import make_stepper

        key = (config.fast, config.engine_weights)
        if key not in self._steppers:
            self._steppers[key] = make_stepper(self.model, config)
        return self._steppers[key]

    def evaluate(self, text: str, **settings):
        """The EvalResult of `text` (nats and bits per token and per character, perplexity), scored as
        `rnnlab eval` scores a file (windowed for scheme 1/2 models); keywords are fields of EvalConfig."""
        import numpy as np

        from rnnlab.config import EvalConfig
        from rnnlab.evaluation import dynamic_evaluate, evaluate_tokens, evaluate_windowed
        from rnnlab.sampling import sampling_defaults

        defaults = {} if {"sampling", "dynamic", "burn_in"} & set(settings) else sampling_defaults(self.config.train)
        config = build_section(EvalConfig, {**defaults, **settings})
        ids, lengths = self.vocab.encode_with_lengths(text)
        tokens = np.asarray(ids, dtype=np.int64)
        if len(tokens) < 2:
            raise ConfigError("score() needs a text of at least two tokens")
        lengths = None if self.vocab.kind == "char" else np.asarray(lengths)  # (a character is one token)
        if config.sampling == "windowed":
            return evaluate_windowed(self.model, tokens, config.window, config.batch_size, self.device,
                                     char_lengths=lengths)
        if config.dynamic:
            return dynamic_evaluate(self.model, tokens, config.seq_length or 50, config.dynamic_lr,
                                    config.dynamic_decay, self.device, char_lengths=lengths)
        return evaluate_tokens(self.model, tokens, config.batch_size, config.seq_length or self.config.train.seq_length,
                               self.device, burn_in=config.burn_in, char_lengths=lengths)

    def score(self, text: str, **settings) -> float:
        """Bits per character of `text` under the model (lower: the model finds it more likely)."""
        return self.evaluate(text, **settings).bits_per_char


def load(path: str | Path, device: str = "cpu") -> LanguageModel:
    """A checkpoint file, or a checkpoint folder (its best checkpoint), as a LanguageModel."""
    from rnnlab.training.checkpoint import load_checkpoint

    return LanguageModel(load_checkpoint(path, weights_only=True), device)
