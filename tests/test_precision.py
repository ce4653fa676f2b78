"""Mixed precision: bf16 autocast on CPU (weights and gradients stay fp32), fp16's gradient scaler,
and precision choices that cannot run where the run is."""

import pytest
import torch
from conftest import tiny_config

from rnnlab.config import ModelConfig
from rnnlab.errors import ConfigError
from rnnlab.models.lm import RecurrentLM
from rnnlab.training.checkpoint import load_checkpoint
from rnnlab.training.loop import train
from rnnlab.training.optim import WeightAverage
from rnnlab.training.step import TrainingStep, resolve_precision


def small_model(cell="lstm"):
    torch.manual_seed(0)
    return RecurrentLM(ModelConfig(cell=cell, num_layers=2, hidden_size=16, embedding_size=8), 11)


@pytest.mark.parametrize("cell", ["lstm"])  # (GRU/RNN: no bf16 kernel under CPU autocast; QRNN pools in fp32)
def test_bf16_autocast_runs_the_recurrent_layers_in_bf16_and_keeps_fp32_weights_and_grads(cell):
    model = small_model(cell)
    seen = []
    model.layers.register_forward_hook(lambda module, args, output: seen.append(output[0].dtype))
    step = TrainingStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "bf16", 1.0, torch.device("cpu"))
    tokens = torch.randint(0, 11, (4, 9))
    loss, state = step(tokens[:, :-1], tokens[:, 1:], None)
    assert seen == [torch.bfloat16]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(s.dtype == torch.float32 for s in state)  # the carried state goes back to fp32
    assert not step.scaler.is_enabled()


def test_auto_precision_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("fp32", cpu) == "fp32"


def test_fp16_uses_a_gradient_scaler_that_skips_overflowing_steps_and_the_average_skips_them_too():
    model = small_model("qrnn")  # (oneDNN has no fp16 LSTM on CPU; the QRNN's convolution and scan run anywhere)
    step = TrainingStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "fp16", 0.0, torch.device("cpu"))
    assert step.scaler.is_enabled() and "scale" in step.scaler.state_dict()
    step.averager = WeightAverage(model.parameters())
    tokens = torch.randint(0, 11, (2, 6))
    step(tokens[:, :-1], tokens[:, 1:], None)
    assert step.averager.count == 1
    before = [p.detach().clone() for p in model.parameters()]
    scale = step.scaler.get_scale()
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")  # every gradient overflows: the scaler skips the step
    before[[n for n, _ in model.named_parameters()].index("head.weight")][0, 0] = float("inf")
    step(tokens[:, :-1], tokens[:, 1:], None)
    assert step.scaler.get_scale() < scale and step.averager.count == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fp16_on_a_machine_without_cuda_is_refused_even_with_device_auto(tmp_path):
    config = tiny_config(tmp_path, precision="fp16", device="auto")
    config.validate()  # the config alone is fine: auto may mean a GPU elsewhere
    with pytest.raises(ConfigError, match="fp16 is for CUDA"):
        train(config, progress_bar=False)
    assert not list(tmp_path.iterdir())
    config.model.cell = "qrnn"
    with pytest.raises(ConfigError, match="fp16 is for CUDA"):
        train(config, progress_bar=False)


def test_bf16_training_on_cpu_reaches_the_same_loss_region_as_fp32(tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        result = train(tiny_config(tmp_path / precision, max_steps=30, precision=precision), progress_bar=False)
        losses[precision] = result.val_loss
    assert abs(losses["bf16"] - losses["fp32"]) < 0.1, losses
    assert load_checkpoint(tmp_path / "bf16").model_state["head.weight"].dtype == torch.float32
