"""`rnnlab plot`: the loss curves of one or more runs, from their run logs, the way the blog compared them.

Each run is one colour: its validation loss as a solid line with points (every validation), its
training loss as a thin line of the same colour. The x axis is optimizer steps, epochs or wall time
(minutes); the y axis nats per token or bits per character. For word and BPE runs, bits per
character of the training loss use the validation split's tokens per character (the run log has
the validation's bits per character, not the training batches').
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rnnlab.errors import RnnlabError

X_LABELS = {"step": "optimizer step", "epoch": "epoch (passes over the training split)", "time": "wall time (minutes)"}
Y_LABELS = {"nats": "loss (nats per token)", "bits": "bits per character"}


@dataclass
class Curves:
    name: str
    train: list[tuple[float, float]]  # (x, loss)
    val: list[tuple[float, float]]


def read_curves(folder: Path, x: str, unit: str) -> Curves:
    log = Path(folder) / "log.jsonl"
    if not log.is_file():
        raise RnnlabError(f"{folder} holds no run log (log.jsonl): is it a checkpoint folder?")
    records = []
    for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise RnnlabError(f"{log}: line {number} is not JSON") from None
    vals = [r for r in records if r.get("event") == "val"]
    trains = [r for r in records if r.get("event") == "train"]
    if not vals and not trains:
        raise RnnlabError(f"{log} holds no training or validation records yet")
    per_char = _bits_per_nat_per_token(vals) if unit == "bits" else 1.0
    return Curves(Path(folder).name,
                  [(_x(r, x), r["train_loss"] * per_char) for r in trains if math.isfinite(r["train_loss"])],
                  [(_x(r, x), r["val_bits_per_char"] if unit == "bits" else r["val_loss"]) for r in vals])


def _x(record: dict, x: str) -> float:
    if x == "time":
        return record.get("elapsed", 0.0) / 60.0
    return record[x]


def _bits_per_nat_per_token(vals: list[dict]) -> float:
    """nats per token -> bits per character, from a validation that has both (1/ln 2 for char runs)."""
    for record in reversed(vals):
        if record.get("val_loss") and record.get("val_bits_per_char"):
            return record["val_bits_per_char"] / record["val_loss"]
    return 1.0 / math.log(2)


def plot_runs(folders: list[Path], out: Path, x: str = "step", unit: str = "bits") -> dict:
    """Draw the runs' curves into `out` (PNG); returns what was drawn (labels), for tests and logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [read_curves(folder, x, unit) for folder in folders]
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    for index, run in enumerate(curves):
        colour = f"C{index % 10}"
        if run.train:
            axes.plot(*zip(*run.train, strict=True), color=colour, linewidth=0.8, alpha=0.5)
        if run.val:
            axes.plot(*zip(*run.val, strict=True), color=colour, linewidth=2, marker="o", markersize=3,
                      label=run.name)
    axes.set_xlabel(X_LABELS[x])
    axes.set_ylabel(Y_LABELS[unit])
    axes.set_title("validation (thick, points) and training (thin) loss")
    axes.grid(alpha=0.3)
    axes.legend(title="run")
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return {"xlabel": X_LABELS[x], "ylabel": Y_LABELS[unit], "runs": [c.name for c in curves], "file": str(out)}
