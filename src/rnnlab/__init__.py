"""rnnlab: train, sample and evaluate recurrent language models (RNN, GRU, LSTM) on PyTorch."""

from rnnlab.config import DataConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from rnnlab.data.corpus import prepare_corpus
from rnnlab.data.vocab import CharVocab
from rnnlab.evaluation import EvalResult, evaluate_tokens
from rnnlab.models.lm import RecurrentLM
from rnnlab.sampling import beam_search, generate, sample_next_token
from rnnlab.training.checkpoint import load_checkpoint, save_checkpoint
from rnnlab.training.loop import train

__version__ = "0.1.0"
__all__ = ["CharVocab", "DataConfig", "EvalResult", "ModelConfig", "RecurrentLM", "RunConfig", "SampleConfig",
           "TrainConfig", "beam_search", "evaluate_tokens", "generate", "load_checkpoint", "prepare_corpus",
           "sample_next_token", "save_checkpoint", "train"]
