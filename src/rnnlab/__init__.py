"""rnnlab: train, sample and evaluate recurrent language models (RNN, GRU, LSTM, QRNN) on PyTorch.

    import rnnlab
    result = rnnlab.train("input.txt", max_minutes=6, hidden_size=256)  # any config field as a keyword
    lm = rnnlab.load(result.checkpoint_dir)
    print(lm.complete("ROMEO:", length=200, temperature=0.8), lm.score("To be, or not to be"))

The public API is imported lazily (PEP 562), so tools that only prepare text never import torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "DataConfig": "rnnlab.config", "ModelConfig": "rnnlab.config", "RunConfig": "rnnlab.config",
    "SampleConfig": "rnnlab.config", "TrainConfig": "rnnlab.config",
    "prepare_corpus": "rnnlab.data.corpus", "CharVocab": "rnnlab.data.vocab",
    "EvalResult": "rnnlab.evaluation", "evaluate_tokens": "rnnlab.evaluation",
    "RecurrentLM": "rnnlab.models.lm",
    "beam_search": "rnnlab.sampling", "generate": "rnnlab.sampling", "sample_next_token": "rnnlab.sampling",
    "load_checkpoint": "rnnlab.training.checkpoint", "save_checkpoint": "rnnlab.training.checkpoint",
    "train": "rnnlab.api", "load": "rnnlab.api", "LanguageModel": "rnnlab.api", "resolve_run": "rnnlab.training.run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rnnlab' has no attribute {name!r}")
