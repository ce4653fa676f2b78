"""`rnnlab matrix`: the blog's cross-dataset table — every model evaluated on every corpus.

Each corpus gets a model: the one given (`--model NAME=CHECKPOINT`) or one trained on its training
split through the one door (`resolve_run` + `train`, in DIR/models/NAME; a folder already holding
its run is reused). Every model is then scored on every corpus's validation text — the same text
for every model, written to DIR/texts/NAME.val.txt, so each cell can be reproduced with `rnnlab eval`.

The rule for text a model cannot read (the blog's Goethe case, umlauts unknown to an English model):
a character model's unknown characters are left out of that text before it is scored (the model
reads and predicts only the characters it knows); a word model reads unknown words as <unk>; a
byte-level BPE model knows every character. Each cell reports the share of the text's characters
that were unknown to the model, so a number is never silently computed on other text than it says.
Cells report bits per character and 2^H per character with H in nats (the blog's unit).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rnnlab.config import DataConfig, MatrixConfig
from rnnlab.data.corpus import encode_file_to_memmap, prepare_from_config
from rnnlab.errors import CorpusError
from rnnlab.evaluation import evaluate_tokens
from rnnlab.training.checkpoint import load_checkpoint, read_pointer
from rnnlab.training.loop import train
from rnnlab.training.run import resolve_run

log = logging.getLogger("rnnlab")


@dataclass
class Cell:
    model: str
    corpus: str
    bits_per_char: float
    blog_perplexity: float  # 2^H, H in nats per character
    unknown_share: float  # of the corpus text's characters, unknown to the model and left out (char models)
    characters: int


def run_matrix(config: MatrixConfig) -> list[Cell]:
    out = Path(config.out)
    corpora, given = config.named("corpus"), config.named("model")
    texts = {name: validation_text(path, config, out / "texts" / f"{name}.val.txt") for name, path in corpora.items()}
    models = {name: given.get(name) or train_model(name, path, config, out / "models" / name)
              for name, path in corpora.items()}
    cells = [score(model_name, Path(checkpoint), corpus_name, texts[corpus_name])
             for model_name, checkpoint in models.items() for corpus_name in corpora]
    write_outputs(cells, list(models), list(corpora), out)
    return cells


def validation_text(path: str, config: MatrixConfig, destination: Path) -> Path:
    """The corpus's validation split as text (its characters, cut as a char run with these fractions cuts it)."""
    data = DataConfig(path=path, val_frac=config.val_frac, test_frac=config.test_frac)
    corpus = prepare_from_config(data)
    val = corpus.splits(data.val_frac, data.test_frac).val
    if len(val) < 2:
        raise CorpusError(f"{path}: its validation share ({config.val_frac}) holds {len(val)} characters")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(corpus.vocab.decode(val), encoding="utf-8")
    return destination


def train_model(name: str, path: str, config: MatrixConfig, folder: Path) -> str:
    if (folder / "best.json").is_file() and read_pointer(folder, "best"):
        log.info("matrix: %s has a model in %s already; using it", name, folder)
        return str(folder)
    budget = {"max_steps": config.train_steps} if config.train_steps else {"max_minutes": config.train_minutes}
    overrides = {"data": {"path": path, "val_frac": config.val_frac, "test_frac": config.test_frac},
                 "train": {**budget, "checkpoint_dir": str(folder), "sample_length": 0, "overwrite": True}}
    log.info("matrix: training a model on %s (%s)", name, path)
    train(resolve_run(config.config, overrides), progress_bar=False)
    return str(folder)


def score(model_name: str, checkpoint: Path, corpus_name: str, text: Path) -> Cell:
    ckpt = load_checkpoint(checkpoint, weights_only=True)
    vocab, content = ckpt.vocab, text.read_text(encoding="utf-8")
    unknown = 0
    with tempfile.TemporaryDirectory(prefix="rnnlab-matrix-") as scratch:
        scored = text
        if vocab.kind == "char":
            kept = vocab.drop_unknown(content)
            unknown = len(content) - len(kept)
            scored = Path(scratch) / "known.txt"
            scored.write_text(kept, encoding="utf-8")
        elif vocab.kind == "word":
            missing = set(vocab.unknown_pieces(content))
            unknown = sum(len(word) for word in content.split() if word in missing)
        encoded = encode_file_to_memmap(scored, vocab, Path(scratch))
        if len(encoded.tokens) < 2:
            return Cell(model_name, corpus_name, math.nan, math.nan, unknown / max(len(content), 1), 0)
        result = evaluate_tokens(ckpt.build_model("cpu"), encoded.tokens, 16, ckpt.config.train.seq_length,
                                 "cpu", char_lengths=encoded.char_lengths)
        del encoded
    return Cell(model_name, corpus_name, result.bits_per_char, 2.0 ** result.nats_per_char,
                unknown / max(len(content), 1), result.scored_characters)


def write_outputs(cells: list[Cell], models: list[str], corpora: list[str], out: Path) -> None:
    by = {(c.model, c.corpus): c for c in cells}
    with open(out / "matrix.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "corpus", "bits_per_char", "perplexity_2^H_per_char", "unknown_share",
                         "characters_scored"])
        for c in cells:
            writer.writerow([c.model, c.corpus, f"{c.bits_per_char:.4f}", f"{c.blog_perplexity:.4f}",
                             f"{c.unknown_share:.4f}", c.characters])
    lines = ["# Every model on every corpus's validation text",
             "", "2^H per character (H in nats: the blog's unit), then bits per character; rows are models "
             "(named by the corpus they were trained on), columns the corpora they are scored on. A share in "
             "brackets is the part of that text the model could not read: a character model's unknown characters are "
             "left out of the text it is scored on, a word model reads unknown words as <unk>.", "",
             "| model \\ corpus | " + " | ".join(corpora) + " |", "|---" * (len(corpora) + 1) + "|"]
    for m in models:
        row = []
        for corpus in corpora:
            c = by[(m, corpus)]
            share = f" [{c.unknown_share:.1%} unknown]" if c.unknown_share else ""
            row.append(f"{c.blog_perplexity:.3f} ({c.bits_per_char:.3f} bpc){share}")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    (out / "matrix.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "matrix.json").write_text(json.dumps([c.__dict__ for c in cells], indent=2), encoding="utf-8")
    heatmap(by, models, corpora, out / "matrix.png")


def heatmap(by: dict, models: list[str], corpora: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[by[(m, c)].blog_perplexity for c in corpora] for m in models])
    figure, axes = plt.subplots(figsize=(1.6 * len(corpora) + 3, 1.1 * len(models) + 2), dpi=120)
    image = axes.imshow(values, cmap="viridis_r")
    axes.set_xticks(range(len(corpora)), corpora)
    axes.set_yticks(range(len(models)), models)
    axes.set_xlabel("corpus scored (its validation text)")
    axes.set_ylabel("model (trained on)")
    for i, m in enumerate(models):
        for j, c in enumerate(corpora):
            cell = by[(m, c)]
            note = f"\n{cell.unknown_share:.0%} unknown" if cell.unknown_share else ""
            shade = image.norm(cell.blog_perplexity) if math.isfinite(cell.blog_perplexity) else 0.0
            axes.text(j, i, f"{cell.blog_perplexity:.2f}{note}", ha="center", va="center", fontsize=9,
                      color="black" if shade < 0.5 else "white")  # (light cells are the low values)
    figure.colorbar(image, ax=axes, label="2^H per character (H in nats)")
    axes.set_title("every model on every corpus")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
