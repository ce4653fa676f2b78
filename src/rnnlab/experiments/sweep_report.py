"""What a sweep leaves in its folder: trials.csv, report.md, best.toml, best/ and the plots.

Values are validation bits per character (the best validation of each trial), with the blog's unit
next to them: 2^H per character, H in nats. Curves come from each trial's own run log; the study's
records (kept in the database) stand in for trials whose folder is on another machine.

curves.png: for each swept field, every trial's validation bits/char against epoch and against
wall time, coloured by the value that trial had (the blog's figures); history.png: each trial's
value and the best so far; importances.png: how much each field explains (Optuna's PED-ANOVA);
parallel.png (two fields or more) and slice.png: value against each field's setting.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from rnnlab.config import load_toml, merge
from rnnlab.experiments.space import Knob, nested
from rnnlab.experiments.sweep import Sweep, live_trials, read_log
from rnnlab.training.checkpoint import atomic_write, read_pointer
from rnnlab.training.run import absolute_paths

FINISHED = ("complete", "pruned", "diverged", "error")


@dataclass
class TrialRow:
    number: int
    outcome: str  # complete, pruned, diverged, error, running, waiting, stopped
    bits_per_char: float | None
    params: dict
    minutes: float = 0.0
    epoch: float = 0.0
    steps: int = 0
    validations: int = 0
    folder: str = ""
    message: str = ""
    curve: list[dict] = field(default_factory=list)  # the run log's validations

    @property
    def blog_perplexity(self) -> float | None:
        """2^H, H in nats per character."""
        return 2.0 ** (self.bits_per_char * math.log(2)) if self.bits_per_char is not None else None


def trial_rows(study, out: Path) -> list[TrialRow]:
    """The study's trials (retried copies in place of what they stand in for), best first; their folders
    are under `out`, this machine's --out."""
    rows = []
    for trial in live_trials(study.get_trials(deepcopy=False)):
        attrs = trial.user_attrs
        outcome = attrs.get("outcome") or trial.state.name.lower()
        if trial.state.name == "RUNNING":
            outcome = "running"
        folder = str(Path(out) / attrs["folder"]) if attrs.get("folder") else ""
        curve = [r for r in read_log(Path(folder)) if r.get("event") == "val"] if folder else []
        rows.append(TrialRow(trial.number, outcome, attrs.get("bits_per_char"), dict(trial.params),
                             attrs.get("minutes", 0.0), attrs.get("epoch", 0.0), attrs.get("steps", 0),
                             attrs.get("validations", 0), folder, attrs.get("message", ""), curve))
    rows.sort(key=lambda r: (r.outcome != "complete", r.bits_per_char if r.bits_per_char is not None else math.inf))
    return rows


def write_outputs(sweep: Sweep, study) -> dict[str, Path]:
    """Every output the sweep has so far; returns them by name."""
    rows = trial_rows(study, sweep.out)
    out = sweep.out
    written = {"trials.csv": out / "trials.csv", "report.md": out / "report.md"}
    _write_text(written["trials.csv"], trials_csv(rows, sweep.knobs))
    best = next((r for r in rows if r.outcome == "complete"), None)
    if best is not None:
        written["best.toml"] = out / "best.toml"
        _write_text(written["best.toml"], best_toml(sweep, best))
        written["best"] = link_best(out, Path(best.folder))
    written.update(draw_plots(sweep, study, rows))
    importances = param_importances(study)
    _write_text(written["report.md"], report_markdown(sweep, rows, importances, written))
    return written


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def trials_csv(rows: list[TrialRow], knobs: list[Knob]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "outcome", "val_bits_per_char", "val_2^H_per_char", *[k.name for k in knobs],
                     "minutes", "epochs", "steps", "validations", "folder"])
    for r in rows:
        writer.writerow([r.number, r.outcome, _number(r.bits_per_char, 5), _number(r.blog_perplexity, 5),
                         *[r.params.get(k.name, "") for k in knobs], f"{r.minutes:.2f}", f"{r.epoch:.3f}", r.steps,
                         r.validations, r.folder])
    return buffer.getvalue()


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def best_toml(sweep: Sweep, best: TrialRow) -> str:
    """The base preset (its file's settings and the data path) with the best trial's values:
    `rnnlab train --config best.toml` runs it as is. The trial's budget and validation cadence were
    the sweep's; the preset keeps the base's."""
    import tomli_w

    settings = absolute_paths(merge(merge(load_toml(sweep.preset) if sweep.preset else {}, sweep.overrides),
                                    nested(best.params)))
    sweep.run_config(best.params)  # (still a valid run)
    for name in ("checkpoint_dir", "overwrite"):
        settings.get("train", {}).pop(name, None)
    shown = ", ".join(f"{name} = {_shown(value)}" for name, value in best.params.items())
    header = (f"# rnnlab sweep: the best of {sweep.out}, trial {best.number}: {best.bits_per_char:.4f} validation "
              f"bits/char after {best.minutes:.1f} minutes ({best.steps} steps, epoch {best.epoch:.2f}).\n"
              f"# Swept: {shown}. Train it: rnnlab train --config best.toml\n")
    return header + tomli_w.dumps({section: values for section, values in settings.items() if values})


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def link_best(out: Path, folder: Path) -> Path:
    """DIR/best: a link to the best trial's run folder (so `rnnlab sample DIR/best` works), replaced atomically."""
    link = out / "best"
    if read_pointer(folder, "best") is None:
        return link
    if link.exists() and not link.is_symlink():
        return link  # (something the user put there: left alone)
    tmp = out / f".best.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(os.path.relpath(folder, out), tmp)
    os.replace(tmp, link)
    return link


def param_importances(study) -> dict[str, float]:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few finished trials, or one value each
            return {}


# --- the report ----------------------------------------------------------------------------------

def report_markdown(sweep: Sweep, rows: list[TrialRow], importances: dict, written: dict) -> str:
    config = sweep.config
    budget = f"{config.trial_steps} steps" if config.trial_steps else f"{config.trial_minutes:g} minutes"
    finished = [r for r in rows if r.outcome in FINISHED]
    counts = {outcome: sum(r.outcome == outcome for r in rows) for outcome in ("complete", "pruned", "diverged",
                                                                                "error", "running", "waiting")}
    lines = [f"# Sweep {config.study}: {len(finished)} of {sweep.planned_trials()} trials finished", "",
             f"Corpus: {sweep.base.data.path or 'tinyshakespeare (embedded)'}; preset: {config.config or 'defaults'}; "
             f"sampler {config.sampler}, pruner {config.pruner}; {budget} per trial, {config.validations} "
             f"validations each.", "",
             "Outcomes: " + ", ".join(f"{n} {o}" for o, n in counts.items() if n) + ".", "",
             "Value: the trial's best validation bits per character (lower is better); 2^H is the blog's unit "
             "(H in nats per character). Pruned trials stopped early, at the validation shown, because they were "
             "behind the others there; their value is their best before that.", ""]
    header = ["trial", "outcome", "bits/char", "2^H", *[k.name for k in sweep.knobs], "minutes", "epochs", "steps",
              "validations"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        outcome = f"**{r.outcome}**" if r.outcome != "complete" else r.outcome
        lines.append("| " + " | ".join([str(r.number), outcome, _number(r.bits_per_char, 4),
                                        _number(r.blog_perplexity, 3),
                                        *[_shown(r.params[k.name]) if k.name in r.params else "" for k in sweep.knobs],
                                        f"{r.minutes:.1f}", f"{r.epoch:.2f}", str(r.steps), str(r.validations)]) + " |")
    problems = [r for r in rows if r.outcome in ("error", "diverged") and r.message]
    if problems:
        lines += ["", "## Trials that failed", ""] + [f"- trial {r.number} ({r.outcome}): {r.message}" for r in problems]
    if importances:
        lines += ["", "## Parameter importances (PED-ANOVA, complete trials)", ""]
        lines += [f"- {name}: {value:.3f}" for name, value in importances.items()]
    best = next((r for r in rows if r.outcome == "complete"), None)
    if best is not None:
        lines += ["", f"Best: trial {best.number}, {best.bits_per_char:.4f} bits/char; its run is `{best.folder}` "
                      f"(`rnnlab sample {sweep.out / 'best'}`), its preset `best.toml`."]
    pictures = [name for name in ("curves.png", "history.png", "importances.png", "parallel.png", "slice.png")
                if name in written]
    if pictures:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in pictures]
    return "\n".join(lines) + "\n"


# --- the plots -----------------------------------------------------------------------------------

def draw_plots(sweep: Sweep, study, rows: list[TrialRow]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    drawn = [r for r in rows if r.curve]
    if drawn:
        written["curves.png"] = _save(plt, curves_figure(plt, sweep.knobs, drawn), sweep.out / "curves.png")
    completed = [r for r in rows if r.outcome == "complete"]
    if completed:
        written.update(_optuna_plots(plt, study, sweep, len(completed)))
    return written


def _save(plt, figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return path


def curves_figure(plt, knobs: list[Knob], rows: list[TrialRow]):
    """One row per swept field: validation bits/char against epoch (left) and wall time (right), each
    trial coloured by its value of that field; pruned trials end in a cross."""
    figure, axes = plt.subplots(len(knobs), 2, figsize=(12, 3.6 * len(knobs)), dpi=110, squeeze=False)
    for (left, right), knob in zip(axes, knobs, strict=True):
        colour_of, legend = _colouring(plt, knob, [r.params.get(knob.name) for r in rows])
        for r in rows:
            colour = colour_of(r.params.get(knob.name))
            bits = [v["val_bits_per_char"] for v in r.curve]
            for ax, xs in ((left, [v["epoch"] for v in r.curve]), (right, [v["elapsed"] / 60.0 for v in r.curve])):
                ax.plot(xs, bits, color=colour, linewidth=1.4, marker="o", markersize=2.5, alpha=0.85)
                if r.outcome == "pruned":
                    ax.plot(xs[-1:], bits[-1:], color=colour, marker="x", markersize=7)
        for ax, xlabel in ((left, "epoch (passes over the training split)"), (right, "wall time (minutes)")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel("validation bits per character")
            ax.grid(alpha=0.3)
            blog = ax.secondary_yaxis("right", functions=(_to_blog, _from_blog))
            blog.set_ylabel("2^H per character (H in nats)")
        left.set_title(f"coloured by {knob.name}")
        right.set_title(f"coloured by {knob.name} (x: pruned)")
        legend(right)
    figure.tight_layout()
    return figure


def _to_blog(bits):
    return 2.0 ** (bits * math.log(2))


def _from_blog(value):
    import numpy as np

    return np.log2(np.maximum(value, 1e-12)) / math.log(2)


def _colouring(plt, knob: Knob, values: list):
    """(value -> colour, add a legend or colour bar to an axis) for one field's values."""
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.lines import Line2D

    numeric = knob.kind != "categorical" or all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in knob.choices)
    present = [v for v in values if v is not None]
    if numeric and len(set(present)) > 4:
        low, high = min(present), max(present)
        norm_type = LogNorm if knob.log and low > 0 else Normalize
        norm = norm_type(vmin=low, vmax=high if high > low else low + 1e-9)
        cmap = plt.get_cmap("viridis")

        def legend(ax):
            bar = plt.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.16)  # (past the 2^H axis)
            bar.set_label(knob.name)

        return (lambda v: cmap(norm(v)) if v is not None else "grey"), legend
    distinct = sorted(set(present), key=lambda v: (str(type(v)), v))
    colours = {v: f"C{i % 10}" for i, v in enumerate(distinct)}

    def legend(ax):
        ax.legend([Line2D([0], [0], color=colours[v], linewidth=2) for v in distinct], [_shown(v) for v in distinct],
                  title=knob.name, fontsize=8)

    return (lambda v: colours.get(v, "grey")), legend


def _optuna_plots(plt, study, sweep: Sweep, completed: int) -> dict[str, Path]:
    from optuna.visualization import matplotlib as optuna_plots

    written = {}
    value_label = "validation bits per character"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plots = [("history.png", lambda: optuna_plots.plot_optimization_history(study, target_name=value_label))]
        if completed >= 2:
            plots.append(("importances.png", lambda: optuna_plots.plot_param_importances(study)))
            plots.append(("slice.png", lambda: optuna_plots.plot_slice(study, target_name=value_label)))
            if len(sweep.knobs) >= 2:
                plots.append(("parallel.png",
                              lambda: optuna_plots.plot_parallel_coordinate(study, target_name=value_label)))
        for name, draw in plots:
            try:
                axes = draw()
            except (ValueError, RuntimeError, ZeroDivisionError):  # (too few distinct trials for this one)
                continue
            figure = _figure_of(axes)
            width, height = {"parallel.png": (max(9, 1.9 * (len(sweep.knobs) + 1)), 6),
                             "slice.png": (max(8, 3.3 * len(sweep.knobs)), 4.5)}.get(name, (9, 5))
            figure.set_size_inches(width, height)
            figure.tight_layout()
            written[name] = _save(plt, figure, sweep.out / name)
    return written


def _figure_of(axes):
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    return first.figure
