"""QRNN: the parallel scan equals the loop; chunks with carried state equal one pass; it trains."""

import math

import pytest
import torch
from conftest import tiny_config

from rnnlab.config import ModelConfig
from rnnlab.models.lm import RecurrentLM
from rnnlab.models.qrnn import QRNNStack, linear_scan, reference_pool
from rnnlab.training.loop import train


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_parallel_scan_equals_the_loop(dtype, tolerance):
    torch.manual_seed(0)
    a = torch.sigmoid(torch.randn(3, 50, 8, dtype=dtype) * 3)  # forget gates from ~0 to ~1
    b = torch.randn(3, 50, 8, dtype=dtype)  # both signs
    c0 = torch.randn(3, 8, dtype=dtype)
    assert (linear_scan(a, b, c0) - reference_pool(a, b, c0)).abs().max() < tolerance


def test_parallel_scan_gradients_equal_the_loop():
    torch.manual_seed(1)
    a = torch.sigmoid(torch.randn(2, 20, 4, dtype=torch.float64)).requires_grad_()
    b = torch.randn(2, 20, 4, dtype=torch.float64).requires_grad_()
    c0 = torch.randn(2, 4, dtype=torch.float64).requires_grad_()
    fast = torch.autograd.grad(linear_scan(a, b, c0).pow(2).sum(), (a, b, c0))
    slow = torch.autograd.grad(reference_pool(a, b, c0).pow(2).sum(), (a, b, c0))
    for x, y in zip(fast, slow, strict=True):
        torch.testing.assert_close(x, y)


def test_parallel_scan_backward_passes_gradcheck_on_odd_lengths():
    torch.manual_seed(4)
    for steps in (1, 2, 7, 33):  # powers of two and not; a single step takes the plain update
        a = torch.sigmoid(torch.randn(2, steps, 3, dtype=torch.float64)).requires_grad_()
        b = torch.randn(2, steps, 3, dtype=torch.float64).requires_grad_()
        c0 = torch.randn(2, 3, dtype=torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(linear_scan, (a, b, c0))


def test_parallel_scan_stays_accurate_over_long_sequences_and_runs_bf16_gates_in_fp32():
    torch.manual_seed(5)
    a = torch.sigmoid(torch.randn(2, 2000, 8, dtype=torch.float64) + 4)  # long memory: gates near 1
    b = torch.randn(2, 2000, 8, dtype=torch.float64) * 0.1
    c0 = torch.randn(2, 8, dtype=torch.float64)
    exact = reference_pool(a, b, c0)
    assert (linear_scan(a.float(), b.float(), c0.float()) - exact).abs().max() < 1e-4
    half = linear_scan(a.bfloat16(), b.bfloat16(), c0.float())
    assert half.dtype == torch.float32
    assert (half - reference_pool(a.bfloat16().double(), b.bfloat16().double(), c0)).abs().max() < 1e-4


@pytest.mark.parametrize("window, pooling", [(1, "f"), (2, "fo"), (2, "ifo")])
def test_stack_matches_the_loop_and_carries_state_across_chunks(window, pooling):
    torch.manual_seed(2)
    stack = QRNNStack(5, 7, num_layers=2, dropout=0.0, window=window, pooling=pooling).double().eval()
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    whole, _ = stack(x)
    looped, _ = stack(x, pool=reference_pool)
    torch.testing.assert_close(whole, looped)
    first, state = stack(x[:, :4])
    second, _ = stack(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)  # x_(t-1) and c are carried


def test_model_steps_equal_the_full_forward():
    torch.manual_seed(3)
    model = RecurrentLM(ModelConfig(cell="qrnn", num_layers=2, hidden_size=16, embedding_size=8, dropout=0.0), 11)
    model.eval()
    tokens = torch.randint(0, 11, (2, 6))
    whole, _, _ = model(tokens)
    state = None
    for t in range(6):
        logits, state = model.step(tokens[:, t], state)
        torch.testing.assert_close(logits, whole[:, t], atol=1e-5, rtol=1e-5)


def test_a_qrnn_language_model_trains(tmp_path):
    config = tiny_config(tmp_path, max_steps=6, eval_every=3)
    config.model.cell, config.model.qrnn_window = "qrnn", 2
    config.model.weight_drop = 0.2
    result = train(config, progress_bar=False)
    assert math.isfinite(result.val_loss)
