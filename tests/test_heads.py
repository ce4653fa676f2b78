"""Output heads: tied softmax, adaptive softmax, mixture of softmaxes — owned, trained and saved by the model."""

import math

import pytest
import torch
from conftest import tiny_config

from rnnlab.config import ModelConfig, SampleConfig
from rnnlab.errors import ConfigError
from rnnlab.models.lm import RecurrentLM
from rnnlab.sampling import generate, make_stepper
from rnnlab.training.checkpoint import load_checkpoint
from rnnlab.training.loop import train


def model_with(**settings):
    torch.manual_seed(0)
    base = dict(num_layers=2, hidden_size=16, embedding_size=8, dropout=0.0)
    return RecurrentLM(ModelConfig(**{**base, **settings}), 40).eval()


def test_tied_head_shares_storage_with_the_embedding():
    model = model_with(tie_weights=True)
    assert model.head.weight is model.embedding.weight
    assert model.head.weight.data_ptr() == model.embedding.weight.data_ptr()
    assert model.projection.in_features == 16 and model.projection.out_features == 8  # H -> E
    untied = model_with()
    assert model.num_parameters() < untied.num_parameters()
    logits, _, _ = model(torch.randint(0, 40, (2, 5)))
    assert logits.shape == (2, 5, 40)


def test_tying_needs_an_embedding():
    with pytest.raises(ConfigError, match="embedding-size > 0"):
        ModelConfig(embedding_size=0, tie_weights=True).validate()


@pytest.mark.parametrize("head, extra", [("adaptive", {"adaptive_cutoffs": "5,20"}), ("mos", {"mos_experts": 3}),
                                         ("adaptive", {"adaptive_cutoffs": "5,20", "tie_weights": True}),
                                         ("mos", {"mos_experts": 3, "tie_weights": True})])
def test_heads_give_distributions_and_their_loss_is_the_nll(head, extra):
    model = model_with(head=head, **extra)
    tokens, targets = torch.randint(0, 40, (3, 6)), torch.randint(0, 40, (3, 6))
    log_probs, _, _ = model(tokens)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 6))
    _, loss, _ = model(tokens, targets=targets)
    expected = -log_probs.gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(loss, expected)


def test_tied_adaptive_head_uses_the_embedding_rows():
    model = model_with(head="adaptive", adaptive_cutoffs="5,20", tie_weights=True)
    head = model.head_module
    assert head.weight is model.embedding.weight
    names = [name for name, _ in model.named_parameters()]
    assert not any(name.startswith("head_module") and p.shape == (40, 8) for name, p in model.named_parameters())
    assert len(names) == len(set(names)) and "embedding.weight" in names
    own = sum(p.numel() for p in head.parameters())
    assert own == 8 * 2 + 2 + 2 * 8 * 8 + 40  # cluster logits, two E x E projections, a bias per id: no V x E
    model.train()
    _, loss, _ = model(torch.randint(0, 40, (2, 5)), targets=torch.tensor([[0, 7, 25, 39, 3]] * 2))
    loss.backward()
    assert model.embedding.weight.grad[[7, 25, 39]].abs().sum() > 0  # output rows of tail ids get gradient


def test_adaptive_training_never_builds_full_logits():
    model = model_with(head="adaptive")
    model.train()
    logits, loss, _ = model(torch.randint(0, 40, (2, 5)), targets=torch.randint(0, 40, (2, 5)))
    assert logits is None and loss.requires_grad


def test_bad_adaptive_cutoffs():
    with pytest.raises(ConfigError, match="must increase and stay inside"):
        model_with(head="adaptive", adaptive_cutoffs="30,10")
    with pytest.raises(ConfigError, match="integers"):
        ModelConfig(head="adaptive", adaptive_cutoffs="a,b").validate()


@pytest.mark.parametrize("settings", [{"head": "adaptive"}, {"head": "mos", "mos_experts": 2}, {"tie_weights": True},
                                      {"head": "adaptive", "tie_weights": True},
                                      {"head": "mos", "mos_experts": 2, "tie_weights": True}])
def test_every_head_trains_saves_and_samples(tmp_path, settings):
    config = tiny_config(tmp_path, max_steps=4, eval_every=2)
    for name, value in settings.items():
        setattr(config.model, name, value)
    result = train(config, progress_bar=False)
    assert math.isfinite(result.val_loss)
    model = load_checkpoint(result.best_checkpoint).build_model()
    if settings.get("tie_weights"):
        tied = model.head if model.head is not None else model.head_module
        tied = tied.decoder if settings.get("head") == "mos" else tied
        assert tied.weight is model.embedding.weight
    tokens = list(generate(make_stepper(model, SampleConfig()), [1, 2], SampleConfig(length=10)))
    assert len(tokens) == 10


def test_a_tied_mixture_of_softmaxes_decodes_with_the_embedding():
    model = model_with(head="mos", mos_experts=3, tie_weights=True)
    assert model.head_module.decoder.weight is model.embedding.weight
    names = [name for name, _ in model.named_parameters()]
    assert "head_module.decoder.weight" not in names and "embedding.weight" in names  # one tensor, counted once
    assert model.num_parameters() < model_with(head="mos", mos_experts=3).num_parameters()
    model.train()
    _, loss, _ = model(torch.randint(0, 5, (2, 5)), targets=torch.full((2, 5), 39))
    loss.backward()
    assert model.embedding.weight.grad[39].abs().sum() > 0  # id 39 is only ever an output: its row learns there
