"""The paper's training schemes: loss positions, weights, learned h0, state transfer, resets, eq. 8."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from rnnlab.config import ModelConfig, TrainConfig
from rnnlab.data.batching import EquidistantBatcher, RandomWindowBatcher, VariableLengthBatcher
from rnnlab.errors import ConfigError
from rnnlab.models.lm import RecurrentLM
from rnnlab.training.loop import train
from rnnlab.training.schemes import plan_sequence, position_weights
from rnnlab.training.step import TrainingStep


@pytest.fixture
def model():
    torch.manual_seed(0)
    return RecurrentLM(ModelConfig(num_layers=1, hidden_size=8, embedding_size=4, dropout=0.0), 5)


def per_position_ce(model, tokens, targets):
    logits, _, _ = model(tokens)
    return F.cross_entropy(logits.reshape(-1, 5), targets.reshape(-1), reduction="none").view(targets.shape)


@pytest.mark.parametrize("positions, k3, decay, by_hand", [
    ("all", 1, "none", lambda ce: ce.mean()),
    ("last", 1, "none", lambda ce: ce[:, -1].mean()),
    ("last-k", 2, "none", lambda ce: ce[:, -2:].mean()),
    ("all", 1, "linear", lambda ce: (ce * torch.tensor([0, 1 / 3, 2 / 3, 1])).sum() / (2 * 2)),
    ("all", 1, "exponential",
     lambda ce: (ce * torch.tensor([math.exp(-3), math.exp(-2), math.exp(-1), 1.0])).sum()
     / (2 * sum(math.exp(-i) for i in range(4)))),
])
def test_loss_positions_and_weights_give_the_hand_computed_loss(model, positions, k3, decay, by_hand):
    tokens, targets = torch.randint(0, 5, (2, 4)), torch.randint(0, 5, (2, 4))
    config = TrainConfig(seq_length=4, loss_positions=positions, k3=k3, loss_decay=decay)
    weights = position_weights(4, config)
    _, loss, _ = model(tokens, targets=targets, loss_weights=weights)
    torch.testing.assert_close(loss, by_hand(per_position_ce(model, tokens, targets)))


def test_learned_initial_state_gets_gradients_and_changes():
    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(num_layers=2, hidden_size=8, embedding_size=4), 5, learned_initial_state=True)
    assert [tuple(p.shape) for p in model.initial_state] == [(2, 1, 8), (2, 1, 8)]  # h0 and c0
    before = [p.detach().clone() for p in model.initial_state]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    step = TrainingStep(model, optimizer, "fp32", 5.0, torch.device("cpu"))
    step(torch.randint(0, 5, (3, 6)), torch.randint(0, 5, (3, 6)), None)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.initial_state)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.initial_state, strict=True))
    assert torch.equal(model.init_state(4)[0][:, 2], model.initial_state[0][:, 0])  # every sequence starts there


def test_state_transfer_carries_the_state_after_k1_positions(model):
    tokens, targets = torch.randint(0, 5, (2, 6)), torch.randint(0, 5, (2, 6))
    config = TrainConfig(seq_length=6, k1=2, batching="equidistant", state="carry")
    plan = plan_sequence(6, 0, config)
    assert plan.cuts == [2, 6] and plan.transfer_at == 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no update: compare states before/after
    loss, carried = TrainingStep(model, optimizer, "fp32", 0.0, torch.device("cpu"))(tokens, targets, None, plan)
    _, _, after_two = model(tokens[:, :2])
    for a, b in zip(carried, after_two, strict=True):
        torch.testing.assert_close(a, b)
    _, full_loss, _ = model(tokens, targets=targets)
    torch.testing.assert_close(loss, full_loss)  # cutting the forward pass does not change the loss


def test_reset_every_zeroes_the_state_at_the_right_tokens(model):
    config = TrainConfig(seq_length=8, reset_every=5, state="carry")
    assert plan_sequence(8, 0, config).resets == {5}
    # stream tokens 10 and 15 fall at positions 2 and 7 of the batch that starts at token 8
    assert plan_sequence(8, 8, config).cuts == [2, 7, 8] and plan_sequence(8, 8, config).resets == {2, 7}
    tokens, targets = torch.randint(0, 5, (1, 8)), torch.randint(0, 5, (1, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    state = tuple(torch.randn(1, 1, 8) for _ in range(2))
    loss, carried = TrainingStep(model, optimizer, "fp32", 0.0, torch.device("cpu"))(
        tokens, targets, state, plan_sequence(8, 0, config))
    _, _, expected = model(tokens[:, 5:], None)  # after the reset at token 5 the state started from zero
    for a, b in zip(carried, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_equation_8_offsets_and_the_circular_shift():
    tokens = np.arange(1000)
    batcher = EquidistantBatcher(tokens, batch_size=4, k2=10, k1=3)
    assert batcher.stream_length == 250 and batcher.batches_per_epoch == (250 - 11) // 3 + 1
    assert batcher.starts(0, 0).tolist() == [0, 250, 500, 750]
    assert batcher.starts(5, 0).tolist() == [15, 265, 515, 765]  # j * |D| / B + i * k1
    assert batcher.starts(0, 1).tolist() == [2, 252, 502, 752]  # rotated by k1 // 2 + 1 after an epoch
    first = batcher.next_batch()
    assert first.inputs[1].tolist() == list(range(250, 260)) and first.targets[1].tolist() == list(range(251, 261))
    second = batcher.next_batch()
    assert second.inputs[1].tolist() == list(range(253, 263)) and second.stream_position == 3
    for _ in range(batcher.batches_per_epoch - 2):
        batcher.next_batch()
    assert batcher.epoch == 1 and batcher.next_batch().inputs[0, 0].item() == 2


def test_equidistant_windows_wrap_around_the_end():
    batcher = EquidistantBatcher(np.arange(100), batch_size=2, k2=10, k1=10)
    batcher.epoch = 30  # a large rotation
    index_batch = batcher.next_batch()
    assert all(int(v) < 100 for v in index_batch.inputs.flatten())


def test_random_windows_are_reproducible_and_resumable():
    a = RandomWindowBatcher(np.arange(500), 3, 7, seed=1)
    b = RandomWindowBatcher(np.arange(500), 3, 7, seed=1)
    a.next_batch()
    b.load_state_dict(a.state_dict())
    x, y = a.next_batch(), b.next_batch()
    assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, x.inputs + 1)


def test_variable_lengths_scale_the_learning_rate():
    batcher = VariableLengthBatcher(np.arange(5000), 2, 20, seed=0)
    batches = [batcher.next_batch() for _ in range(30)]
    lengths = {b.inputs.shape[1] for b in batches}
    assert len(lengths) > 3 and min(lengths) >= 5
    assert all(math.isclose(b.lr_scale, b.inputs.shape[1] / 20) for b in batches)
    assert all(torch.equal(b.targets, b.inputs + 1) for b in batches)


@pytest.mark.parametrize("values, message", [
    ({"k1": 20, "seq_length": 10}, "k1 .* must be <= k2"),
    ({"k1": 5, "seq_length": 10}, "need --batching equidistant"),
    ({"reset_every": 5, "state": "zero"}, "needs --state carry"),
    ({"batching": "random"}, "random windows are unrelated"),
    ({"k3": 99, "seq_length": 10}, "k3"),
])
def test_inconsistent_scheme_settings(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values).validate()


@pytest.mark.parametrize("overrides", [
    {"batching": "equidistant", "k1": 16, "state": "carry"},
    {"batching": "equidistant", "k1": 8, "state": "learned", "loss_positions": "last"},
    {"batching": "random", "state": "zero", "loss_positions": "last-k", "k3": 4, "loss_decay": "linear"},
    {"batching": "variable", "state": "carry", "reset_every": 50},
])
def test_every_scheme_trains_and_resumes(tmp_path, overrides):
    result = train(tiny_config(tmp_path, max_steps=6, eval_every=3, **overrides), progress_bar=False)
    assert math.isfinite(result.val_loss)


def test_paper_architecture_layers_and_initialization():
    torch.manual_seed(0)
    config = ModelConfig(cell="lstm", num_layers=1, hidden_size=16, embedding_size=0, dropout=0.0,
                         architecture="paper", dense_size=32)
    model = RecurrentLM(config, 7)
    assert model.embedding is None and model.dense.out_features == 32 and model.head.in_features == 32
    _, w_hh, _, _ = model.layers.layer_weights(0)
    for gate in range(4):
        block = w_hh[gate * 16:(gate + 1) * 16]
        torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)  # orthogonal
    bound = math.sqrt(6 / (16 + 32))
    assert model.dense.weight.abs().max() <= bound and model.dense.bias.abs().sum() == 0  # Glorot uniform
    hidden = torch.randn(2, 3, 16)
    expected = model.head(F.leaky_relu(model.dense(hidden), 0.01))
    torch.testing.assert_close(model.output(hidden), expected)


def test_paper_architecture_presets_yield_to_explicit_settings():
    from rnnlab.config import build_run_config
    config = build_run_config(None, {"model": {"architecture": "paper"}, "train": {"batch_size": 8}})
    assert (config.model.embedding_size, config.model.dropout) == (0, 0.0)
    assert (config.train.learning_rate, config.train.grad_clip, config.train.batch_size) == (1e-3, 50.0, 8)
    with pytest.raises(ConfigError, match="one-hot"):
        build_run_config(None, {"model": {"architecture": "paper", "embedding_size": 8}})


def test_cpu_engine_matches_the_paper_architecture():
    from rnnlab.models.cpu_engine import CpuStepEngine
    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(num_layers=2, hidden_size=16, embedding_size=0, architecture="paper",
                                    dense_size=24, dropout=0.0), 9).eval()
    engine = CpuStepEngine(model)
    with torch.inference_mode():
        a, sa = model.prime(torch.tensor([[1, 2, 3]]))
        b, sb = engine.prime(torch.tensor([[1, 2, 3]]))
        for token in [4, 5, 6]:
            a, sa = model.step(torch.tensor([token]), sa)
            b, sb = engine.step(torch.tensor([token]), sb)
            assert (a - b).abs().max() < 1e-4


def test_windowed_and_progressive_sampling_start_from_the_same_distribution():
    from rnnlab.config import SampleConfig
    from rnnlab.sampling import generate, start
    torch.manual_seed(3)
    model = RecurrentLM(ModelConfig(num_layers=2, hidden_size=16, embedding_size=0), 9,
                        learned_initial_state=True).eval()
    with torch.no_grad():
        for p in model.initial_state:
            p.normal_()  # a learned h0 that is not zero
    prime = [1, 2, 3, 4, 5, 6]
    with torch.inference_mode():
        progressive_logits, _ = start(model, prime, 1)
        windowed_logits, _ = start(model, prime[-4:], 1)  # what windowed sampling reads with --window 4
        reference, _, _ = model(torch.tensor([prime[-4:]]))
    torch.testing.assert_close(torch.from_numpy(windowed_logits), reference[:, -1])
    assert not np.allclose(progressive_logits, windowed_logits)  # a longer context does change it
    progressive = list(generate(model, prime[-4:], SampleConfig(length=1, seed=5)))
    windowed = list(generate(model, prime[-4:], SampleConfig(length=1, seed=5, sampling="windowed", window=4)))
    assert np.array_equal(progressive[0], windowed[0])
