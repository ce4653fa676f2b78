"""A sweep's search space: config fields, each with a distribution, read from TOML and checked up front.

A space file names fields as they appear in the config tree, one table each:

    [train.learning_rate]
    type = "float"          # int | float | categorical
    low = 3e-4
    high = 1e-2
    log = true              # sample on a log scale (int and float)

    [model.hidden_size]
    type = "categorical"
    choices = [128, 256, 512]

Every field of the run's config may be swept except paths and the settings a resume may change
(budgets, cadence, where things go: they do not change what a run learns). Each bound and choice is
checked against the base preset by building the config it gives, so a bad value is one error line
before any trial runs. `blog_space` is the blog's odyssey, sized to the machine.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable

from rnnlab.config import RunConfig, sections
from rnnlab.config.fields import coerce_value, load_toml, unwrap_optional
from rnnlab.errors import ConfigError

KINDS = ("int", "float", "categorical")
KEYS = {"int": {"type", "low", "high", "log", "step"}, "float": {"type", "low", "high", "log", "step"},
        "categorical": {"type", "choices"}}


@dataclass(frozen=True)
class Knob:
    """One swept field and its distribution."""
    name: str  # "section.field"
    kind: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def field(self) -> str:
        return self.name.split(".", 1)[1]

    def suggest(self, trial, grid: bool = False) -> Any:
        """The trial's value (Optuna's suggest_*). On a grid every knob is its list of grid values."""
        if grid:
            return trial.suggest_categorical(self.name, self.grid_values())
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self) -> list:
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if not self.step:
            raise ConfigError(f"space: the grid sampler needs the values of {self.name}: give it a step, or make it "
                              f"categorical")
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def extremes(self) -> list:
        """The values checked against the base preset before the sweep starts."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def sweepable_fields() -> dict[str, Any]:
    """'section.field' -> its type, for every field a sweep may vary."""
    found = {}
    for section, section_type in sections().items():
        hints = typing.get_type_hints(section_type)
        for f in dataclasses.fields(section_type):
            if not (f.metadata.get("is_path") or f.metadata.get("resumable")):
                found[f"{section}.{f.name}"] = unwrap_optional(hints[f.name])[0]
    return found


ConfigFor = Callable[[dict], RunConfig]  # {"section.field": value} -> the run config it gives (validated)


def load_space(source: str, config_for: ConfigFor, device: str) -> list[Knob]:
    """The knobs of a space file, or of the built-in 'blog' space, checked against the base preset."""
    raw = blog_space(config_for({}), device) if source == "blog" else load_toml(source)
    return parse_space(raw, config_for)


def parse_space(raw: dict, config_for: ConfigFor) -> list[Knob]:
    fields = sweepable_fields()
    specs = _flatten(raw)
    if not specs:
        raise ConfigError("space: it names no field to sweep; e.g. [train.learning_rate] with type, low and high")
    unknown = [name for name in specs if name not in fields]
    if unknown:
        raise ConfigError(f"space: {', '.join(unknown)} cannot be swept; the fields a sweep can vary are: "
                          f"{', '.join(sorted(fields))}")
    knobs = [_knob(name, spec, fields[name]) for name, spec in specs.items()]
    for knob in knobs:
        for value in knob.extremes():
            _check_value(config_for, knob, value)
    return knobs


def _flatten(raw: dict) -> dict[str, dict]:
    """{"train": {"learning_rate": {...}}} (TOML's [train.learning_rate]) -> {"train.learning_rate": {...}}."""
    specs = {}
    for section, fields in raw.items():
        if not isinstance(fields, dict) or not all(isinstance(v, dict) for v in fields.values()):
            raise ConfigError(f"space: [{section}] must hold one table per field, e.g. [{section}.FIELD] with "
                              f"type = \"float\", low and high")
        for name, spec in fields.items():
            specs[f"{section}.{name}"] = spec
    return specs


def _knob(name: str, spec: dict, field_type: type) -> Knob:
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"space: {name} needs type = \"int\", \"float\" or \"categorical\", got {kind!r}")
    extra = sorted(set(spec) - KEYS[kind])
    if extra:
        raise ConfigError(f"space: {name} ({kind}) takes {', '.join(sorted(KEYS[kind]))}; unknown: {', '.join(extra)}")
    if kind == "categorical":
        return _categorical(name, spec, field_type)
    if field_type is not (int if kind == "int" else float):
        raise ConfigError(f"space: {name} is {_type_name(field_type)}: it cannot take a {kind} distribution"
                          f"{'' if field_type is bool or field_type is str else ' (use type = ' + repr(_type_name(field_type)) + ')'}")
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), spec.get("log", False)
    number = int if kind == "int" else (int, float)
    for key, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if not isinstance(value, number) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"space: {name}.{key} must be {'an integer' if kind == 'int' else 'a number'}, "
                              f"got {value!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"space: {name}.log must be true or false, got {log!r}")
    if low > high:
        raise ConfigError(f"space: {name} has an empty range: low {low} > high {high}")
    if step is not None and step <= 0:
        raise ConfigError(f"space: {name}.step must be > 0, got {step}")
    if log and step is not None:
        raise ConfigError(f"space: {name} takes log or step, not both")
    if log and low <= 0:
        raise ConfigError(f"space: {name} is on a log scale, so low must be > 0, got {low}")
    if kind == "float":
        low, high, step = float(low), float(high), float(step) if step is not None else None
    return Knob(name, kind, low, high, log, step)


def _categorical(name: str, spec: dict, field_type: type) -> Knob:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"space: {name}.choices must be a non-empty list, got {choices!r}")
    values = tuple(coerce_value(value, field_type, f"space: {name}.choices") for value in choices)
    if len(set(values)) != len(values):
        raise ConfigError(f"space: {name}.choices lists a value twice: {list(values)}")
    return Knob(name, "categorical", choices=values)


def _type_name(field_type: type) -> str:
    return {int: "int", float: "float", bool: "a true/false setting", str: "a text setting"}.get(
        field_type, field_type.__name__)


def _check_value(config_for: ConfigFor, knob: Knob, value: Any) -> None:
    try:
        config_for({knob.name: value})
    except ConfigError as exc:
        raise ConfigError(f"space: {knob.name} = {value!r} gives an invalid run: {exc}") from None


def nested(values: dict[str, Any]) -> dict:
    """{"train.learning_rate": 0.002} -> {"train": {"learning_rate": 0.002}}: settings as the flags give them."""
    settings: dict = {}
    for name, value in values.items():
        section, field_name = name.split(".", 1)
        settings.setdefault(section, {})[field_name] = value
    return settings


def blog_space(base: RunConfig, device: str) -> dict:
    """The blog's six knobs (batch size, learning rate, width, dropout, depth, state resets) with ranges
    for this machine: widths and batches a CPU trains in minutes, larger ones on a GPU. State resets are
    multiples of the preset's sequence length (every sequence, every 5, every 50, never)."""
    gpu = device == "cuda"
    k2 = base.train.seq_length
    return {"train": {"batch_size": {"type": "categorical", "choices": [32, 64, 128, 256] if gpu else [8, 16, 32, 64]},
                      "learning_rate": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
                      "reset_every": {"type": "categorical", "choices": [0, k2, 5 * k2, 50 * k2]}},
            "model": {"hidden_size": {"type": "categorical", "choices": [256, 512, 1024] if gpu else [128, 256, 512]},
                      "dropout": {"type": "float", "low": 0.0, "high": 0.5},
                      "num_layers": {"type": "int", "low": 1, "high": 3}}}
