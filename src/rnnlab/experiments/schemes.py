"""`rnnlab experiment schemes`: the paper's four schemes compared on the user's own data.

Writes into one folder:
* table4.md / table4.json — the paper's Table 4 for this machine: ms per training batch and ms per
  sampled token, for each scheme x architecture (r layers x gamma units of the paper's network);
* fig9.png — test perplexity against the number of training sequences, one line per scheme (the
  paper's Fig. 9), from training each scheme under the same budget;
* summary.md — both, with what they show (progressive vs windowed speed, final perplexities,
  schemes whose perplexity went up or diverged).
Perplexity is e^(nats/char) on the test split after bootstrapping the state with k2 characters.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from rnnlab.config import WINDOWED_SCHEMES, RunConfig, SampleConfig, SchemesExperimentConfig, build_run_config
from rnnlab.data.corpus import prepare_corpus
from rnnlab.errors import ConfigError, RnnlabError
from rnnlab.evaluation import evaluate_tokens
from rnnlab.sampling import generate, make_stepper
from rnnlab.training.checkpoint import load_checkpoint
from rnnlab.training.loop import train, train_batch
from rnnlab.training.run import resolve_run

SCHEME_NAMES = {
    1: "scheme 1: multi-loss, learned h0, windowed sampling",
    2: "scheme 2: single-loss, learned h0, windowed sampling",
    3: "scheme 3: multi-loss, learned h0, progressive sampling",
    4: "scheme 4: multi-loss, state transfer at k1, progressive sampling",
}


def scheme_config(settings: SchemesExperimentConfig, scheme: int, layers: int, hidden: int, folder: Path,
                  steps: int) -> RunConfig:
    return build_run_config(None, {
        "data": {"path": settings.data},
        "model": {"architecture": "paper", "num_layers": layers, "hidden_size": hidden},
        "train": {"scheme": scheme, "seq_length": settings.k2, "k1": settings.k1, "batch_size": settings.batch_size,
                  "max_steps": steps, "eval_every": 10 ** 9, "sample_length": 0, "keep_last": 1,
                  "checkpoint_dir": str(folder), "seed": settings.seed, "loss_guard": 0.0},
    })


# --- (a) Table 4: time per training batch and per sampled token ----------------------------------

def time_scheme(settings: SchemesExperimentConfig, scheme: int, layers: int, hidden: int) -> dict:
    """ms per training batch (the loop's own train_batch) and per sampled token of one scheme x model."""
    run = resolve_run(scheme_config(settings, scheme, layers, hidden, Path(settings.out) / "unused", 1))
    seconds = []
    for index in range(settings.timing_batches + 1):
        start = time.perf_counter()
        train_batch(run, elapsed=0.0)
        if index:  # the first batch warms up allocators and kernels
            seconds.append(time.perf_counter() - start)
    model = run.model
    model.eval()
    windowed = scheme in WINDOWED_SCHEMES
    tokens = max(settings.timing_tokens // (10 if windowed else 1), 5)
    sample = SampleConfig(length=tokens, sampling="windowed" if windowed else "progressive", window=settings.k2)
    stepper = make_stepper(model, sample)
    prime = list(np.asarray(run.batcher.next_batch().inputs[0, :settings.k2]))
    start = time.perf_counter()
    for _ in generate(stepper, prime, sample):
        pass
    return {"scheme": scheme, "layers": layers, "hidden": hidden,
            "train_ms_per_batch": 1000 * float(np.median(seconds)),
            "sample_ms_per_token": 1000 * (time.perf_counter() - start) / tokens}


def timing_table(rows: list[dict], architectures) -> str:
    header = "| | " + " | ".join(f"r={r}, γ={g}" for r, g in architectures) + " |"
    lines = [header, "|---" * (len(architectures) + 1) + "|"]
    for scheme in SCHEME_NAMES:
        cells = []
        for r, g in architectures:
            row = next(x for x in rows if (x["scheme"], x["layers"], x["hidden"]) == (scheme, r, g))
            cells.append(f"{row['train_ms_per_batch']:.1f} / {row['sample_ms_per_token']:.2f}")
        lines.append(f"| Scheme {scheme} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- (b) Fig. 9: test perplexity against training sequences --------------------------------------

def log_spaced_steps(total: int) -> list[int]:
    points = sorted({max(1, int(round(v))) for v in np.geomspace(1, total, num=min(8, total))} | {total})
    return [p for p in points if p >= min(5, total)] or [total]


def learning_curve(settings: SchemesExperimentConfig, scheme: int, steps: int, test_tokens) -> list[dict]:
    layers, hidden = settings.curve_model()
    folder = Path(settings.out) / f"scheme{scheme}"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh run: no stale pointers from an earlier experiment
    curve = []
    for index, point in enumerate(log_spaced_steps(steps)):
        config = scheme_config(settings, scheme, layers, hidden, folder, point)
        try:
            result = train(config, resume=folder if index else None, progress_bar=False)
        except RnnlabError as exc:  # a diverged scheme is a result, not a crash
            curve.append({"steps": point, "sequences": point * settings.batch_size, "perplexity": math.nan,
                          "note": str(exc)})
            break
        model = load_checkpoint(result.last_checkpoint).build_model()
        nats = evaluate_tokens(model, test_tokens, seq_length=256, burn_in=settings.k2).nats_per_token
        curve.append({"steps": point, "sequences": point * settings.batch_size,
                      "perplexity": math.exp(nats) if math.isfinite(nats) else math.nan})
    return curve


def plot_curves(curves: dict[int, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=110)
    colours = {1: "tab:blue", 2: "tab:green", 3: "tab:red", 4: "gold"}  # the paper's colours
    for scheme, curve in curves.items():
        xs = [p["sequences"] for p in curve if math.isfinite(p["perplexity"])]
        ys = [p["perplexity"] for p in curve if math.isfinite(p["perplexity"])]
        # schemes 1 and 3 train identically (they differ in sampling): draw 1 wide and dashed so both show
        style = {"linestyle": "--", "linewidth": 4, "alpha": 0.6} if scheme == 1 else {"linewidth": 1.5}
        axis.plot(xs, ys, marker="o", color=colours[scheme], label=SCHEME_NAMES[scheme], **style)
    axis.set_xscale("log")
    axis.set_xlabel("number of training sequences")
    axis.set_ylabel("test perplexity (e^nats/char)")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# --- the whole experiment ------------------------------------------------------------------------

def run_schemes_experiment(settings: SchemesExperimentConfig, log=print) -> dict:
    Path(settings.out).mkdir(parents=True, exist_ok=True)
    corpus = prepare_corpus(settings.data)
    rows = []
    for layers, hidden in settings.models():
        for scheme in SCHEME_NAMES:
            rows.append(time_scheme(settings, scheme, layers, hidden))
            log(f"timing {layers}x{hidden} scheme {scheme}: {rows[-1]['train_ms_per_batch']:.1f} ms/batch, "
                f"{rows[-1]['sample_ms_per_token']:.2f} ms/token")
    table = timing_table(rows, settings.models())
    (Path(settings.out) / "table4.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    (Path(settings.out) / "table4.md").write_text(table + "\n", encoding="utf-8")

    config = scheme_config(settings, 1, *settings.curve_model(), Path(settings.out), 1)
    test_tokens = corpus.splits(config.data.val_frac, config.data.test_frac).test
    if len(test_tokens) < settings.k2 + 2:
        raise ConfigError(f"the test split has {len(test_tokens)} characters; it needs more than k2 = {settings.k2}")
    curves = {}
    for scheme in SCHEME_NAMES:
        steps = settings.steps
        if settings.max_minutes:
            ms = next(r["train_ms_per_batch"] for r in rows if (r["scheme"], r["layers"], r["hidden"])
                      == (scheme, *settings.curve_model()))
            steps = max(5, int(settings.max_minutes * 60_000 / ms))
        curves[scheme] = learning_curve(settings, scheme, steps, test_tokens)
        log(f"scheme {scheme}: " + ", ".join(f"{p['sequences']}: {p['perplexity']:.2f}" for p in curves[scheme]))
    r, g = settings.curve_model()
    plot_curves(curves, Path(settings.out) / "fig9.png", f"{corpus.meta['source'].rsplit('/', 1)[-1]}, r={r}, γ={g}")
    results = {"timings": rows, "curves": curves, "k1": settings.k1, "k2": settings.k2,
               "batch_size": settings.batch_size, "curve_architecture": list(settings.curve_model())}
    (Path(settings.out) / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (Path(settings.out) / "summary.md").write_text(summary(results, table, settings), encoding="utf-8")
    return results


def summary(results: dict, table: str, settings: SchemesExperimentConfig) -> str:
    rows, curves = results["timings"], results["curves"]
    lines = [f"# Training and sampling schemes on this machine (k2 = {settings.k2}, k1 = {settings.k1}, "
             f"batch {settings.batch_size})", "", "## Time per training batch / per sampled token (ms)", "", table, ""]
    for r, g in settings.models():
        def cell(scheme, key, r=r, g=g):
            return next(x[key] for x in rows if (x["scheme"], x["layers"], x["hidden"]) == (scheme, r, g))
        speedup = cell(1, "sample_ms_per_token") / cell(3, "sample_ms_per_token")
        change = cell(2, "train_ms_per_batch") / cell(1, "train_ms_per_batch") - 1
        lines.append(f"- r={r}, γ={g}: progressive sampling is {speedup:.1f}x faster than windowed; a single-loss "
                     f"training batch (scheme 2) takes {100 * abs(change):.0f}% {'more' if change > 0 else 'less'} "
                     f"time than a multi-loss one (scheme 1).")
    r, g = settings.curve_model()
    lines += ["", f"## Test perplexity against training sequences (r={r}, γ={g}; fig9.png)", "",
              "| scheme | " + " | ".join(str(p["sequences"]) for p in curves[1]) + " |",
              "|---" * (len(curves[1]) + 1) + "|"]
    for scheme, curve in curves.items():
        lines.append(f"| {scheme} | " + " | ".join(f"{p['perplexity']:.2f}" for p in curve) + " |")
    lines.append("")
    for scheme, curve in curves.items():
        values = [p["perplexity"] for p in curve]
        finite = [v for v in values if math.isfinite(v)]
        rises = any(b > a * 1.02 for a, b in zip(finite[:-1], finite[1:], strict=True))
        state = ("diverged" if len(finite) < len(values) else
                 "rose again during training" if rises else "fell steadily")
        lines.append(f"- {SCHEME_NAMES[scheme]}: final test perplexity {finite[-1] if finite else math.nan:.2f}; "
                     f"{state}.")
    return "\n".join(lines) + "\n"
