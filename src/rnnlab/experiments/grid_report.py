"""The grid's report: grid.md (final perplexities with their spread, and each of the paper's conclusions
checked against these runs) and its figures, drawn the paper's way.

architectures.png (Figs. 7/8): a row per corpus, a column per scheme; a colour per architecture
(the paper's: blue r=1 γ=128, green r=1 γ=512, red r=2 γ=128, yellow r=2 γ=512), a line per k1.
schemes.png (Fig. 9): a panel per corpus, a colour per scheme, a line per k1.
corpora.png (Fig. 10): a panel per scheme, a colour per corpus, a line per k1.
k2.png (Fig. 11): a panel per scheme, perplexity against training time, a colour per k2, a line per
k1 (k2, 2k2/3, k2/3). Every line is the mean over the repeats, the range shaded.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from rnnlab.config import GridExperimentConfig
from rnnlab.experiments.grid import PAPER_COLOURS, spread
from rnnlab.training.checkpoint import atomic_write

TIE = 0.01  # two figures within 1% of each other are a tie, not a verdict
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1)))
SCHEME_LABELS = {1: "scheme 1 (multi-loss, windowed)", 2: "scheme 2 (single-loss, windowed)",
                 3: "scheme 3 (multi-loss, progressive)", 4: "scheme 4 (state carried, progressive)"}


def group(runs: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Runs by the values of `keys` (the repeats of one configuration end up together)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[tuple(run[k] for k in keys)].append(run)
    return dict(sorted(groups.items(), key=lambda item: tuple(str(v) for v in item[0])))


def mean_curve(repeats: list[dict], x: str) -> tuple[list, list, list, list]:
    """(x, mean, low, high) over the repeats, point by point (the points they all reached)."""
    length = min(len(r["curve"]) for r in repeats)
    xs, means, lows, highs = [], [], [], []
    for i in range(length):
        values = [r["curve"][i]["perplexity"] for r in repeats]
        mean, low, high = spread(values)
        xs.append(sum(r["curve"][i][x] for r in repeats) / len(repeats))
        means.append(mean)
        lows.append(low)
        highs.append(high)
    return xs, means, lows, highs


def final(repeats: list[dict]) -> tuple[float, float, float]:
    return spread([r["curve"][-1]["perplexity"] if r["outcome"] != "diverged" else math.inf for r in repeats])


# --- figures ----------------------------------------------------------------------------------------

def _draw(axis, repeats, x, colour, style, label=None, width=1.3):
    xs, means, lows, highs = mean_curve(repeats, x)
    axis.plot(xs, means, color=colour, linestyle=style, marker="o", markersize=2.5, linewidth=width, label=label,
              alpha=0.55 if width > 2 else 1.0)
    if len(repeats) > 1:
        axis.fill_between(xs, lows, highs, color=colour, alpha=0.15, linewidth=0)


def _panel(axis, title: str, x: str) -> None:
    axis.set_title(title, fontsize=9)
    axis.set_xlabel("number of training sequences" if x == "sequences" else "training time (seconds)")
    axis.set_ylabel("test perplexity (e^nats/char)")
    if x == "sequences":
        axis.set_xscale("log")
    axis.grid(True, which="both", alpha=0.3)


def _clip(axis) -> None:
    """The paper clips its axes at 80: a diverged line must not flatten the others."""
    low, high = axis.get_ylim()
    if high > 80:
        axis.set_ylim(max(low, 0), 80)


def figure_grid(plt, rows: int, cols: int):
    figure, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), dpi=100, squeeze=False)
    return figure, axes


def panel_row(plt, count: int):
    """`count` panels, two per row: (figure, a flat list of axes), the spare one removed."""
    cols = min(count, 2)
    rows = -(-count // cols)
    figure, axes = figure_grid(plt, rows, cols)
    flat = [axis for row in axes for axis in row]
    for spare in flat[count:]:
        spare.remove()
    return figure, flat[:count]


def architectures_figure(plt, runs, corpora, schemes, architectures, k1s):
    figure, axes = figure_grid(plt, len(corpora), len(schemes))
    for i, corpus in enumerate(corpora):
        for j, scheme in enumerate(schemes):
            axis = axes[i][j]
            for a, (r, g) in enumerate(architectures):
                for k, k1 in enumerate(k1s):
                    repeats = [x for x in runs if (x["corpus"], x["scheme"], x["num_layers"], x["hidden_size"],
                                                   x["k1"]) == (corpus, scheme, r, g, k1)]
                    if repeats:
                        _draw(axis, repeats, "sequences", PAPER_COLOURS[a % len(PAPER_COLOURS)],
                              LINESTYLES[k % len(LINESTYLES)], f"r={r}, γ={g}" if k == 0 else None)
            _panel(axis, f"{corpus}: {SCHEME_LABELS[scheme]}", "sequences")
            _clip(axis)
            axis.legend(fontsize=7, title=f"line styles: k1 = {', '.join(map(str, k1s))}", title_fontsize=7)
    figure.tight_layout()
    return figure


def schemes_figure(plt, runs, corpora, schemes, k1s, by: str):
    """by='corpus': a panel per corpus, colour per scheme (Fig. 9); by='scheme': the other way (Fig. 10)."""
    panels, colours = (corpora, schemes) if by == "corpus" else (schemes, corpora)
    figure, axes = panel_row(plt, len(panels))
    for axis, panel in zip(axes, panels, strict=True):
        for c, colour_value in enumerate(colours):
            corpus, scheme = (panel, colour_value) if by == "corpus" else (colour_value, panel)
            for k, k1 in enumerate(k1s):
                repeats = [x for x in runs if (x["corpus"], x["scheme"], x["k1"]) == (corpus, scheme, k1)]
                if repeats:
                    label = (SCHEME_LABELS[scheme] if by == "corpus" else corpus) if k == 0 else None
                    # (scheme 1 trains as scheme 3 does: drawn wide and pale, so a curve on top of it shows)
                    _draw(axis, repeats, "sequences", PAPER_COLOURS[c % len(PAPER_COLOURS)],
                          LINESTYLES[k % len(LINESTYLES)], label, 4.0 if by == "corpus" and scheme == 1 else 1.3)
        _panel(axis, panel if by == "corpus" else SCHEME_LABELS[panel], "sequences")
        _clip(axis)
        axis.legend(fontsize=7, title=f"line styles: k1 = {', '.join(map(str, k1s))}", title_fontsize=7)
    figure.tight_layout()
    return figure


def k2_figure(plt, runs, schemes, k2s):
    figure, axes = panel_row(plt, len(schemes))
    for axis, scheme in zip(axes, schemes, strict=True):
        for c, k2 in enumerate(k2s):
            k1s = sorted({x["k1"] for x in runs if x["seq_length"] == k2}, reverse=True)
            for k, k1 in enumerate(k1s):
                repeats = [x for x in runs if (x["scheme"], x["seq_length"], x["k1"]) == (scheme, k2, k1)]
                if repeats:
                    _draw(axis, repeats, "seconds", PAPER_COLOURS[c % len(PAPER_COLOURS)],
                          LINESTYLES[k % len(LINESTYLES)], f"k2 = {k2}" if k == 0 else None)
        _panel(axis, SCHEME_LABELS[scheme], "seconds")
        _clip(axis)
        axis.legend(fontsize=7, title="line styles: k1 = k2, 2k2/3, k2/3", title_fontsize=7)
    figure.tight_layout()
    return figure


def write_figures(runs: list[dict], config: GridExperimentConfig, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rnnlab.config import parse_architectures

    k1s = config.numbers("k1")
    written = []

    def save(figure, name):
        atomic_write(out / name, lambda tmp: figure.savefig(tmp, format="png"))
        plt.close(figure)
        written.append(name)

    arch = [r for r in runs if r["part"] == "architectures"]
    corpora = list(dict.fromkeys(r["corpus"] for r in runs))
    if arch:
        save(architectures_figure(plt, arch, [c for c in corpora if any(r["corpus"] == c for r in arch)],
                                  config.numbers("architecture_schemes"), parse_architectures(config.architectures),
                                  k1s), "architectures.png")
    scheme_runs = [r for r in runs if r["part"] == "schemes"]
    if scheme_runs:
        save(schemes_figure(plt, scheme_runs, corpora, config.numbers("schemes"), k1s, "corpus"), "schemes.png")
        save(schemes_figure(plt, scheme_runs, corpora, config.numbers("schemes"), k1s, "scheme"), "corpora.png")
    k2_runs = [r for r in runs if r["part"] == "k2"]
    if k2_runs:
        save(k2_figure(plt, k2_runs, config.numbers("schemes"), config.numbers("k2_values")), "k2.png")
    return written


# --- grid.md ----------------------------------------------------------------------------------------

def _cell(repeats: list[dict]) -> str:
    mean, low, high = final(repeats)
    if not math.isfinite(mean):
        return "diverged"
    diverged = sum(r["outcome"] == "diverged" for r in repeats)
    text = f"{mean:.2f}" + (f" ({low:.2f}-{high:.2f})" if len(repeats) > 1 else "")
    return text + (f", {diverged} diverged" if diverged else "")


def tables(runs: list[dict], config: GridExperimentConfig) -> list[str]:
    lines = []
    k1s = config.numbers("k1")
    for corpus in dict.fromkeys(r["corpus"] for r in runs):
        arch = [r for r in runs if r["corpus"] == corpus and r["part"] == "architectures"]
        if arch:
            lines += ["", f"### {corpus}: architectures (final test perplexity)", "",
                      "| scheme | r x γ | " + " | ".join(f"k1={k}" for k in k1s) + " |", "|---|---|" + "---|" * len(k1s)]
            for (scheme, r, g), members in group(arch, "scheme", "num_layers", "hidden_size").items():
                cells = [_cell([m for m in members if m["k1"] == k]) if any(m["k1"] == k for m in members) else ""
                         for k in k1s]
                lines.append(f"| {scheme} | {r}x{g} | " + " | ".join(cells) + " |")
        schemes = [r for r in runs if r["corpus"] == corpus and r["part"] == "schemes"]
        if schemes:
            lines += ["", f"### {corpus}: schemes (final test perplexity)", "",
                      "| scheme | sampling | " + " | ".join(f"k1={k}" for k in k1s) + " |",
                      "|---|---|" + "---|" * len(k1s)]
            for (scheme,), members in group(schemes, "scheme").items():
                cells = [_cell([m for m in members if m["k1"] == k]) if any(m["k1"] == k for m in members) else ""
                         for k in k1s]
                lines.append(f"| {scheme} | {members[0]['curve'][-1]['sampling']} | " + " | ".join(cells) + " |")
        k2_runs = [r for r in runs if r["corpus"] == corpus and r["part"] == "k2"]
        if k2_runs:
            lines += ["", f"### {corpus}: k2 (final test perplexity / training seconds)", "",
                      "| scheme | k2 | k1 | perplexity | seconds |", "|---|---|---|---|---|"]
            for (scheme, k2, k1), members in group(k2_runs, "scheme", "seq_length", "k1").items():
                seconds = sum(m["curve"][-1]["seconds"] for m in members) / len(members)
                lines.append(f"| {scheme} | {k2} | {k1} | {_cell(members)} | {seconds:.0f} |")
    return lines


def conclusions(runs: list[dict]) -> list[str]:
    """The paper's conclusions, each checked against these runs: 'agrees' or 'disagrees', with the figures."""
    lines = []
    scheme_runs = [r for r in runs if r["part"] == "schemes"]
    finals = {}  # (corpus, scheme) -> [mean final perplexity per k1]
    for (corpus, scheme, _k1), members in group(scheme_runs, "corpus", "scheme", "k1").items():
        finals.setdefault((corpus, scheme), []).append(final(members)[0])
    corpora = list(dict.fromkeys(r["corpus"] for r in scheme_runs))

    def mean_of(corpus, scheme):
        values = [v for v in finals.get((corpus, scheme), []) if math.isfinite(v)]
        return sum(values) / len(values) if values else math.inf

    def k1_range(corpus, scheme):
        values = finals.get((corpus, scheme), [])
        return (max(values) - min(values)) if values and all(map(math.isfinite, values)) else math.inf

    def verdict(pairs) -> str:
        """Over (name, better, worse) pairs: agrees where better < worse by more than TIE, ties within it."""
        holds = sum(b < w * (1 - TIE) for _, b, w in pairs)
        ties = sum(abs(b - w) <= TIE * max(abs(w), 1e-12) for _, b, w in pairs)
        if holds == len(pairs):
            return "agrees"
        if ties == len(pairs):
            return f"no difference here (within {TIE:.0%})"
        parts = [f"agrees on {holds}" if holds else "", f"ties on {ties}" if ties else "",
                 f"disagrees on {len(pairs) - holds - ties}" if len(pairs) - holds - ties else ""]
        return " of ".join([", ".join(p for p in parts if p), str(len(pairs))]) if holds or ties else "disagrees"

    checks = [
        ("multi-loss training (scheme 1) ends below single-loss (scheme 2)", 1, 2, mean_of, "final perplexity"),
        ("windowed sampling (scheme 1) is more robust to k1 than progressive (scheme 3)", 1, 3, k1_range,
         "range of the final perplexity over k1"),
        ("carrying the state (scheme 4) is less robust to k1 than not (scheme 3)", 3, 4, k1_range,
         "range of the final perplexity over k1"),
    ]
    for claim, better, worse, measure, what in checks:
        pairs = [(c, measure(c, better), measure(c, worse)) for c in corpora
                 if (c, better) in finals and (c, worse) in finals]
        if not pairs:
            continue
        figures = "; ".join(f"{c}: {b:.3g} vs {w:.3g}" for c, b, w in pairs)
        lines.append(f"- The paper: {claim}. Here: {verdict(pairs)} ({what}, scheme {better} vs "
                     f"{worse}: {figures}).")
    if corpora and all((c, 1) in finals for c in corpora) and len({s for _, s in finals}) > 1:
        best = {c: min((s for cc, s in finals if cc == c), key=lambda s, c=c: mean_of(c, s)) for c in corpora}
        pairs = [(c, mean_of(c, 1), min(mean_of(c, s) for cc, s in finals if cc == c and s != 1)) for c in corpora]
        lines.append(f"- The paper: scheme 1 performs best. Here: {verdict(pairs)} (best scheme per corpus: "
                     f"{', '.join(f'{c}: {s}' for c, s in best.items())}; scheme 1 vs the best other: "
                     f"{'; '.join(f'{c}: {b:.3g} vs {w:.3g}' for c, b, w in pairs)}).")
    arch = [r for r in runs if r["part"] == "architectures"]
    if arch:
        best_arch = {}
        for (corpus, scheme), members in group(arch, "corpus", "scheme").items():
            by_arch = group(members, "num_layers", "hidden_size")
            best_arch[(corpus, scheme)] = min(by_arch, key=lambda a, by=by_arch: final(by[a])[0])
        shown = ", ".join(f"{c} scheme {s}: {a[0]}x{a[1]}" for (c, s), a in best_arch.items())
        if any((r["num_layers"], r["hidden_size"]) == (1, 512) for r in arch):
            holds = sum(a == (1, 512) for a in best_arch.values())
            said = "agrees" if holds == len(best_arch) else "disagrees" if not holds else \
                f"agrees on {holds} of {len(best_arch)}"
            lines.append(f"- The paper: r=1, γ=512 is the best architecture. Here: {said} (best final perplexity: "
                         f"{shown}).")
        else:
            lines.append(f"- The paper: r=1, γ=512 is the best architecture. Not in this grid; its best: {shown}.")
    k2_runs = [r for r in runs if r["part"] == "k2"]
    if k2_runs:
        seconds = {k2: sum(m["curve"][-1]["seconds"] for m in members) / len(members)
                   for (k2,), members in group(k2_runs, "seq_length").items()}
        ordered = [seconds[k] for k in sorted(seconds)]
        holds = all(a <= b for a, b in zip(ordered, ordered[1:], strict=False))
        lines.append(f"- The paper: a smaller k2 trains the same batches faster. Here: "
                     f"{'agrees' if holds else 'disagrees'} (mean seconds by k2: "
                     f"{', '.join(f'{k}: {seconds[k]:.0f}' for k in sorted(seconds))}).")
        ranges = {}
        for (scheme,), members in group(k2_runs, "scheme").items():
            values = [final(m)[0] for m in group(members, "seq_length", "k1").values()]
            ranges[scheme] = max(values) - min(values) if all(map(math.isfinite, values)) else math.inf
        if 1 in ranges and len(ranges) > 1:
            others = min(v for s, v in ranges.items() if s != 1)
            lines.append(f"- The paper: scheme 1 is the most robust to k2. Here: {verdict([('', ranges[1], others)])} "
                         f"(range of the final perplexity over k2 and k1: "
                         f"{', '.join(f'scheme {s}: {v:.2f}' for s, v in ranges.items())}).")
    return lines


def write_report(results: dict, config: GridExperimentConfig, out: Path) -> None:
    runs = results["runs"]
    figures = write_figures(runs, config, out) if runs else []
    lines = [f"# The paper's experiment grid: {len(runs)} runs of {config.steps} batches of {config.batch_size}", "",
             f"Corpora: {', '.join(dict.fromkeys(r['corpus'] for r in runs))}; k2 = {config.k2} (architectures and "
             f"schemes parts), {config.repeats} repeat(s) per configuration (seeds from {config.seed}; a range is "
             f"min-max over them). Perplexity is e^(nats/char) on each corpus's last {config.test_chars:,} "
             f"characters after k2 characters of bootstrap, scored the way each scheme samples: schemes 1 and 2 "
             f"windowed, 3 and 4 progressively. Training time includes one validation per scoring point.", "",
             "## What agrees with the paper's conclusions", ""]
    lines += conclusions(runs) or ["- (too few parts to compare)"]
    lines += ["", "## Final perplexities"] + tables(runs, config)
    if figures:
        lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    atomic_write(out / "grid.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))
