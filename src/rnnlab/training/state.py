"""A run's saved training state, checked before anything of it is used.

A checkpoint is untrusted input: a crafted one must not reach native code with wrong shapes (the
fused LSTM and Adam kernels read out of bounds on them) or name files outside its folder. So
everything `--resume` restores is compared with the run being resumed, built from the checkpoint's
config, before it is loaded: the carried state against the model's own initial state, the
optimizer's tensors against what the same optimizer keeps for each parameter, the RNG states against
this PyTorch's, every number against its range, and every saved file name must be a plain
checkpoint name inside the folder. A failure is one `CheckpointError` line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from rnnlab.errors import CheckpointError
from rnnlab.training.optim import WeightAverage

CHECKPOINT_SUFFIX = ".safetensors"
TENSOR_GROUPS = ("model.", "optimizer.", "carry.", "rng.", "raw.")
MAX_COUNT = 2 ** 53  # steps, tokens, epochs: beyond this a float cannot count them, so it is no real run


class StateError(ValueError):
    """A field of the saved training state is out of place (the caller names the file)."""


@dataclass
class Progress:
    """The trainer's own position, saved in every checkpoint."""
    step: int = 0
    first_loss: float | None = None
    best_val_loss: float = math.inf
    elapsed: float = 0.0
    tokens_seen: int = 0
    saved: list = field(default_factory=list)  # checkpoint file names, oldest first
    planned_steps: int = 0  # the schedule's horizon, fixed when the run starts
    recent_losses: list = field(default_factory=list)  # train losses since the last validation
    val_losses: list = field(default_factory=list)  # every validation so far (NT-ASGD's trigger, plateau)
    plateau_factor: float = 1.0
    evals_without_improvement: int = 0

    def to_dict(self) -> dict:
        raw = asdict(self)
        raw["best_val_loss"] = self.best_val_loss if math.isfinite(self.best_val_loss) else None
        return raw

    @classmethod
    def from_dict(cls, raw) -> "Progress":
        """The saved progress, every field checked (unknown or missing optional fields take their defaults)."""
        if not isinstance(raw, dict) or "step" not in raw:
            raise StateError("progress must be a JSON object with a step")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise StateError(f"progress has unknown field(s): {', '.join(unknown)}")
        best = raw.get("best_val_loss")
        first = raw.get("first_loss")
        return cls(
            step=_count(raw["step"], "progress.step"),
            first_loss=None if first is None else _finite(first, "progress.first_loss"),
            best_val_loss=math.inf if best is None else _finite(best, "progress.best_val_loss"),
            elapsed=_finite(raw.get("elapsed", 0.0), "progress.elapsed", minimum=0.0),
            tokens_seen=_count(raw.get("tokens_seen", 0), "progress.tokens_seen"),
            saved=checked_file_names(raw.get("saved", []), "progress.saved"),
            planned_steps=_count(raw.get("planned_steps", 0), "progress.planned_steps"),
            recent_losses=_finite_list(raw.get("recent_losses", []), "progress.recent_losses"),
            val_losses=_finite_list(raw.get("val_losses", []), "progress.val_losses"),
            plateau_factor=_finite(raw.get("plateau_factor", 1.0), "progress.plateau_factor", minimum=0.0),
            evals_without_improvement=_count(raw.get("evals_without_improvement", 0),
                                             "progress.evals_without_improvement"),
        )


def is_checkpoint_file_name(name) -> bool:
    """A plain *.safetensors file name: no folder part, not hidden (temporary files are), nothing that
    leaves the folder."""
    return (isinstance(name, str) and Path(name).name == name and "/" not in name and "\\" not in name
            and "\0" not in name and not name.startswith(".") and name.endswith(CHECKPOINT_SUFFIX)
            and len(name.encode("utf-8", "surrogatepass")) <= 255)


def checked_file_names(names, where: str) -> list[str]:
    if not isinstance(names, list):
        raise StateError(f"{where} must be a list of checkpoint file names")
    for name in names:
        if not is_checkpoint_file_name(name):
            raise StateError(f"{where} holds {name!r}, which is not a checkpoint file name inside the folder")
    return list(names)


# --- the whole saved state against the run being resumed --------------------------------------

def check_training_state(ckpt, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler,
                         batch_size: int, world: int = 1) -> dict:
    """Check everything a resume restores against this run; return the optimizer state to load.

    Raises CheckpointError (one line naming the file) on the first field that does not fit.
    """
    try:
        unknown = sorted(k for k in ckpt.tensors if not k.startswith(TENSOR_GROUPS))
        if unknown:
            raise StateError(f"unknown tensor(s) {', '.join(unknown[:3])}")
        trainer = ckpt.trainer
        for key in ("progress", "batcher"):
            if not isinstance(trainer.get(key), dict):
                raise StateError(f"trainer.{key} is missing")
        if ckpt.optimizer_meta is None or not ckpt.prefixed("rng.cpu."):
            raise StateError("no optimizer or RNG state")
        _check_carry(ckpt, model, batch_size)
        _check_averaging(ckpt, model)
        _check_rng(ckpt, world)
        _check_scaler(trainer.get("grad_scaler"), scaler)
        return checked_optimizer_state(ckpt.optimizer_meta, _tensors(ckpt, "optimizer."), optimizer)
    except StateError as exc:
        raise CheckpointError(f"{ckpt.path}: its training state does not fit this run: {exc}") from None


def _tensors(ckpt, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in ckpt.tensors.items() if k.startswith(prefix)}


def numbered(tensors: dict[str, torch.Tensor], prefix: str, where: str) -> list[torch.Tensor]:
    """Tensors named prefix.0, prefix.1, ...: exactly those, in order."""
    names = sorted(k for k in tensors if k.startswith(prefix))
    expected = [f"{prefix}{i}" for i in range(len(names))]
    if sorted(names) != sorted(expected):
        raise StateError(f"{where} tensors must be numbered {prefix}0..{len(names) - 1}; got {', '.join(names[:4])}")
    return [tensors[name] for name in expected]


def _check_carry(ckpt, model, batch_size: int) -> None:
    has_carry = ckpt.trainer.get("has_carry", False)
    if not isinstance(has_carry, bool):
        raise StateError("trainer.has_carry must be true or false")
    carried = numbered(ckpt.tensors, "carry.", "carried state")
    if not has_carry:
        return
    expected = model.init_state(batch_size)
    if len(carried) != len(expected):
        raise StateError(f"the carried state has {len(carried)} tensors; this model carries {len(expected)}")
    for i, (saved, reference) in enumerate(zip(carried, expected, strict=True)):
        _same_tensor_shape(saved, reference.shape, torch.float32, f"carry.{i}")


def _check_averaging(ckpt, model) -> None:
    averaging = ckpt.trainer.get("averaging")
    raw = numbered(ckpt.tensors, "raw.", "raw weights")
    if averaging is None:
        if raw:
            raise StateError("raw.* weights without NT-ASGD averaging")
        return
    if not isinstance(averaging, dict) or set(averaging) != {"count"}:
        raise StateError("trainer.averaging must be {\"count\": N}")
    _count(averaging["count"], "trainer.averaging.count")
    params = list(model.parameters())
    if raw and len(raw) != len(params):
        raise StateError(f"{len(raw)} raw weights for a model of {len(params)} parameters")
    for i, (saved, param) in enumerate(zip(raw, params, strict=False)):
        _same_tensor_shape(saved, param.shape, param.dtype, f"raw.{i}")


def _check_rng(ckpt, world: int = 1) -> None:
    """A CPU RNG state per rank (one on a single process), each the shape of this PyTorch's."""
    cpu = numbered(ckpt.tensors, "rng.cpu.", "CPU RNG")
    reference = torch.get_rng_state()
    if len(cpu) != world:
        raise StateError(f"{world} CPU RNG state{'s are' if world != 1 else ' is'} expected (one per rank), "
                         f"got {len(cpu)}")
    for i, state in enumerate(cpu):
        _same_tensor_shape(state, reference.shape, reference.dtype, f"rng.cpu.{i}", finite=False)
    for i, state in enumerate(numbered(ckpt.tensors, "rng.cuda.", "CUDA RNG")):
        if state.dtype != torch.uint8 or state.dim() != 1:
            raise StateError(f"rng.cuda.{i} must be a 1-D uint8 tensor")
        if torch.cuda.is_available() and state.shape != torch.cuda.get_rng_state().shape:
            raise StateError(f"rng.cuda.{i} has shape {tuple(state.shape)}, not this GPU's RNG state")


def _check_scaler(saved, scaler) -> None:
    reference = scaler.state_dict()
    if saved in (None, {}) and not reference:
        return
    if not isinstance(saved, dict) or set(saved) != set(reference):
        raise StateError(f"trainer.grad_scaler must hold {sorted(reference) or 'nothing'} for this precision")
    for key, value in saved.items():
        _finite(value, f"trainer.grad_scaler.{key}", minimum=0.0)


def checked_optimizer_state(meta, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> dict:
    """The saved optimizer state, checked against what this optimizer keeps for each of its parameters
    (learned from a throwaway twin that takes one step on tiny stand-in parameters, so no list of
    optimizers is kept here). The hyperparameters come from this run's optimizer; only the saved
    learning rate is taken over."""
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict) \
            or not isinstance(meta.get("param_groups"), list):
        raise StateError("optimizer metadata must hold state and param_groups")
    fresh = optimizer.state_dict()
    groups = _checked_groups(meta["param_groups"], fresh["param_groups"])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    layout = _state_layout(optimizer)
    state: dict[int, dict] = {}
    for key, plain in meta["state"].items():
        param_id = _param_id(key, len(params))
        if not isinstance(plain, dict):
            raise StateError(f"optimizer state {key} must be an object")
        state[param_id] = {name: _plain_value(value, f"optimizer.{key}.{name}") for name, value in plain.items()}
    for key, value in tensors.items():
        param_id_text, _, name = key.partition(".")
        state.setdefault(_param_id(param_id_text, len(params)), {})[name] = value
    for param_id, values in state.items():
        _check_param_state(param_id, values, params[param_id], layout)
    return {"state": state, "param_groups": groups}


def _param_id(text, count: int) -> int:
    if not isinstance(text, str) or not text.isdigit() or int(text) >= count:
        raise StateError(f"optimizer state names parameter {text!r}; the model has {count}")
    return int(text)


def _plain_value(value, where: str):
    if value is None or isinstance(value, bool):
        return value
    return _finite(value, where)


def _checked_groups(saved: list, fresh: list) -> list[dict]:
    if len(saved) != len(fresh):
        raise StateError(f"{len(saved)} optimizer parameter groups; this optimizer has {len(fresh)}")
    groups = []
    for i, (old, new) in enumerate(zip(saved, fresh, strict=True)):
        if not isinstance(old, dict) or old.get("params") != new["params"]:
            raise StateError(f"optimizer parameter group {i} does not list this model's parameters")
        differing = sorted(k for k in set(old) & set(new) - {"params", "lr", "initial_lr"}
                           if _normalized(old[k]) != _normalized(new[k]))
        if differing:
            raise StateError(f"optimizer setting(s) {', '.join(differing)} differ from the run's config")
        groups.append({**new, "lr": _finite(old.get("lr", new["lr"]), f"param_groups.{i}.lr", minimum=0.0)})
    return groups


def _normalized(value):
    return list(value) if isinstance(value, tuple) else value


def _state_layout(optimizer: torch.optim.Optimizer) -> dict[str, tuple[bool, tuple, torch.dtype] | None]:
    """name -> (shaped like its parameter?, shape if not, dtype), or None for a non-tensor value, of what
    this optimizer keeps per parameter."""
    device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    stand_in = torch.nn.Parameter(torch.zeros(3, device=device))
    defaults = {k: v for k, v in optimizer.defaults.items() if k != "params"}
    twin = type(optimizer)([stand_in], **defaults)
    stand_in.grad = torch.ones_like(stand_in)
    twin.step()
    layout = {}
    for name, value in twin.state[stand_in].items():
        if isinstance(value, torch.Tensor):
            like = tuple(value.shape) == tuple(stand_in.shape)
            layout[name] = (like, tuple(value.shape), value.dtype)
        else:
            layout[name] = None
    return layout


def _check_param_state(param_id: int, values: dict, param: torch.Tensor, layout: dict) -> None:
    if set(values) != set(layout):
        raise StateError(f"optimizer state of parameter {param_id} holds {sorted(values)}; this optimizer keeps "
                         f"{sorted(layout)}")
    for name, value in values.items():
        where = f"optimizer.{param_id}.{name}"
        if layout[name] is None:
            if isinstance(value, torch.Tensor):
                raise StateError(f"{where} must not be a tensor")
            continue
        like, shape, dtype = layout[name]
        if not isinstance(value, torch.Tensor):
            raise StateError(f"{where} must be a tensor")
        _same_tensor_shape(value, param.shape if like else shape, param.dtype if like else dtype, where)


def _same_tensor_shape(tensor: torch.Tensor, shape, dtype: torch.dtype, where: str, finite: bool = True) -> None:
    if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
        raise StateError(f"{where} is {str(tensor.dtype).removeprefix('torch.')} {tuple(tensor.shape)}; this run "
                         f"needs {str(dtype).removeprefix('torch.')} {tuple(shape)}")
    if finite and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise StateError(f"{where} holds NaN or inf")


# --- numbers ------------------------------------------------------------------------------------

def _count(value, where: str, maximum: int = MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise StateError(f"{where} must be an integer in [0, {maximum}], got {value!r}")
    return value


def _finite(value, where: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (minimum is not None and value < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise StateError(f"{where} must be a finite number{bound}, got {value!r}")
    return float(value) if isinstance(value, float) else value


def _finite_list(values, where: str) -> list:
    if not isinstance(values, list):
        raise StateError(f"{where} must be a list of numbers")
    return [_finite(v, where) for v in values]


def restore_weight_average(ckpt, model) -> WeightAverage | None:
    """NT-ASGD's average (checked by check_training_state): the saved model weights are the average;
    the raw weights, when saved, go back into the model."""
    averaging = ckpt.trainer.get("averaging")
    if not averaging:
        return None
    raw = numbered(ckpt.tensors, "raw.", "raw weights")
    params = list(model.parameters())
    if not raw:  # averaging switched on at this very validation: nothing averaged yet
        return WeightAverage(params, averaging["count"])
    average = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, saved in zip(params, raw, strict=True):
            p.copy_(saved)
    return WeightAverage(params, averaging["count"], average)


def restore_training_state(ckpt, model, step, batcher, device, ranks=None) -> tuple[Progress, tuple | None]:
    """Put a checkpoint's run back in place — weights, optimizer, grad scaler, NT-ASGD average,
    batcher position, RNG, carried state — every part checked against this run before it is used.
    Under torchrun (`ranks`), this rank's RNG states and its streams of the carried state (a
    checkpoint holds every rank's). Returns the progress and the carried state."""
    rank, world = (ranks.rank, ranks.world) if ranks is not None else (0, 1)
    if ckpt.optimizer_meta is None or "progress" not in ckpt.trainer:
        raise CheckpointError(f"{ckpt.path} holds no training state to resume; use --init-from to start a new run "
                              f"from its weights")
    ckpt.load_weights_into(model)
    optimizer_state = check_training_state(ckpt, model, step.optimizer, step.scaler, batcher.batch_size, world)
    try:
        progress = Progress.from_dict(ckpt.trainer["progress"])
        batcher.load_state_dict(ckpt.trainer["batcher"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path}: its training state is corrupt ({exc})") from None
    step.optimizer.load_state_dict(optimizer_state)
    if ckpt.trainer.get("grad_scaler"):
        step.scaler.load_state_dict(ckpt.trainer["grad_scaler"])
    step.averager = restore_weight_average(ckpt, model)
    torch.set_rng_state(ckpt.tensors[f"rng.cpu.{rank}"])
    cuda_states = ckpt.prefixed("rng.cuda.")
    if cuda_states and torch.cuda.is_available():
        if world > 1:  # (a rank per GPU: each saved its own device's state)
            if len(cuda_states) == world:
                torch.cuda.set_rng_state(cuda_states[rank], device)
        else:
            torch.cuda.set_rng_state_all(cuda_states[:torch.cuda.device_count()])
    carried = None
    if ckpt.trainer.get("has_carry"):
        carried = tuple(t[:, batcher.rows].to(device) for t in ckpt.prefixed("carry."))
    return progress, carried
