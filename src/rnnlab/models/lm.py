"""RecurrentLM: ids -> (embedding | one-hot) -> recurrent layers -> dropout -> linear head.

Dimension legend: B = batch, T = time, V = vocabulary, E = embedding width, H = hidden units,
L = layers. The model knows nothing of files, characters or the CLI: ids in, tensors out.
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.config import ModelConfig
from rnnlab.models.cells import RecurrentStack, State
from rnnlab.models.heads import AdaptiveHead, MixtureOfSoftmaxes, TiedAdaptiveHead
from rnnlab.models.qrnn import QRNNStack
from rnnlab.models.regularizers import (
    activation_penalty,
    embedding_dropout,
    locked_dropout,
    temporal_activation_penalty,
)

LEAKINESS = 0.01  # the paper's leaky ReLU slope


class RecurrentLM(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int, learned_initial_state: bool = False):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, config.embedding_size) if config.embedding_size else None
        input_size = config.embedding_size or vocab_size
        if config.cell == "qrnn":
            self.layers = QRNNStack(input_size, config.hidden_size, config.num_layers, config.dropout,
                                    config.qrnn_window, config.qrnn_pooling)
        else:
            self.layers = RecurrentStack(config.cell, input_size, config.hidden_size, config.num_layers,
                                         config.dropout)
        self.output_dropout = nn.Dropout(config.dropout)
        # The paper's architecture puts a dense leaky-ReLU layer between the LSTM and the output.
        self.dense = nn.Linear(config.hidden_size, config.dense_size) if config.architecture == "paper" else None
        width = config.dense_size if self.dense is not None else config.hidden_size
        # Tied weights: the output layer reuses the embedding, so its input must be embedding-wide.
        self.projection = None
        if config.tie_weights and width != config.embedding_size:
            self.projection = nn.Linear(width, config.embedding_size, bias=False)
            width = config.embedding_size
        self.head = nn.Linear(width, vocab_size) if config.head == "softmax" else None
        self.head_module = self._build_head_module(width)
        if config.tie_weights and self.head is not None:
            self.head.weight = self.embedding.weight  # one Parameter, trained and saved as one
        if config.tie_weights and config.head == "mos":  # the experts share one decoder: tie it (Yang et al.)
            self.head_module.decoder.weight = self.embedding.weight
        if config.architecture == "paper":
            self._paper_init()
        # The paper's learned initial state h0 (and c0 for LSTM), one (L, 1, H) tensor each, trained
        # with the rest of the model; every sequence (and every sample) starts from it.
        self.initial_state = nn.ParameterList(
            [nn.Parameter(torch.zeros(s.shape)) for s in self.layers.init_state(1)] if learned_initial_state else [])

    def _build_head_module(self, width: int) -> nn.Module | None:
        """The output layer when it is not a plain linear softmax."""
        cfg, vocab_size = self.config, self.vocab_size
        if cfg.head == "adaptive" and cfg.tie_weights:
            return TiedAdaptiveHead(self.embedding, cfg.cutoffs(vocab_size))
        if cfg.head == "adaptive":
            return AdaptiveHead(width, vocab_size, cfg.cutoffs(vocab_size))
        if cfg.head == "mos":
            return MixtureOfSoftmaxes(width, vocab_size, cfg.mos_experts)
        return None

    def _paper_init(self) -> None:
        """Orthogonal recurrent weights (per gate block), Glorot-uniform dense layers, zero biases."""
        h = self.config.hidden_size
        for layer in range(self.config.num_layers):
            _, w_hh, bias, _ = self.layers.layer_weights(layer)
            with torch.no_grad():
                for gate in range(w_hh.shape[0] // h):
                    nn.init.orthogonal_(w_hh[gate * h:(gate + 1) * h])
        for linear in (self.dense, self.head):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """Top recurrent outputs (..., H) -> what the output layer reads (dropout, dense, projection)."""
        hidden = self.output_dropout(hidden)
        if self.dense is not None:
            hidden = F.leaky_relu(self.dense(hidden), negative_slope=LEAKINESS)
        if self.projection is not None:
            hidden = self.projection(hidden)
        return hidden

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """Top recurrent outputs (..., H) -> logits (..., V) (log-probabilities for adaptive and mos heads)."""
        features = self.head_input(hidden)
        return self.head(features) if self.head is not None else self.head_module(features)

    def init_state(self, batch_size: int, device=None) -> State:
        """The state every sequence starts from: zeros, or the learned h0/c0 repeated for the batch."""
        if len(self.initial_state):
            return tuple(p.expand(-1, batch_size, -1).contiguous() for p in self.initial_state)
        reference = self._reference_parameter()
        return self.layers.init_state(batch_size, device if device is not None else reference.device, reference.dtype)

    def _reference_parameter(self) -> torch.Tensor:
        """Where and in what dtype the model lives."""
        return next(self.layers.parameters())

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, E) embeddings (whole tokens dropped in training), or (B, T, V) one-hot."""
        if self.embedding is not None:
            weight = embedding_dropout(self.embedding.weight, self.config.dropout_embedding, self.training)
            return F.embedding(tokens, weight)
        return F.one_hot(tokens, self.vocab_size).to(self._reference_parameter().dtype)

    def forward(self, tokens: torch.Tensor, state: State | None = None, targets: torch.Tensor | None = None,
                loss_weights: torch.Tensor | None = None):
        """tokens (B, T) -> logits (B, T, V), cross-entropy in nats (if targets), final state.

        The loss is the mean over all positions, or with `loss_weights` (T,) the weighted mean
        sum_t w_t CE_t / sum_t w_t (averaged over the batch).
        """
        cfg, training = self.config, self.training
        hidden, raw, state = self.recurrent(tokens, state)
        logits, loss = None, None
        if targets is None or self.head is not None:
            logits = self.output(hidden)
        if targets is not None:
            if self.head is not None:
                per_token = F.cross_entropy(logits.reshape(-1, self.vocab_size).float(), targets.reshape(-1),
                                            reduction="none").view(targets.shape)
            else:  # the adaptive head scores targets without building full logits
                per_token = self.head_module.token_nll(self.head_input(hidden), targets)
            if loss_weights is None:
                loss = per_token.mean()
            else:
                loss = (per_token * loss_weights).sum() / (loss_weights.sum() * targets.shape[0])
            if training:  # AR and TAR shape the activations while training; evaluation reports pure CE
                loss = loss + activation_penalty(hidden.float(), cfg.activation_regularization) \
                    + temporal_activation_penalty(raw.float(), cfg.temporal_activation_regularization)
        return logits, loss, state

    def recurrent(self, tokens: torch.Tensor, state: State | None = None):
        """tokens (B, T) -> the top layer's outputs (B, T, H) after output dropout, the same before it
        (for TAR), and the final state: everything of the forward pass but the output layer."""
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        inputs = locked_dropout(self.embed(tokens), self.config.dropout_input, self.training)
        raw, state = self.layers(inputs, state, **self._layer_regularizers())
        return locked_dropout(raw, self.config.dropout_output, self.training), raw, state

    def _layer_regularizers(self) -> dict:
        """What the recurrent layers apply inside themselves while training (nothing in eval)."""
        cfg = self.config
        if not self.training:
            return {}
        last_input = cfg.dropout_hidden if cfg.dropout_last_input is None else cfg.dropout_last_input
        last = cfg.num_layers - 1
        regularizers = {"weight_drop": cfg.weight_drop}
        if cfg.dropout_hidden or last_input:
            def between(h, next_layer):
                return locked_dropout(h, last_input if next_layer == last else cfg.dropout_hidden, True)
            regularizers["between"] = between
        if cfg.weight_drop_input:
            regularizers["weight_drop_input"] = cfg.weight_drop_input
        if cfg.dropout_recurrent:
            regularizers["dropout_recurrent"] = cfg.dropout_recurrent
        return regularizers

    def prime(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Read a prompt (B, T) in one fused pass -> logits after its last token (B, V), state. (The output
        layer reads the last position only: windowed sampling and evaluation prime once per token.)"""
        hidden, _, state = self.recurrent(tokens.to(self._reference_parameter().device), state)
        return self.output(hidden[:, -1:])[:, 0], state

    def step(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """One time step for a batch of ids (B,) -> logits (B, V), new state."""
        tokens = tokens.to(self._reference_parameter().device)
        with _single_step_kernel(tokens.device):
            logits, _, state = self(tokens[:, None], state)
        return logits[:, 0], state

    def stepping(self):
        """Hold the single-step kernel over a whole generation, so it is switched once, not per step."""
        return _single_step_kernel(self._reference_parameter().device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


_SINGLE_STEPS = {"active": 0, "saved": True}
_SINGLE_STEPS_LOCK = threading.Lock()


@contextlib.contextmanager
def _single_step_kernel(device: torch.device):
    # oneDNN's RNN primitive is built for long sequences; called one step at a time on CPU it spends
    # its time re-creating the primitive (page faults), ~7x slower than the native kernel (measured,
    # torch 2.13). Its switch is process-wide, so it is counted: the first single step turns it off,
    # the last one to finish puts it back, and threads stepping at once (a server) never race on it.
    if device.type != "cpu":
        yield
        return
    with _SINGLE_STEPS_LOCK:
        if _SINGLE_STEPS["active"] == 0:
            _SINGLE_STEPS["saved"] = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        _SINGLE_STEPS["active"] += 1
    try:
        yield
    finally:
        with _SINGLE_STEPS_LOCK:
            _SINGLE_STEPS["active"] -= 1
            if _SINGLE_STEPS["active"] == 0:
                torch.backends.mkldnn.enabled = _SINGLE_STEPS["saved"]


def blog_lstm_parameter_count(vocab_size: int, hidden_size: int, num_layers: int) -> int:
    """The blog's formula for a one-hot LSTM with one bias per gate and a softmax layer."""
    v, n, layers = vocab_size, hidden_size, num_layers
    return 4 * (n * (v + n) + n) + (layers - 1) * 4 * (n * 2 * n + n) + v * n + v
