"""Data-parallel training on torch.distributed: torchrun's environment, the process group, and what the
ranks agree on.

`torchrun --nproc-per-node N -m rnnlab train ...` starts N copies of the same command with RANK,
WORLD_SIZE and LOCAL_RANK set; each joins one process group (NCCL on GPUs, gloo on CPUs), trains its
own share of the batch's streams, and DistributedDataParallel averages the gradients. Everything a
rank decides on its own could differ between ranks (the clock, a signal that reached one of them), so
the loop agrees on it once per step (one small all-reduce: the mean loss, whether any rank must stop,
rank 0's clock); validation runs on rank 0 and its result is broadcast; rank 0 alone writes the run
folder, and gathers the other ranks' carried state and RNG state into each checkpoint.
A rank that dies makes the others' next collective fail (gloo and NCCL see the closed connection) or
time out (--dist-timeout minutes): either ends the job with one line, the last checkpoint kept.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rnnlab.errors import ConfigError, RnnlabError

log = logging.getLogger("rnnlab")


class RanksLost(RnnlabError):
    """A collective failed: another rank died (OOM, kill -9, a lost node) or stopped answering."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of one training job (one rank, alone, outside torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""
    gpu: int = 0  # (the CUDA device this rank trains on)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, per_rank: int) -> slice:
        """This rank's streams among the world x per_rank streams of a batch: a contiguous block."""
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    # --- what the ranks agree on ---------------------------------------------------------------

    def agree_on_step(self, loss: float, stop: bool, elapsed: float, device: torch.device) -> tuple[float, bool, float]:
        """(mean loss of the ranks, whether any rank must stop, rank 0's elapsed seconds)."""
        if not self.active:
            return loss, stop, elapsed
        values = torch.tensor([loss, float(stop), elapsed if self.main else 0.0], dtype=torch.float64,
                              device=device)
        with collective("a training step"):
            dist.all_reduce(values)
            mean, stops, clock = values.tolist()  # (where an asynchronous NCCL failure shows)
        return mean / self.world, stops > 0, clock

    def from_main(self, value):
        """Rank 0's value (any picklable object), on every rank."""
        if not self.active:
            return value
        box = [value if self.main else None]
        with collective("sharing rank 0's result"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def gathered(self, value) -> list:
        """Every rank's value (picklable), in rank order, on every rank."""
        if not self.active:
            return [value]
        values = [None] * self.world
        with collective("gathering the ranks' states"):
            dist.all_gather_object(values, value)
        return values

    def wait_for_all(self) -> None:
        if self.active:
            with collective("waiting for the other ranks"):
                dist.barrier()


@contextlib.contextmanager
def collective(what: str):
    """Collectives (here, or DistributedDataParallel's in the backward pass) whose failure — a dead or
    silent rank — is one line, not a traceback."""
    try:
        yield
    except RuntimeError as exc:
        if not is_collective_failure(exc):
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RanksLost(f"lost the other ranks while {what} (a rank died, ran out of memory or stopped answering): "
                        f"{detail[:300]}") from None


COLLECTIVE_MARKERS = ("gloo", "nccl", "connection reset", "connection closed", "timed out", "socket", "broken pipe")


def is_collective_failure(exc: BaseException) -> bool:
    """A failure of the process group (DistBackendError, DistNetworkError, gloo's and NCCL's own errors)."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in COLLECTIVE_MARKERS)


_current: Ranks | None = None


def current_ranks(device_type: str = "cpu", timeout_minutes: float = 30.0) -> Ranks:
    """This process's ranks: alone, or (under torchrun) its place in the process group, which the first
    call joins (NCCL for CUDA, gloo otherwise)."""
    global _current
    if _current is not None:
        return _current
    world = _environment_int("WORLD_SIZE", 1)
    if world <= 1:
        _current = Ranks()
        return _current
    rank, local_rank = _environment_int("RANK", None), _environment_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}; start distributed runs with torchrun")
    backend = "nccl" if device_type == "cuda" else "gloo"
    gpu = 0
    if device_type == "cuda":
        visible = torch.cuda.device_count()
        if local_rank >= visible and visible != 1:
            raise ConfigError(f"LOCAL_RANK {local_rank} has no GPU: this process sees {visible}; give torchrun "
                              f"--nproc-per-node at most that")
        gpu = local_rank if visible > 1 else 0  # (one visible GPU per process: a scheduler chose it for us)
        torch.cuda.set_device(gpu)
    if not dist.is_initialized():
        try:
            with collective(f"joining the process group ({backend})"):
                dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        except ValueError as exc:  # (WORLD_SIZE set but no MASTER_ADDR/PORT: not torchrun's environment)
            raise ConfigError(f"WORLD_SIZE={world} is set but the process group cannot start ({exc}); start "
                              f"distributed runs with torchrun, or unset WORLD_SIZE") from None
    _current = Ranks(rank, world, local_rank, backend, gpu)
    if not _current.main:  # (one voice: rank 0 logs, shows the progress and writes the run folder)
        logging.getLogger("rnnlab").setLevel(logging.ERROR)
    return _current


def leave_process_group() -> None:
    """At the end of a distributed run (so that a process leaves cleanly, and a test may join again). The
    caller drops its DDP wrapper first; the collection frees it before the group goes."""
    global _current
    if _current is not None and _current.active and dist.is_initialized():
        import gc

        gc.collect()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    _current = None


def _environment_int(name: str, default: int | None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ConfigError(f"{name} is not set; start distributed runs with torchrun")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def wrap_for_ranks(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """What the training step runs forward (its StepForward): DistributedDataParallel over the ranks
    (averaging the gradients in the backward pass), or as it is on one rank."""
    if not ranks.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # (an adaptive head leaves the clusters no target of a batch falls in without gradients)
    inner = getattr(model, "model", model)
    unused = getattr(getattr(inner, "config", None), "head", "softmax") == "adaptive"
    with collective("wrapping the model (rank 0's weights to every rank)"):
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=unused)
