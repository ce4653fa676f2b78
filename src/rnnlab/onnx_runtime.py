"""Run an exported rnnlab model with onnxruntime and NumPy only: no PyTorch needed.

    from rnnlab.onnx_runtime import OnnxModel
    model = OnnxModel("model.onnx")            # reads model.json beside it
    print(model.complete("ROMEO:", length=200, temperature=0.8, seed=1))

Sampling here is the same exponential race as rnnlab's sampler (argmax of logits/T - log E,
E ~ Exp(1)), with NumPy's generator; temperature only (no top-k/top-p).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rnnlab.data.vocab import vocab_from_dict  # NumPy only (BPE vocabularies also need `tokenizers`)


class OnnxModel:
    def __init__(self, path: str | Path):
        import onnxruntime

        path = Path(path)
        self.meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        self.vocab = vocab_from_dict(self.meta["vocab"])
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def init_state(self, batch_size: int) -> tuple[np.ndarray, ...]:
        learned = self.meta.get("initial_state")
        if learned:
            return tuple(np.repeat(np.asarray(s, np.float32)[:, None, :], batch_size, axis=1) for s in learned)
        return tuple(np.zeros((first, batch_size, last), np.float32) for first, last in self.meta["state_shapes"])

    def step(self, tokens: np.ndarray, state: tuple[np.ndarray, ...]):
        feeds = {"tokens": np.asarray(tokens, np.int64), **dict(zip(self.meta["state_names"], state, strict=True))}
        logits, *new_state = self.session.run(None, feeds)
        return logits, tuple(new_state)

    def complete(self, prompt: str, length: int = 200, temperature: float = 1.0, seed: int = 0) -> str:
        """Continue `prompt` for `length` tokens (characters or words the model does not know are dropped)."""
        rng = np.random.default_rng(seed)
        prompt = self.vocab.drop_unknown(prompt)
        ids = self.vocab.encode(prompt).tolist() if prompt else self.vocab.line_start()
        state = self.init_state(1)
        size = len(self.vocab)
        logits = np.zeros((1, size), np.float32)
        for token in ids:
            logits, state = self.step(np.array([token]), state)
        out = []
        for _ in range(length):
            noise = np.maximum(rng.exponential(size=size), 1e-30)
            scores = logits[0].astype(np.float64) / temperature - np.log(noise)
            token = int(np.argmax(scores))
            out.append(token)
            logits, state = self.step(np.array([token]), state)
        detokenizer = self.vocab.detokenizer(after=prompt)
        return "".join(detokenizer.push(token) for token in out)
