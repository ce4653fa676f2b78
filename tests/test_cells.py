import pytest
import torch

from rnnlab.config import ModelConfig
from rnnlab.models.cells import RecurrentStack, reference_forward
from rnnlab.models.lm import RecurrentLM, blog_lstm_parameter_count


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_fused_layers_match_reference_steps(cell):
    torch.manual_seed(0)
    stack = RecurrentStack(cell, input_size=5, hidden_size=7, num_layers=3).double()
    x = torch.randn(4, 6, 5, dtype=torch.double)
    state = tuple(torch.randn_like(s) for s in stack.init_state(4, dtype=torch.double))
    fused_out, fused_state = stack(x, state)
    ref_out, ref_state = reference_forward(stack, x, state)
    torch.testing.assert_close(fused_out, ref_out)
    for a, b in zip(fused_state, ref_state, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_fused_layers_match_torch_nn(cell):
    torch.manual_seed(0)
    ours = RecurrentStack(cell, 5, 7, 2)
    theirs = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](5, 7, 2, batch_first=True)
    with torch.no_grad():
        for layer in range(2):
            w_ih, w_hh, b_ih, b_hh = ours.layer_weights(layer)
            getattr(theirs, f"weight_ih_l{layer}").copy_(w_ih)
            getattr(theirs, f"weight_hh_l{layer}").copy_(w_hh)
            getattr(theirs, f"bias_ih_l{layer}").copy_(b_ih)
            getattr(theirs, f"bias_hh_l{layer}").copy_(b_hh)
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])


@pytest.mark.parametrize("vocab, hidden, layers", [(97, 512, 2), (65, 128, 3), (10, 16, 1)])
def test_one_hot_lstm_parameter_count_is_the_blog_formula(vocab, hidden, layers):
    model = RecurrentLM(ModelConfig(cell="lstm", num_layers=layers, hidden_size=hidden, embedding_size=0), vocab)
    assert model.num_parameters() == blog_lstm_parameter_count(vocab, hidden, layers)


def test_blog_formula_figures():
    # "For 512 neurons per layer, we get ca. 3.4 million parameters" (V = 97, 2 layers)
    assert round(blog_lstm_parameter_count(97, 512, 2) / 1e6, 1) == 3.4


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("embedding", [0, 8])
def test_forward_contract(cell, embedding):
    model = RecurrentLM(ModelConfig(cell=cell, num_layers=2, hidden_size=16, embedding_size=embedding), 11)
    tokens = torch.randint(0, 11, (3, 5))
    logits, loss, state = model(tokens)
    assert logits.shape == (3, 5, 11) and loss is None
    assert all(s.shape == (2, 3, 16) for s in state) and len(state) == (2 if cell == "lstm" else 1)
    logits2, loss2, _ = model(tokens, state, targets=tokens)
    assert loss2.ndim == 0 and loss2.item() > 0


def test_carried_state_equals_one_long_pass():
    model = RecurrentLM(ModelConfig(num_layers=2, hidden_size=16, embedding_size=8, dropout=0.0), 9).eval()
    tokens = torch.randint(0, 9, (2, 12))
    whole, _, _ = model(tokens)
    first, _, state = model(tokens[:, :5])
    second, _, _ = model(tokens[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def test_step_equals_forward_position_by_position():
    model = RecurrentLM(ModelConfig(num_layers=2, hidden_size=16, embedding_size=8), 9).eval()
    tokens = torch.randint(0, 9, (2, 6))
    whole, _, _ = model(tokens)
    state = None
    for t in range(6):
        logits, state = model.step(tokens[:, t], state)
        torch.testing.assert_close(logits, whole[:, t])


def test_dropout_only_while_training():
    model = RecurrentLM(ModelConfig(num_layers=2, hidden_size=16, embedding_size=8, dropout=0.5), 9)
    tokens = torch.randint(0, 9, (2, 6))
    model.eval()
    assert torch.equal(model(tokens)[0], model(tokens)[0])
    model.train()
    assert not torch.equal(model(tokens)[0], model(tokens)[0])
