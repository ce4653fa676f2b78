"""Export a checkpoint's single-character step to ONNX, for hosts without PyTorch.

The graph is the model's own step (`RecurrentLM.step`, fused kernel included), traced by torch's
ONNX exporter with a dynamic batch: inputs `tokens` (B,) int64 and the state (`h`, and `c` for
LSTM, each (L, B, H)); outputs `logits` (B, V) and the new state. Next to FILE.onnx goes
FILE.json: the vocabulary, the state's names and shapes, and a learned initial state if the model
has one. `rnnlab.onnx_runtime` runs both with onnxruntime and NumPy only.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from rnnlab.errors import RnnlabError
from rnnlab.training.checkpoint import atomic_write, load_checkpoint


class _StepGraph(torch.nn.Module):
    """tokens (B,), h -> logits, h' (GRU and RNN); the exporter wants named, fixed inputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, h):
        logits, (h,) = self.model.step(tokens, (h,))
        return logits, h


class _LstmStepGraph(_StepGraph):
    def forward(self, tokens, h, c):
        logits, (h, c) = self.model.step(tokens, (h, c))
        return logits, h, c


def export_onnx(checkpoint: str | Path, out: str | Path) -> tuple[Path, Path]:
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise RnnlabError("ONNX export needs onnx and onnxscript: pip install 'rnnlab[onnx]'") from None
    ckpt = load_checkpoint(checkpoint, weights_only=True)
    model = ckpt.build_model("cpu")
    names = ["h", "c"] if ckpt.config.model.cell == "lstm" else ["h"]
    state = tuple(s.detach().clone() for s in model.init_state(2))
    batch = torch.export.Dim("batch", min=1, max=65536)
    out = Path(out).with_suffix(".onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            (_LstmStepGraph if len(names) == 2 else _StepGraph)(model), (torch.zeros(2, dtype=torch.long), *state),
            dynamo=True, verbose=False,
            input_names=["tokens", *names], output_names=["logits", *[f"{n}_out" for n in names]],
            dynamic_shapes=({0: batch}, *({1: batch} for _ in names)))
    atomic_write(out, lambda tmp: program.save(tmp))
    meta = {"format": 1, "vocab": ckpt.vocab.to_dict(), "state_names": names,
            "state_shape": [ckpt.config.model.num_layers, ckpt.config.model.hidden_size],
            "initial_state": [p.detach()[:, 0].tolist() for p in model.initial_state] or None,
            "source": str(ckpt.path)}
    meta_path = out.with_suffix(".json")
    atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8"))
    return out, meta_path
