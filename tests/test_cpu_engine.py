import numpy as np
import pytest
import torch

from rnnlab.config import ModelConfig, SampleConfig
from rnnlab.models.cpu_engine import CpuStepEngine, QrnnStepEngine, step_engine
from rnnlab.models.lm import RecurrentLM
from rnnlab.sampling import generate, largest_probability_gap

TOLERANCE = 1e-4  # fp32 both ways; only the summation order differs


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("embedding, layers", [(0, 1), (12, 3)])
def test_engine_logits_match_the_model_step(cell, embedding, layers):
    torch.manual_seed(1)
    model = RecurrentLM(ModelConfig(cell=cell, num_layers=layers, hidden_size=24, embedding_size=embedding), 17)
    model.eval()
    assert_follows_the_model(model, CpuStepEngine(model), state_parts=1)


def assert_follows_the_model(model, engine, state_parts):
    """The engine's logits, and the first `state_parts` tensors of its state, track the model's own
    prime and steps on a random prompt and tokens."""
    prompt = torch.randint(0, 17, (3, 5))
    with torch.inference_mode():
        a, model_state = model.prime(prompt)
        b, engine_state = engine.prime(prompt)
        assert (a - b).abs().max() < TOLERANCE
        for _ in range(8):
            tokens = torch.randint(0, 17, (3,))
            a, model_state = model.step(tokens, model_state)
            b, engine_state = engine.step(tokens, engine_state)
            assert (a - b).abs().max() < TOLERANCE
            for x, y in zip(model_state[:state_parts], engine_state[:state_parts], strict=True):
                torch.testing.assert_close(x, y, atol=TOLERANCE, rtol=0)
    return model_state, engine_state


def test_engine_and_model_sample_the_same_text_for_the_same_seed():
    torch.manual_seed(2)
    model = RecurrentLM(ModelConfig(num_layers=2, hidden_size=32, embedding_size=8), 20).eval()
    config = SampleConfig(length=200, seed=7, temperature=0.8)
    fast = np.stack(list(generate(CpuStepEngine(model), [1, 2, 3], config)))
    slow = np.stack(list(generate(model, [1, 2, 3], config)))
    assert np.array_equal(fast, slow)


def test_engine_and_model_share_one_copy_of_the_weights():
    model = RecurrentLM(ModelConfig(num_layers=2, hidden_size=16, embedding_size=4), 11).eval()
    before = [p.data_ptr() for p in model.parameters()]
    CpuStepEngine(model)
    assert [p.data_ptr() for p in model.parameters()] == before  # unless asked, building one leaves the model be
    engine = CpuStepEngine(model, share_weights=True)
    stacked = [torch.from_numpy(s) for s in engine.stacked]
    assert model.layers.weight_hh_l0.data_ptr() == stacked[0][model.layers.weight_ih_l1.shape[0]:].data_ptr()
    assert model.layers.weight_ih_l1.data_ptr() == stacked[0].data_ptr()
    assert model.head.weight.data_ptr() == stacked[1].data_ptr()
    logits, _ = engine.step(torch.tensor([1]), engine.init_state(1))
    with torch.no_grad():
        model.head.weight.zero_()  # the engine sees the model's weights, not a copy
    zeroed, _ = engine.step(torch.tensor([1]), engine.init_state(1))
    torch.testing.assert_close(zeroed[0], model.head.bias.detach())
    assert not torch.equal(logits, zeroed)


INT8_TOLERANCE = 1e-2  # the stated bound on next-token probabilities of the int8 engine vs fp32


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_int8_engine_stays_within_its_tolerance_of_fp32(trained_checkpoint, cell):
    from rnnlab.training.checkpoint import load_checkpoint

    if cell == "lstm":
        model = load_checkpoint(trained_checkpoint).build_model("cpu").eval()  # a trained model: peaked outputs
    else:
        torch.manual_seed(3)
        model = RecurrentLM(ModelConfig(cell=cell, num_layers=2, hidden_size=48, embedding_size=8), 30).eval()
    exact, quantized = CpuStepEngine(model, "fp32"), CpuStepEngine(model, "int8")
    if quantized.weights != "int8":
        pytest.skip("this torch build has no quantized CPU kernels")
    worst = largest_probability_gap(exact, quantized, [1, 2, 3], steps=300)
    assert 0 < worst < INT8_TOLERANCE  # different (it is int8), but within the bound


def test_sampling_uses_the_int8_engine_by_default_and_fp32_on_request():
    from rnnlab.sampling import make_stepper

    model = RecurrentLM(ModelConfig(num_layers=1, hidden_size=16, embedding_size=4), 11).eval()
    assert make_stepper(model, SampleConfig()).weights in ("int8", "fp16", "fp32")
    assert make_stepper(model, SampleConfig(engine_weights="fp32")).weights == "fp32"


def trained_twice(tmp_path, seed: int, hidden: int):
    from conftest import tiny_config

    from rnnlab.training.checkpoint import load_checkpoint
    from rnnlab.training.loop import train

    config = tiny_config(tmp_path / f"ck{seed}", max_steps=30, eval_every=30, seed=seed)
    config.model.hidden_size = hidden
    train(config, progress_bar=False)
    return load_checkpoint(tmp_path / f"ck{seed}").build_model("cpu").eval()


@pytest.fixture
def numpy_engines_only(monkeypatch):
    """As on an install where the compiled step could not be built (tests/test_fast_engine.py has its own)."""
    from rnnlab.models import fast_engine

    monkeypatch.setattr(fast_engine, "_fast_step", None)


def test_the_default_engine_is_checked_on_each_checkpoint_and_stays_within_the_tolerance(tmp_path,
                                                                                          numpy_engines_only):
    """Two differently trained checkpoints: the NumPy engine the default picks is within the tolerance of the
    fp32 model on each (int8 where int8 passes its probe, fp32 otherwise)."""
    from rnnlab.sampling import ENGINE_TOLERANCE, make_stepper

    for seed, hidden in ((1, 32), (2, 48)):
        model = trained_twice(tmp_path, seed, hidden)
        engine = make_stepper(model, SampleConfig())
        if not engine.probe_gaps:
            pytest.skip("this torch build has no quantized CPU kernels")
        assert largest_probability_gap(model, engine, [0, 1, 2], steps=300, seed=seed) < ENGINE_TOLERANCE
        assert (engine.weights == "int8") == (engine.probe_gaps["int8"] <= ENGINE_TOLERANCE)


def test_a_checkpoint_where_int8_strays_falls_back_to_the_exact_engine(caplog, numpy_engines_only):
    """A crafted checkpoint: hidden unit 0 is held near 1 (its gates saturated by their biases) and every
    recurrent row gives it a huge weight, taken back by that row's bias. The fp32 model barely sees it,
    but int8's per-row scale grows with it and rounds every other recurrent weight to nothing: the
    int8 engine's probabilities are far off. The default engine measures that and samples with fp32,
    saying so."""
    import logging

    from conftest import saturated_unit_model

    from rnnlab.sampling import ENGINE_TOLERANCE, make_stepper

    model = saturated_unit_model(100.0)
    insisted = make_stepper(model, SampleConfig(engine_weights="int8"))
    if insisted.weights != "int8":
        pytest.skip("this torch build has no quantized CPU kernels")
    assert largest_probability_gap(model, insisted, [0], steps=200) > ENGINE_TOLERANCE  # the crafted case
    caplog.set_level(logging.WARNING, logger="rnnlab")
    engine = make_stepper(model, SampleConfig())
    assert engine.weights == "fp32" and engine.probe_gaps["int8"] > ENGINE_TOLERANCE
    assert "sampling with exact fp32 weights" in caplog.text
    assert largest_probability_gap(model, engine, [0], steps=200) < 1e-4


@pytest.mark.parametrize("window, pooling, embedding, layers", [
    (1, "f", 0, 1), (1, "fo", 12, 3), (2, "fo", 12, 3), (2, "ifo", 0, 2), (2, "f", 12, 1)])
def test_qrnn_engine_matches_the_model_step_and_continues_a_prompt(window, pooling, embedding, layers):
    torch.manual_seed(4)
    model = RecurrentLM(ModelConfig(cell="qrnn", qrnn_window=window, qrnn_pooling=pooling, num_layers=layers,
                                    hidden_size=24, embedding_size=embedding), 17).eval()
    engine = step_engine(model)
    assert isinstance(engine, QrnnStepEngine)
    # the model's whole state is carried too (the engine adds its r terms at the end)
    model_state, engine_state = assert_follows_the_model(model, engine, state_parts=len(model.init_state(1)))
    more = torch.randint(0, 17, (3, 4))  # a prompt read on top of a stepped state
    with torch.inference_mode():
        a, _ = model.prime(more, model_state)
        b, _ = engine.prime(more, engine_state)
    assert (a - b).abs().max() < TOLERANCE


def test_qrnn_engine_shares_the_weights_samples_like_the_model_and_is_what_sampling_picks():
    from rnnlab.sampling import make_stepper

    torch.manual_seed(5)
    model = RecurrentLM(ModelConfig(cell="qrnn", num_layers=2, hidden_size=32, embedding_size=8), 20).eval()
    engine = make_stepper(model, SampleConfig(engine_weights="fp32"))
    assert isinstance(engine, QrnnStepEngine)
    assert torch.from_numpy(engine.upper[0]).data_ptr() == model.layers.qrnn_layers[1].linear.weight.data_ptr()
    config = SampleConfig(length=200, seed=7, temperature=0.8)
    fast = np.stack(list(generate(engine, [1, 2, 3], config)))
    slow = np.stack(list(generate(model, [1, 2, 3], config)))
    assert np.array_equal(fast, slow)


def test_qrnn_int8_engine_stays_within_its_tolerance_of_fp32():
    torch.manual_seed(6)
    model = RecurrentLM(ModelConfig(cell="qrnn", num_layers=3, hidden_size=48, embedding_size=8), 30).eval()
    exact, quantized = step_engine(model, "fp32"), step_engine(model, "int8")
    if quantized.weights != "int8":
        pytest.skip("this torch build has no quantized CPU kernels")
    worst = largest_probability_gap(exact, quantized, [1, 2, 3], steps=200)
    assert 0 < worst < INT8_TOLERANCE
