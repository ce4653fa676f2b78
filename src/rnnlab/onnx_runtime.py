"""Run an exported rnnlab model with onnxruntime and NumPy only: no PyTorch needed.

    from rnnlab.onnx_runtime import OnnxModel
    model = OnnxModel("model.onnx")            # reads model.json beside it
    print(model.complete("ROMEO:", length=200, temperature=0.8, seed=1))

OnnxModel is a stepper for rnnlab's one sampler (rnnlab.sampling, NumPy too): the prompt policy,
temperature, top-k, top-p, argmax, windowed sampling and the seed mean what they mean for
`rnnlab sample` and the server, and the same seed gives the same text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rnnlab.config import SampleConfig
from rnnlab.data.vocab import vocab_from_dict  # NumPy only (BPE vocabularies also need `tokenizers`)
from rnnlab.sampling import complete_texts, prompt_ids


class OnnxModel:
    takes_numpy = True  # the sampler hands it NumPy arrays

    def __init__(self, path: str | Path):
        import onnxruntime

        path = Path(path)
        self.meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        self.vocab = vocab_from_dict(self.meta["vocab"])
        self.vocab_size = len(self.vocab)
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

    def prime(self, tokens: np.ndarray, state: tuple[np.ndarray, ...]):
        """Read a prompt (B, T): the graph is one step, so it steps through it."""
        logits = None
        for t in range(tokens.shape[1]):
            logits, state = self.step(tokens[:, t], state)
        return logits, state

    def complete(self, prompt: str, length: int = 200, temperature: float = 1.0, seed: int = 0, top_k: int = 0,
                 top_p: float = 1.0, **settings) -> str:
        """Continue `prompt` for `length` tokens (characters or words the model does not know are dropped);
        other SampleConfig settings (argmax, sampling, window, beam_width) may be given too."""
        config = SampleConfig(**{**self.meta.get("sampling", {}), "length": length, "temperature": temperature,
                                 "seed": seed, "top_k": top_k, "top_p": top_p, **settings})
        config.validate()
        return complete_texts(self, self.vocab, prompt_ids(self.vocab, prompt), config)[0]
