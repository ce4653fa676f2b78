"""Export a checkpoint's single-character step to ONNX, for hosts without PyTorch.

The graph is the model's own step (`RecurrentLM.step`, fused kernel included), traced by torch's
ONNX exporter with a dynamic batch: inputs `tokens` (B,) int64 and the state (`h`, and `c` for
LSTM, each (L, B, H)); outputs `logits` (B, V) and the new state. Next to FILE.onnx goes
FILE.json: the vocabulary, the state's names and shapes, a learned initial state if the model
has one, and how the model samples by default (windowed for scheme 1/2 models). `rnnlab.onnx_runtime` runs both with onnxruntime and NumPy only.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

from rnnlab.errors import RnnlabError
from rnnlab.sampling import sampling_defaults
from rnnlab.training.checkpoint import atomic_write, load_checkpoint


class _StepGraph(torch.nn.Module):
    """tokens (B,), one state tensor -> logits, new state (GRU, RNN, QRNN with window 1)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, s0):
        logits, state = self.model.step(tokens, (s0,))
        return (logits, *state)


class _StepGraph2(_StepGraph):  # LSTM: h, c
    def forward(self, tokens, s0, s1):
        logits, state = self.model.step(tokens, (s0, s1))
        return (logits, *state)


class _StepGraph3(_StepGraph):  # QRNN with window 2: c, and the layers' last inputs
    def forward(self, tokens, s0, s1, s2):
        logits, state = self.model.step(tokens, (s0, s1, s2))
        return (logits, *state)


STATE_NAMES = {"lstm": ["h", "c"], "gru": ["h"], "rnn": ["h"]}


def export_onnx(checkpoint: str | Path, out: str | Path) -> tuple[Path, Path]:
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise RnnlabError("ONNX export needs onnx and onnxscript: pip install 'rnnlab[onnx]'") from None
    ckpt = load_checkpoint(checkpoint, weights_only=True)
    model = ckpt.build_model("cpu")
    state = tuple(s.detach().clone() for s in model.init_state(2))
    names = STATE_NAMES.get(ckpt.config.model.cell) or ["c", "x_first", "x_rest"][:len(state)]
    batch = torch.export.Dim("batch", min=1, max=65536)
    out = Path(out).with_suffix(".onnx")
    graph = {1: _StepGraph, 2: _StepGraph2, 3: _StepGraph3}[len(state)](model)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed" notices
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph, (torch.zeros(2, dtype=torch.long), *state), dynamo=True, verbose=False,
                input_names=["tokens", *names], output_names=["logits", *[f"{n}_out" for n in names]],
                dynamic_shapes=({0: batch}, *({1: batch} for _ in names)))
    except Exception as exc:  # the exporter's errors are long; the user gets one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RnnlabError(f"ONNX export of this {ckpt.config.model.cell} model failed: {first}") from None
    atomic_write(out, lambda tmp: program.save(tmp))
    meta = {"format": 1, "vocab": ckpt.vocab.to_dict(), "state_names": names,
            "state_shapes": [[s.shape[0], s.shape[2]] for s in state],
            "initial_state": [p.detach()[:, 0].tolist() for p in model.initial_state] or None,
            "source": str(ckpt.path), "sampling": sampling_defaults(ckpt.config.train)}
    meta_path = out.with_suffix(".json")
    atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8"))
    return out, meta_path
