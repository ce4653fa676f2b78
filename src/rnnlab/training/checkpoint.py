"""The one door between disk and model: save, load, migrate, name and prune checkpoints.

A checkpoint is a single safetensors file. Its tensors are the model weights (`model.*`), the
optimizer's tensors (`optimizer.*`), the carried hidden state (`carry.*`) and RNG states
(`rng.*`); its header metadata holds one JSON document with the run config, the vocabulary, metrics,
the optimizer's non-tensor state and the trainer/batcher position. Nothing is ever unpickled, and
tensors are always loaded onto the CPU first, so a GPU-trained checkpoint samples on a CPU as is.

Files are written to a temporary name in the same folder, flushed to disk and renamed, so a
checkpoint under its final name is always complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rnnlab.config import RunConfig
from rnnlab.data.vocab import Vocab, vocab_from_dict
from rnnlab.errors import CheckpointError, RnnlabError
from rnnlab.models.lm import RecurrentLM
from rnnlab.models.size import meta_model
from rnnlab.training.state import is_checkpoint_file_name, numbered

FORMAT_VERSION = 2  # 2: a content checksum of the tensors
METADATA_KEY = "rnnlab"
SUFFIX = ".safetensors"
POINTERS = ("best", "last")



def _add_checksum_field(document: dict) -> dict:
    """Format 1 had no checksum: such a file loads unverified."""
    return {**document, "format_version": 2, "checksum": None}


# format_version -> function upgrading a metadata document from that version to the next one.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _add_checksum_field}


@dataclass
class Checkpoint:
    path: Path
    config: RunConfig
    vocab: Vocab
    metrics: dict
    trainer: dict
    model_state: dict[str, torch.Tensor]
    optimizer_meta: dict | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # optimizer/carry/rng tensors
    format_version: int = FORMAT_VERSION  # the file's own (older files are migrated on load)
    verified: bool = True  # its checksum was checked (format 1 files have none)

    def summary(self) -> dict:
        """What the checkpoint holds, for `rnnlab inspect`."""
        model, progress = self.config.model, self.trainer.get("progress", {})
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in self.model_state.values()})
        return {"path": str(self.path), "format_version": self.format_version, "checksum_verified": self.verified,
                "cell": model.cell, "layers": model.num_layers, "hidden_size": model.hidden_size,
                "embedding_size": model.embedding_size, "head": model.head, "tie_weights": model.tie_weights,
                "parameters": sum(t.numel() for t in self.model_state.values() if t.is_floating_point()),
                "weights_dtype": ", ".join(dtypes), "training_precision": self.config.train.precision,
                "tokenizer": self.vocab.kind, "vocab_size": len(self.vocab),
                "step": self.metrics.get("step", progress.get("step")), "epoch": self.metrics.get("epoch"),
                "val_loss": self.metrics.get("val_loss"), "val_bits_per_char": self.metrics.get("val_bits_per_char"),
                "best_val_loss": self.metrics.get("best_val_loss"), "corpus": self.metrics.get("corpus"),
                "corpus_digest": self.metrics.get("corpus_digest"),
                "resumable": self.optimizer_meta is not None and "progress" in self.trainer,
                "config": self.config.to_dict()}

    def build_model(self, device: str | torch.device = "cpu") -> RecurrentLM:
        model = RecurrentLM(self.config.model, len(self.vocab), self.config.train.state == "learned")
        self.load_weights_into(model)
        return model.to(device).eval()

    def load_weights_into(self, model: torch.nn.Module) -> None:
        """The saved weights into a model built from this checkpoint's config: every name, shape and
        kind of number must fit (half-precision weights load into an fp32 model)."""
        expected = model.state_dict()
        misfit = [k for k, v in self.model_state.items()
                  if k in expected and v.is_floating_point() != expected[k].is_floating_point()]
        if misfit:
            raise CheckpointError(f"{self.path}: weights do not fit the saved config ({misfit[0]} is "
                                  f"{str(self.model_state[misfit[0]].dtype).removeprefix('torch.')})")
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{self.path}: weights do not fit the saved config ({first})") from None

    def optimizer_state(self) -> dict | None:
        if self.optimizer_meta is None:
            return None
        return _unflatten_optimizer(self.optimizer_meta, self.tensors)

    def prefixed(self, prefix: str) -> list[torch.Tensor]:
        """The tensors named prefix0, prefix1, ... in order (state.numbered: exactly those, or an error)."""
        return numbered(self.tensors, prefix, prefix.rstrip("."))


def checkpoint_name(cell: str, epoch: float, val_loss: float) -> str:
    """char-rnn's naming: lm_lstm_epoch0.95_2.0681 (epoch reached, then the validation loss)."""
    return f"lm_{cell}_epoch{epoch:.2f}_{val_loss:.4f}{SUFFIX}"


def save_checkpoint(path: Path, model: torch.nn.Module, config: RunConfig, vocab: Vocab, *,
                    metrics: dict, trainer: dict | None = None, optimizer: torch.optim.Optimizer | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    document: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "vocab": vocab.to_dict(),
        "metrics": metrics,
        "trainer": trainer or {},
        "optimizer": None,
    }
    if optimizer is not None:
        document["optimizer"], optimizer_tensors = _flatten_optimizer(optimizer.state_dict())
        tensors.update(optimizer_tensors)
    tensors.update(extra_tensors or {})
    # clone: parameters may be views of one shared buffer (the CPU engine's), which safetensors refuses
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    document["checksum"] = content_checksums(tensors)
    metadata = {METADATA_KEY: json.dumps(document, ensure_ascii=False)}
    try:
        atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))
    except SafetensorError as exc:  # (a full disk, a vanished folder: an OS error wrapped by the Rust writer)
        raise _as_os_error(exc, Path(path)) from None
    return Path(path)


def _as_os_error(exc: SafetensorError, path: Path) -> OSError:
    code = re.search(r"code: (\d+)", str(exc))
    if code:
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path))
    return OSError(errno.EIO, f"cannot write the checkpoint ({exc})", str(path))


def content_checksums(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """blake2b of the weights (`model`) and of the rest (`state`): names, dtypes, shapes and bytes.
    A flipped bit on disk is caught; the weights alone are checked when only they are loaded."""
    return {"model": _digest({k: v for k, v in tensors.items() if k.startswith("model.")}),
            "state": _digest({k: v for k, v in tensors.items() if not k.startswith("model.")})}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode("utf-8"))
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates its files 0600: give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (os.umask would set it, racing
    other threads that create files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def write_json_atomic(path: Path, document: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(document, indent=2), encoding="utf-8"))


def resolve_checkpoint(path: str | os.PathLike, prefer: str = "best") -> Path:
    """A checkpoint file, or a checkpoint folder (then its `best`, or `last`, pointer)."""
    resolved = Path(path).expanduser()
    if resolved.is_dir():
        pointer = resolved / f"{prefer}.json"
        if not pointer.is_file():
            raise CheckpointError(f"no checkpoint in {resolved} (no {prefer}.json pointer)")
        try:
            name = json.loads(pointer.read_text(encoding="utf-8"))["file"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise CheckpointError(f"{pointer} is corrupt") from None
        if not is_checkpoint_file_name(name):  # a pointer names a file of its own folder, nothing else
            raise CheckpointError(f"{pointer} is corrupt: {name!r} is not a checkpoint file name inside the folder")
        target = resolved / name
        if not target.is_file():
            raise CheckpointError(f"{pointer} points to a missing checkpoint: {target.name}")
        return target
    if not resolved.exists():
        raise CheckpointError(f"checkpoint not found: {resolved}")
    if not resolved.is_file():  # a FIFO or a device would block or never end
        raise CheckpointError(f"not a checkpoint file: {resolved}")
    return resolved


def load_checkpoint(path: str | os.PathLike, prefer: str = "best", weights_only: bool = False) -> Checkpoint:
    """Read a checkpoint (file or folder), upgrading its metadata to the current format."""
    file = resolve_checkpoint(path, prefer)
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            document = _parse_document(file, header)
            written_as = document["format_version"]
            keys = [k for k in handle.keys() if not weights_only or k.startswith("model.")]
            tensors = {k: handle.get_tensor(k) for k in keys}
    except SafetensorError as exc:
        raise CheckpointError(f"{file} is not a readable checkpoint (corrupt or truncated: {exc})") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {file}: {exc.strerror or exc}") from None
    document = migrate(document, file)
    try:
        if not isinstance(document.get("config"), dict) or not isinstance(document.get("vocab"), dict):
            raise CheckpointError("config and vocabulary must be JSON objects")
        config = RunConfig.from_dict(document["config"])
        config.validate()  # a hand-edited or damaged config must fail here, in one line, not deep in a model
        vocab = vocab_from_dict(document["vocab"])
    except (KeyError, TypeError, ValueError, AttributeError, RnnlabError) as exc:
        raise CheckpointError(f"{file} has an invalid config or vocabulary: {exc}") from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if not model_state:
        raise CheckpointError(f"{file} holds no model weights")
    broken = [k for k, v in model_state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(f"{file} holds non-finite (NaN or inf) weights: {', '.join(broken[:3])}")
    _check_shapes_fit_config(file, config, vocab, model_state)
    rest = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    metrics, trainer = _object(document, "metrics", file), _object(document, "trainer", file)
    _verify_checksums(file, document.get("checksum"), written_as, model_state, rest, weights_only)
    return Checkpoint(file, config, vocab, metrics, trainer, model_state, document.get("optimizer"), rest,
                      written_as, document.get("checksum") is not None)


def _check_shapes_fit_config(file: Path, config: RunConfig, vocab, model_state: dict) -> None:
    """The saved weights against the model the saved config builds, compared on the meta device, so a
    hand-edited size (hidden_size = 10^7) is one error line, not an allocation of the config's model."""
    expected = {k: tuple(v.shape) for k, v in
                meta_model(config.model, len(vocab), config.train.state == "learned").state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in model_state.items()}
    for name in sorted(set(expected) | set(saved)):
        if expected.get(name) != saved.get(name):
            raise CheckpointError(f"{file}: weights do not fit the saved config ({name}: saved "
                                  f"{saved.get(name, 'nothing')}, the config builds {expected.get(name, 'nothing')})")


def _verify_checksums(file: Path, saved, written_as: int, model_state: dict, rest: dict, weights_only: bool) -> None:
    if saved is None and written_as < 2:  # written before checksums existed
        return
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), str) for k in ("model", "state")):
        raise CheckpointError(f"{file} has no valid checksum (a damaged or hand-made checkpoint)")
    parts = [("model", {f"model.{k}": v for k, v in model_state.items()})]
    if not weights_only:
        parts.append(("state", rest))
    for part, tensors in parts:
        if _digest(tensors) != saved[part]:
            what = "weights" if part == "model" else "training state"
            raise CheckpointError(f"{file}: its {what} do not match the checksum saved with them (the file is "
                                  f"damaged: a changed byte on disk or in transfer)")


def _object(document: dict, key: str, file: Path) -> dict:
    value = document.get(key) or {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{file} has corrupt metadata: {key} must be a JSON object")
    return value


def _parse_document(file: Path, header: dict) -> dict:
    if METADATA_KEY not in header:
        raise CheckpointError(f"{file} is a safetensors file but not an rnnlab checkpoint")
    try:
        document = json.loads(header[METADATA_KEY])
    except ValueError:
        raise CheckpointError(f"{file} has corrupt metadata") from None
    if not isinstance(document, dict) or "format_version" not in document:
        raise CheckpointError(f"{file} has no format_version")
    version = document["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise CheckpointError(f"{file} has an invalid format_version: {version!r}")
    return document


def migrate(document: dict, file: Path) -> dict:
    version = document["format_version"]
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{file} was written by a newer rnnlab (format {version}; this rnnlab reads up to "
                              f"{FORMAT_VERSION}): upgrade rnnlab to load it")
    while version < FORMAT_VERSION:
        if version not in MIGRATIONS:
            raise CheckpointError(f"{file} uses checkpoint format {version}, which this rnnlab cannot upgrade")
        document = MIGRATIONS[version](document)
        version = document["format_version"]
    return document


# --- optimizer state <-> (JSON, tensors) ------------------------------------------------------

def _flatten_optimizer(state_dict: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict] = {}
    for param_id, values in state_dict["state"].items():
        plain_state[str(param_id)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{name}"] = value
            else:
                plain_state[str(param_id)][name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return {"param_groups": groups, "state": plain_state}, tensors


def _unflatten_optimizer(meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[int, dict] = {int(pid): dict(values) for pid, values in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# --- the checkpoint folder: best/last pointers and pruning ----------------------------------

def update_pointer(folder: Path, which: str, file: Path, val_loss: float | None) -> None:
    write_json_atomic(folder / f"{which}.json", {"file": file.name, "val_loss": val_loss})


def prune_checkpoints(folder: Path, history: list[str], keep_last: int) -> list[str]:
    """Delete all but the newest `keep_last` checkpoints of this run, never the best one."""
    protected = {(read_pointer(folder, which) or {}).get("file") for which in POINTERS}
    keep = set(history[-keep_last:]) | protected
    for name in history:
        if name not in keep and is_checkpoint_file_name(name):  # (checked on load too: never leave the folder)
            (folder / name).unlink(missing_ok=True)
    return [name for name in history if name in keep]


def read_pointer(folder: Path, which: str) -> dict | None:
    """The `best` or `last` pointer of a checkpoint folder: {"file": name, "val_loss": value}."""
    try:
        pointer = json.loads((folder / f"{which}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return pointer if isinstance(pointer, dict) and is_checkpoint_file_name(pointer.get("file")) else None
