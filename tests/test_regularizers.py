"""AWD-LSTM's regularizers: off in eval mode, masks shared across time, refreshed per sequence, AR/TAR."""

import argparse

import pytest
import torch
import torch.nn.functional as F

from rnnlab.config import ModelConfig, add_flags, overrides_from_args
from rnnlab.errors import ConfigError
from rnnlab.models.cells import lstm_reference_step
from rnnlab.models.lm import RecurrentLM
from rnnlab.models.regularizers import drop_connect, embedding_dropout, locked_dropout

ALL_ON = dict(dropout_embedding=0.3, dropout_input=0.3, dropout_hidden=0.3, dropout_output=0.3, weight_drop=0.5,
              weight_drop_input=0.2, dropout_last_input=0.4, dropout_recurrent=0.2,
              activation_regularization=2.0, temporal_activation_regularization=1.0)


def twin_models(**regularizers):
    torch.manual_seed(0)
    base = ModelConfig(num_layers=2, hidden_size=12, embedding_size=6, dropout=0.0)
    plain = RecurrentLM(base, 9)
    regular = RecurrentLM(ModelConfig(**{**base.__dict__, **regularizers}), 9)
    regular.load_state_dict(plain.state_dict())
    return plain, regular


def test_every_regularizer_is_off_in_eval_mode():
    plain, regular = twin_models(**ALL_ON)
    tokens, targets = torch.randint(0, 9, (3, 7)), torch.randint(0, 9, (3, 7))
    plain.eval(), regular.eval()
    a, loss_a, _ = plain(tokens, targets=targets)
    b, loss_b, _ = regular(tokens, targets=targets)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(loss_a, loss_b)  # no AR/TAR in the evaluation loss
    regular.train()
    assert not torch.allclose(regular(tokens, targets=targets)[1], loss_b)


def test_weight_drop_uses_one_mask_for_the_whole_sequence_and_a_new_one_next_time():
    _, model = twin_models(weight_drop=0.5)
    model.train()
    tokens = torch.randint(0, 9, (2, 6))
    torch.manual_seed(42)
    out, _, _ = model(tokens)
    torch.manual_seed(42)  # draw the same masks, then run every step with them by hand
    dropped = [drop_connect(model.layers.layer_weights(k)[1], 0.5, True) for k in range(2)]
    x = model.embed(tokens)
    h = [torch.zeros(2, 12) for _ in range(2)]
    c = [torch.zeros(2, 12) for _ in range(2)]
    outputs = []
    for t in range(6):
        inp = x[:, t]
        for k in range(2):
            w_ih, _, b_ih, b_hh = model.layers.layer_weights(k)
            h[k], c[k] = lstm_reference_step(inp, h[k], c[k], w_ih, dropped[k], b_ih, b_hh)
            inp = h[k]
        outputs.append(model.head(inp))
    torch.testing.assert_close(out, torch.stack(outputs, 1), atol=1e-5, rtol=1e-5)
    again, _, _ = model(tokens)
    assert not torch.allclose(out, again)  # the next sequence gets a fresh mask


def test_locked_dropout_shares_its_mask_across_time():
    torch.manual_seed(0)
    out = locked_dropout(torch.ones(4, 10, 32), 0.5, True)
    zeros = out == 0
    assert torch.equal(zeros, zeros[:, :1].expand_as(zeros))  # the same units are dropped at every step
    assert zeros.any() and not zeros.all()
    assert torch.equal(locked_dropout(torch.ones(2, 3, 4), 0.5, False), torch.ones(2, 3, 4))


def test_embedding_dropout_drops_whole_tokens():
    torch.manual_seed(1)
    weight = torch.randn(50, 8) + 5.0
    dropped = embedding_dropout(weight, 0.5, True)
    rows_zero = (dropped == 0).all(dim=1)
    assert rows_zero.any() and not rows_zero.all()
    kept = ~rows_zero
    torch.testing.assert_close(dropped[kept], weight[kept] * 2)  # kept rows are rescaled by 1/(1-p)


def test_ar_and_tar_are_added_to_the_training_loss():
    _, model = twin_models(activation_regularization=2.0, temporal_activation_regularization=3.0)
    model.train()
    tokens, targets = torch.randint(0, 9, (2, 5)), torch.randint(0, 9, (2, 5))
    logits, loss, _ = model(tokens, targets=targets)
    hidden, _ = model.layers(model.embed(tokens))
    expected = (F.cross_entropy(logits.reshape(-1, 9), targets.reshape(-1)) + 2.0 * hidden.pow(2).mean()
                + 3.0 * (hidden[:, 1:] - hidden[:, :-1]).pow(2).mean())
    torch.testing.assert_close(loss, expected)


def test_flags_and_validation():
    parser = argparse.ArgumentParser()
    add_flags(parser, "model", ModelConfig)
    args = parser.parse_args(["--weight-drop", "0.5", "--ar", "2", "--tar", "1", "--dropout-embedding", "0.1",
                              "--dropout-input", "0.2", "--dropout-hidden", "0.2", "--dropout-output", "0.3"])
    assert overrides_from_args(args)["model"]["activation_regularization"] == 2.0
    with pytest.raises(ConfigError, match="weight_drop must be in"):
        ModelConfig(weight_drop=1.0).validate()
    with pytest.raises(ConfigError, match="needs an embedding"):
        ModelConfig(embedding_size=0, dropout_embedding=0.1).validate()


def test_the_last_layer_gets_its_own_input_dropout(monkeypatch):
    import rnnlab.models.lm as lm

    rates = []

    def recording(x, p, training):
        rates.append(p)
        return x

    monkeypatch.setattr(lm, "locked_dropout", recording)
    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(num_layers=3, hidden_size=8, embedding_size=4, dropout=0.0, dropout_input=0.1,
                                    dropout_hidden=0.2, dropout_last_input=0.5, dropout_output=0.3), 7).train()
    model(torch.randint(0, 7, (2, 4)))
    assert rates == [0.1, 0.2, 0.5, 0.3]  # input, layer 1 -> 2, layer 2 -> 3 (the last), output


def test_recurrent_candidate_dropout_equals_the_fused_lstm_without_dropout_and_changes_training():
    from rnnlab.models.cells import _lstm_with_candidate_dropout

    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(num_layers=1, hidden_size=8, embedding_size=4, dropout=0.0), 7)
    stack, x = model.layers, torch.randn(2, 6, 4)
    w_ih, w_hh, b_ih, b_hh = stack.layer_weights(0)
    state = stack.init_state(2)
    fused, fused_state = stack(x, state)
    stepped, stepped_state = _lstm_with_candidate_dropout(x, state, w_ih, w_hh, b_ih + b_hh, 1e-12)
    torch.testing.assert_close(stepped, fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stepped_state[1], fused_state[1], atol=1e-5, rtol=1e-5)
    stack.train()
    dropped, _ = stack(x, state, dropout_recurrent=0.5)
    assert not torch.allclose(dropped, fused)


def test_input_weight_drop_changes_training_only():
    plain, regular = twin_models(weight_drop_input=0.5)
    tokens = torch.randint(0, 9, (2, 5))
    regular.train()
    assert not torch.allclose(plain.eval()(tokens)[0], regular(tokens)[0])


def test_lstm_only_regularizers_are_refused_elsewhere():
    with pytest.raises(ConfigError, match="needs --cell lstm"):
        ModelConfig(cell="gru", dropout_recurrent=0.1).validate()
    with pytest.raises(ConfigError, match="weight_drop_input is for lstm"):
        ModelConfig(cell="qrnn", weight_drop_input=0.1).validate()
    with pytest.raises(ConfigError, match="dropout_last_input must be in"):
        ModelConfig(dropout_last_input=1.5).validate()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("awd", [dict(weight_drop=0.3), dict(dropout_hidden=0.2), dict(weight_drop_input=0.2)])
def test_plain_dropout_between_layers_still_applies_with_awd_options(cell, awd):
    """The per-layer path (taken for AWD options) must drop between layers as the fused call does."""
    torch.manual_seed(0)
    base = ModelConfig(cell=cell, num_layers=2, hidden_size=12, embedding_size=6, **awd)
    without = RecurrentLM(ModelConfig(**{**base.__dict__, "dropout": 0.0}), 9)
    with_dropout = RecurrentLM(ModelConfig(**{**base.__dict__, "dropout": 0.5}), 9)
    with_dropout.load_state_dict(without.state_dict())
    x = with_dropout.embed(torch.randint(0, 9, (3, 5)))
    regularizers = without.train()._layer_regularizers()
    torch.manual_seed(7)
    a, _ = without.layers(x, None, **regularizers)
    torch.manual_seed(7)
    b, _ = with_dropout.train().layers(x, None, **regularizers)
    assert not torch.allclose(a, b)
    with_dropout.layers.dropout = 0.0  # the only difference between the two
    torch.manual_seed(7)
    c, _ = with_dropout.layers(x, None, **regularizers)
    torch.testing.assert_close(a, c)


def test_weight_drop_keeps_the_fused_kernel_and_trains_the_one_parameter(monkeypatch):
    import rnnlab.models.cells as cells
    _, model = twin_models(weight_drop=0.5)
    model.train()
    calls = {"lstm": 0, "stepwise": 0}
    fused = torch.lstm

    def counting_lstm(*args):
        calls["lstm"] += 1
        return fused(*args)

    def stepwise(*args):
        calls["stepwise"] += 1
        raise AssertionError("the step-by-step path must not run for weight drop")

    monkeypatch.setattr(torch, "lstm", counting_lstm)
    monkeypatch.setattr(cells, "_lstm_with_candidate_dropout", stepwise)
    masks = []
    real_drop = cells.drop_connect

    def recording_drop(weight, p, training):
        dropped = real_drop(weight, p, training)
        if p:
            masks.append((dropped == 0).detach())
        return dropped

    monkeypatch.setattr(cells, "drop_connect", recording_drop)
    tokens = torch.randint(0, 9, (3, 8))
    _, loss, _ = model(tokens, targets=torch.randint(0, 9, (3, 8)))
    loss.backward()
    assert calls == {"lstm": 2, "stepwise": 0}  # one fused call per layer
    names = dict(model.named_parameters())
    assert isinstance(names["layers.weight_hh_l0"], torch.nn.Parameter)  # no monkeypatched raw weight
    for layer, dropped in enumerate(masks):
        grad = names[f"layers.weight_hh_l{layer}"].grad
        assert dropped.any() and torch.all(grad[dropped] == 0)  # dropped connections get no gradient
        assert grad[~dropped].abs().sum() > 0
