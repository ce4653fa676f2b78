"""A run's checkpoint folder, made ready before the run starts: one run per folder, writable, and
without the leftovers of a run that was killed.

A new run refuses a folder that holds another run (its best checkpoint would be silently replaced
by a worse one) unless the user continues that run (`--resume`) or starts over in it
(`--overwrite`, which removes the other run's checkpoints, pointers and log). A folder that cannot
be written is refused before any work is done, and temporary files of an interrupted write
(`.NAME.HEX.tmp`, left by kill -9) are removed.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from rnnlab.errors import CheckpointError, ConfigError

log = logging.getLogger("rnnlab")

RUN_FILES = ("best.json", "last.json", "log.jsonl")
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")  # what atomic_write names its temporary files
CHECKPOINT = re.compile(r"^lm_.+\.safetensors$")  # what a run names its checkpoints


def prepare_folder(folder: Path, resuming: bool, overwrite: bool) -> None:
    """Ready `folder` for a run (see the module's docstring); one clear error line where it cannot be."""
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"cannot write checkpoints to {folder}: it is not a folder")
    if folder.is_dir():
        if not resuming:
            _claim(folder, overwrite)
        _remove_leftovers(folder)
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
                pass
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoints to {folder}: {exc.strerror or exc}") from None
        return
    # (created when the first step is taken: a run stopped before that leaves nothing behind)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write checkpoints to {folder}: {existing} is not a writable folder")


def _claim(folder: Path, overwrite: bool) -> None:
    used = [name for name in RUN_FILES if (folder / name).exists()] + \
        sorted(p.name for p in folder.iterdir() if CHECKPOINT.match(p.name))
    if not used:
        return
    if not overwrite:
        raise ConfigError(f"{folder} holds another run ({', '.join(used[:3])}{' ...' if len(used) > 3 else ''}): "
                          f"continue it with --resume {folder}, start over in it with --overwrite, or choose "
                          f"another --checkpoint-dir")
    for name in used:
        (folder / name).unlink(missing_ok=True)
    log.info("--overwrite: removed the earlier run in %s (%d files)", folder, len(used))


def _remove_leftovers(folder: Path) -> None:
    for path in folder.iterdir():
        if TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted checkpoint write", path.name)


def check_encodable_path(value: str, what: str) -> None:
    """Paths go into checkpoints as JSON text: a file name that is not UTF-8 (valid on Linux, read by
    Python as surrogate escapes) is refused up front, not at the first checkpoint after hours of work."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(value).decode("utf-8", "backslashreplace")
        raise ConfigError(f"{what} {shown} is not a UTF-8 path; rename it (or link it under a UTF-8 name)") from None
