"""How a setting is declared once and becomes a CLI flag, a TOML key and a checked value.

A config dataclass field made with `setting()` carries its help text, choices, flag name and the
policies that concern it (see setting); `add_flags` turns a dataclass into argparse flags,
`section_from_dict` reads a TOML table or a checkpoint's JSON into it (types checked), and
`build_section` builds and validates a section from the flags given.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Callable

from rnnlab.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def setting(default: Any, help: str, choices: tuple | None = None, flag: str | None = None,
            aliases: tuple[str, ...] = (), *, resumable: bool = False, shapes_weights: bool = False,
            is_path: bool = False, needs: tuple[Callable[[Any], bool], str] | None = None,
            required: bool = False) -> Any:
    """A dataclass field that carries its CLI help text (and optional choices, flag name, aliases) and
    the policies that concern it:
    resumable: `--resume` may give it again (stop limits, cadence, where things go): the run stays the same;
    shapes_weights: it shapes the weights, so a run started `--init-from` a checkpoint keeps the checkpoint's;
    is_path: it names a file or folder, stored absolute so a run resumes from anywhere;
    needs: (is it used by this config?, what it needs), so a setting given without effect is reported;
    required: its command-line flag must be given."""
    metadata = {"help": help, "choices": choices, "flag": flag, "aliases": aliases, "resumable": resumable,
                "shapes_weights": shapes_weights, "is_path": is_path, "needs": needs, "required": required}
    if isinstance(default, list):  # (a repeatable flag: each config gets its own list)
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def marked(section_type: type, policy: str) -> tuple[str, ...]:
    """The names of a config section's fields that carry `policy` (see setting())."""
    return tuple(f.name for f in dataclasses.fields(section_type) if f.metadata.get(policy))


def section_from_dict(section_type: type, raw: dict, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table of settings")
    hints = typing.get_type_hints(section_type)
    known = {f.name for f in dataclasses.fields(section_type)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{where}]: {', '.join(unknown)}")
    values = {key: coerce_value(value, hints[key], f"{where}.{key}") for key, value in raw.items()}
    return section_type(**values)


def coerce_value(value: Any, annotation: Any, where: str) -> Any:
    """Check a TOML/JSON value against a field's type (ints are accepted where floats are)."""
    base, optional = unwrap_optional(annotation)
    if value is None and optional:
        return None
    if typing.get_origin(base) is list:  # list[str]: a repeatable flag, or a TOML array
        item = typing.get_args(base)[0]
        if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
            raise ConfigError(f"{where} must be a list of {item.__name__}, got {value!r}")
        return list(value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if base is int and isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(f"{where} must be of type {base.__name__}, got {value!r}")
    return value


def unwrap_optional(annotation: Any) -> tuple[type, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


PRESETS = Path(__file__).resolve().parent.parent / "presets"  # shipped in the package


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def preset_path(name_or_path: str | Path) -> Path:
    """A preset file: the path given, or, for a bare name (char_rnn_classic, or char_rnn_classic.toml)
    that is no file here, the preset of that name shipped with rnnlab."""
    path = Path(name_or_path)
    if path.exists() or path.parent != Path("."):
        return path
    shipped = PRESETS / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    return shipped if shipped.is_file() else path


def load_toml(path: str | Path) -> dict:
    path = preset_path(path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (the presets shipped with rnnlab: "
                          f"{', '.join(preset_names())})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def merge(base: dict, override: dict) -> dict:
    """Deep-merge two nested dicts of settings; values in `override` win."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- CLI flags derived from the dataclasses -------------------------------------------------

def add_flags(parser: argparse.ArgumentParser, section: str, section_type: type,
              skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of `section_type`; parsed values land in `section.field` (None = unset)."""
    group = parser.add_argument_group(f"{section} settings")
    hints = typing.get_type_hints(section_type)
    for f in dataclasses.fields(section_type):
        if f.name in skip:
            continue
        base, _ = unwrap_optional(hints[f.name])
        flag = "--" + (f.metadata.get("flag") or f.name).replace("_", "-")
        help_text = f.metadata.get("help", "")
        if "default" not in help_text and not f.metadata.get("required") and f.default is not dataclasses.MISSING:
            help_text += f" (default: {f.default})"
        kwargs: dict[str, Any] = {"dest": f"{section}.{f.name}", "default": None, "help": help_text,
                                  "required": bool(f.metadata.get("required"))}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is list:  # given once per item
            kwargs.update(action="append", type=typing.get_args(base)[0], metavar=f.name.upper())
        elif f.metadata.get("choices"):
            kwargs.update(type=base, choices=f.metadata["choices"])
        else:
            kwargs.update(type=base, metavar=f.name.upper())
        group.add_argument(flag, *f.metadata.get("aliases", ()), **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The nested dict of settings that were given on the command line."""
    nested: dict = {}
    for dest, value in vars(args).items():
        if "." not in dest or value is None:
            continue
        section, name = dest.split(".", 1)
        nested.setdefault(section, {})[name] = value
    return nested


def unused_section_settings(config: Any, given) -> list[str]:
    """unused_settings for a section that stands alone (SampleConfig): its `needs` read the section."""
    messages = []
    for f in dataclasses.fields(config):
        if f.metadata.get("needs") and f.name in given and not f.metadata["needs"][0](config):
            flag = "--" + (f.metadata.get("flag") or f.name).replace("_", "-")
            messages.append(f"{flag} has no effect here: it needs {f.metadata['needs'][1]}")
    return messages


def build_section(section_type: type, overrides: dict) -> Any:
    """One config section from the settings given (flags); validated, and, where the section says which
    given settings would do nothing (check_given), those refused."""
    config = section_from_dict(section_type, overrides, section_type.__name__)
    config.validate()
    if hasattr(config, "check_given"):
        config.check_given(set(overrides))
    return config


def check_choices(config: Any) -> None:
    """Values of fields with fixed choices, wherever they came from (flags, TOML, a checkpoint)."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            allowed = ", ".join(map(str, choices))
            raise ConfigError(f"{f.name} must be one of {allowed}; got {getattr(config, f.name)!r}")


def check_seed(seed: int) -> None:
    if not 0 <= seed < 2 ** 63:
        raise ConfigError(f"seed must be in [0, 2^63), got {seed}")


def positive(config: Any, *names: str) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(config, name)}")


def positive_float(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be > 0, got {value}")


def non_negative(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not value >= 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
