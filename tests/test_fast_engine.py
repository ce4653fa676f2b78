"""The compiled step engine (rnnlab.models.fast_engine over _fast_step.c) against the model's own step,
for every cell type, kernel set and weight type; and the default engine's accuracy-first choice."""

import logging

import numpy as np
import pytest
import torch
from conftest import saturated_unit_model

from rnnlab.config import ModelConfig, SampleConfig
from rnnlab.models import fast_engine
from rnnlab.models.lm import RecurrentLM
from rnnlab.sampling import ENGINE_TOLERANCE, generate, largest_probability_gap, make_stepper, stepper_name

pytestmark = pytest.mark.skipif(not fast_engine.available(), reason="the compiled step is not built here")

ALL_KERNELS = ("generic", "avx2", "avx512", "avx512vnni", "amx")
# the largest logit difference to the fp32 model on small random models: fp16 rounds each weight to
# 11 bits, int12 to 12 (and its inputs to 16), int8 to 8 (with row and column scales)
LOGIT_TOLERANCE = {"fp16": 2e-3, "int12": 2e-3, "int8": 2e-2, "mixed": 2e-2, "mixed12": 2e-2}
MIXED = {"mixed": "fp16", "mixed12": "int12"}  # the first layer's weights; int8 above


def kernels_here() -> list[str]:
    """Every kernel set this CPU can run (the portable C one always)."""
    best = fast_engine.cpu_kernels()
    return list(ALL_KERNELS[:ALL_KERNELS.index(best) + 1]) if best in ALL_KERNELS else ["generic"]


def small_model(cell="lstm", layers=2, hidden=40, embedding=16, vocab=23, seed=0):
    torch.manual_seed(seed)
    return RecurrentLM(ModelConfig(cell=cell, num_layers=layers, hidden_size=hidden, embedding_size=embedding),
                       vocab).eval()


def follow(model, engine, streams=3, steps=12, seed=0):
    """Prime both on one random prompt, then step both on the same random tokens; the largest logit and
    state differences seen, and the engine's logits at every step."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, model.vocab_size, (streams, 5))
    with torch.inference_mode():
        a, model_state = model.prime(torch.from_numpy(prompt))
    b, engine_state = engine.prime(prompt)
    worst_logit, worst_state = float(np.abs(a.numpy() - b).max()), 0.0
    seen = [b]
    for _ in range(steps):
        tokens = rng.integers(0, model.vocab_size, streams)
        with torch.inference_mode():
            a, model_state = model.step(torch.from_numpy(tokens), model_state)
        b, engine_state = engine.step(tokens, engine_state)
        worst_logit = max(worst_logit, float(np.abs(a.numpy() - b).max()))
        worst_state = max(worst_state, max(float(np.abs(x.numpy() - y).max())
                                           for x, y in zip(model_state, engine_state, strict=True)))
        seen.append(b)
    return worst_logit, worst_state, np.stack(seen)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("weights", ["fp16", "int12", "int8", "mixed", "mixed12"])
@pytest.mark.parametrize("embedding, layers, hidden, vocab", [(0, 1, 40, 23), (16, 3, 37, 30)])
def test_every_kernel_set_follows_the_model_step(cell, weights, embedding, layers, hidden, vocab):
    """Each kernel set's logits and state track the model's prime and steps (hidden 37 and vocab 30 leave
    partial tiles; "mixed" is fp16 for the first layer, int8 above, "mixed12" int12 then int8); the kernel
    sets compute the same sums, so they agree with each other far closer."""
    model = small_model(cell, layers, hidden, embedding, vocab)
    per_layer = (MIXED[weights],) + ("int8",) * (layers - 1) if weights in MIXED else weights
    results = {}
    for kernels in kernels_here():
        engine = fast_engine.FastStepEngine(model, per_layer, kernels)
        assert engine.kernels == kernels
        logit_gap, state_gap, logits = follow(model, engine)
        assert 0 < logit_gap < LOGIT_TOLERANCE[weights]  # close, and not the fp32 model by another name
        assert state_gap < LOGIT_TOLERANCE[weights]
        results[kernels] = logits
    for kernels, logits in results.items():
        np.testing.assert_allclose(logits, results["generic"], atol=2e-5, rtol=0, err_msg=kernels)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("weights", ["int8", "int12", "mixed", "mixed12"])
def test_many_streams_take_the_tiles_layout_where_the_cpu_has_vnni_with_the_same_sums(cell, weights):
    """From AMX_STREAMS streams on, the "amx" kernel set multiplies on AMX tiles (16 streams x 16 rows a
    tile), and from PACKED_STREAMS on the "avx512vnni" set multiplies the same layout's lines against each
    stream's broadcast inputs (19 streams leave partial tiles and groups, hidden 37 a partial row block):
    the same integers as every other kernel set, so the same logits to float rounding of the gate math."""
    model = small_model(cell, layers=2, hidden=37, embedding=16, vocab=30)
    per_layer = (MIXED[weights], "int8") if weights in MIXED else weights
    streams = max(fast_engine.AMX_STREAMS, fast_engine.PACKED_STREAMS) + 11
    results = {}
    for kernels in kernels_here():
        logit_gap, state_gap, results[kernels] = follow(model, fast_engine.FastStepEngine(model, per_layer, kernels),
                                                        streams=streams, steps=6)
        assert 0 < logit_gap < LOGIT_TOLERANCE[weights] and state_gap < LOGIT_TOLERANCE[weights]
    for kernels, logits in results.items():
        np.testing.assert_allclose(logits, results["generic"], atol=2e-5, rtol=0, err_msg=kernels)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_learned_initial_state_is_where_the_engine_starts(cell):
    """The paper's learned initial state: the engine starts from the model's, not from zeros."""
    torch.manual_seed(3)
    model = RecurrentLM(ModelConfig(cell=cell, num_layers=2, hidden_size=32, embedding_size=8), 19,
                        learned_initial_state=True).eval()
    with torch.no_grad():
        for p in model.initial_state:
            p.uniform_(-0.9, 0.9)
    engine = fast_engine.FastStepEngine(model, "fp16")
    for ours, theirs in zip(engine.init_state(3), model.init_state(3, torch.device("cpu")), strict=True):
        np.testing.assert_array_equal(ours, theirs.detach().numpy())
    logit_gap, state_gap, _ = follow(model, engine)
    assert logit_gap < LOGIT_TOLERANCE["fp16"] and state_gap < LOGIT_TOLERANCE["fp16"]


def test_overlapping_buffers_sizes_beyond_the_kernels_and_bad_states_are_refused_or_contained():
    engine = fast_engine.FastStepEngine(small_model(vocab=23), "int8")
    h, c = engine.init_state(1)
    logits = np.empty((1, 23), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        fast_engine._fast_step.step(engine._engine, np.array([1]), h, c, h, c, logits, 1)  # new h is the old h
    h_new, c_new = np.empty_like(h), np.empty_like(c)
    nan = np.full_like(h, np.nan)
    fast_engine._fast_step.step(engine._engine, np.array([1]), nan, c, h_new, c_new, logits, 1)  # no crash
    with pytest.raises(ValueError, match="unsupported engine shape"):
        fast_engine._fast_step.build(0, "auto", 1 << 15, 10, np.zeros(1, np.float32), np.zeros(1, np.float32),
                                     np.zeros(1, np.float32), ((np.zeros(1, np.int8), None, None, np.zeros(1)),))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_a_batch_of_streams_steps_each_stream_as_it_would_alone(cell):
    """Five streams in one call (tiles of several streams, a partial one) give each stream the logits
    and state it gets alone, on every kernel set and thread count."""
    model = small_model(cell, hidden=48, vocab=29)
    rng = np.random.default_rng(1)
    for kernels in kernels_here():
        engine = fast_engine.FastStepEngine(model, "int8", kernels)
        _, state = engine.prime(rng.integers(0, 29, (5, 4)))
        tokens = rng.integers(0, 29, 5)
        together, together_state = engine.step(tokens, state)
        for b in range(5):
            alone, alone_state = engine.step(tokens[b:b + 1], tuple(s[:, b:b + 1] for s in state))
            np.testing.assert_allclose(alone[0], together[b], atol=1e-5, rtol=0)
            for x, y in zip(alone_state, together_state, strict=True):
                np.testing.assert_allclose(x[:, 0], y[:, b], atol=1e-6, rtol=0)


def test_the_threads_split_the_work_without_changing_a_bit():
    """Each hidden unit is computed the same way whichever thread owns it: 1 and 2 threads agree exactly."""
    model = small_model(hidden=64, layers=2)
    engine = fast_engine.FastStepEngine(model, "int8")
    state = engine.init_state(2)
    tokens = np.array([3, 7])
    previous = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(engine.step(tokens, state))
    finally:
        torch.set_num_threads(previous)
    assert np.array_equal(runs[0][0], runs[1][0])
    assert all(np.array_equal(x, y) for x, y in zip(runs[0][1], runs[1][1], strict=True))


def test_seeded_samples_are_reproducible_and_the_fp16_engine_samples_the_models_text():
    model = small_model(hidden=32, vocab=20, seed=2)
    config = SampleConfig(length=150, seed=7, temperature=0.8)
    engine = fast_engine.FastStepEngine(model, "fp16")
    first = np.stack(list(generate(engine, [1, 2, 3], config)))
    again = np.stack(list(generate(fast_engine.FastStepEngine(model, "fp16"), [1, 2, 3], config)))
    assert np.array_equal(first, again)
    exact = np.stack(list(generate(model, [1, 2, 3], config)))
    assert (first == exact).mean() > 0.95  # fp16 differs from fp32 by ~1e-6 in probability here


def test_bad_tokens_and_states_are_refused_with_one_clear_error():
    engine = fast_engine.FastStepEngine(small_model(vocab=23), "int8")
    state = engine.init_state(1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.step(np.array([23]), state)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.step(np.array([-1]), state)
    with pytest.raises(ValueError, match="bytes"):
        engine.step(np.array([1, 2]), state)  # two tokens, a state of one stream


def trained(tmp_path, seed: int, hidden: int):
    from conftest import tiny_config

    from rnnlab.training.checkpoint import load_checkpoint
    from rnnlab.training.loop import train

    config = tiny_config(tmp_path / f"ck{seed}", max_steps=30, eval_every=30, seed=seed)
    config.model.hidden_size = hidden
    train(config, progress_bar=False)
    return load_checkpoint(tmp_path / f"ck{seed}").build_model("cpu").eval()


def test_the_default_engine_is_checked_on_each_checkpoint_and_stays_within_the_tolerance(tmp_path):
    """Two differently trained checkpoints: the default engine is the fastest one whose probe passed, and
    it stays within the tolerance of the fp32 model on another text too."""
    for seed, hidden in ((1, 32), (2, 48)):
        model = trained(tmp_path, seed, hidden)
        engine = make_stepper(model, SampleConfig())
        gaps = engine.probe_gaps  # in the order tried, fastest first
        assert largest_probability_gap(model, engine, [0, 1, 2], steps=300, seed=seed) < ENGINE_TOLERANCE
        passed = [weights for weights, gap in gaps.items() if gap <= ENGINE_TOLERANCE]
        assert list(gaps)[:len(gaps) - len(passed)] == [w for w in gaps if w not in passed]  # stopped at a pass
        assert engine.weights == (passed[0] if passed else "fp32")
        assert stepper_name(engine).startswith("compiled" if passed else "numpy")


def test_the_weights_are_tried_fastest_first():
    assert fast_engine.weight_ladder(1) == [("int8",), ("fp16",)]
    assert fast_engine.weight_ladder(2) == [("int8", "int8"), ("fp16", "int8"), ("fp16", "fp16")]
    assert [fast_engine.weights_name(w) for w in fast_engine.weight_ladder(4)] == [
        "int8", "fp16+int8+int8+int8", "fp16+fp16+int8+int8", "fp16"]
    assert fast_engine.weight_ladder(3, fp16=False) == [("int8",) * 3]
    assert [fast_engine.weights_name(w) for w in fast_engine.weight_ladder(3, int12=True)] == [
        "int8", "int12+int8+int8", "int12+int12+int8", "int12", "fp16"]
    assert fast_engine.weight_ladder(1, int12=True) == [("int8",), ("int12",), ("fp16",)]
    # int12 only where it is fast: AVX-512 VNNI for a stream or two, and for many from the tiles' layout
    kernels = fast_engine.cpu_kernels()
    vnni = kernels in ("avx512vnni", "amx")
    assert fast_engine.int12_is_fast(1) == vnni
    assert not fast_engine.int12_is_fast(fast_engine.INT12_STREAMS + 1)
    assert fast_engine.int12_is_fast(max(fast_engine.AMX_STREAMS, fast_engine.PACKED_STREAMS)) == vnni
    assert fast_engine.int12_is_fast(64) == vnni
    model = small_model(layers=2)
    assert fast_engine.FastStepEngine(model, ("fp16", "int8")).weights == "fp16+int8"
    with pytest.raises(ValueError, match="one per layer"):
        fast_engine.FastStepEngine(model, ("fp16",))


def test_a_checkpoint_where_int8_strays_is_sampled_with_fp16_saying_so(caplog, monkeypatch):
    model = saturated_unit_model(100.0, crowded_rows=True)
    assert largest_probability_gap(model, fast_engine.FastStepEngine(model, "int8"), [0], steps=200) > ENGINE_TOLERANCE
    caplog.set_level(logging.INFO, logger="rnnlab")
    monkeypatch.setattr(fast_engine, "int12_is_fast", lambda streams=1: False)
    engine = make_stepper(model, SampleConfig())
    assert engine.weights == "fp16" and engine.probe_gaps["int8"] > ENGINE_TOLERANCE >= engine.probe_gap
    assert "sampling with fp16 weights" in caplog.text and "int8 " in caplog.text
    assert largest_probability_gap(model, engine, [0], steps=200) < ENGINE_TOLERANCE


def test_where_int12_is_fast_a_checkpoint_where_int8_strays_is_sampled_with_int12_and_where_it_strays_too_fp16(
        monkeypatch):
    """(int12 is forced into the ladder, so the portable kernels take this path on any CPU.) int12 rounds
    to 2047 levels where int8 has 127: the crafted unit's weight of 100 is then held well enough, one of
    1000 is not, and fp16 holds both."""
    monkeypatch.setattr(fast_engine, "int12_is_fast", lambda streams=1: streams <= fast_engine.INT12_STREAMS)
    engine = make_stepper(saturated_unit_model(100.0, crowded_rows=True), SampleConfig())
    assert engine.weights == "int12" and list(engine.probe_gaps) == ["int8", "int12"]
    assert engine.probe_gaps["int8"] > ENGINE_TOLERANCE >= engine.probe_gap
    engine = make_stepper(saturated_unit_model(1000.0, crowded_rows=True), SampleConfig())
    assert engine.weights == "fp16" and list(engine.probe_gaps) == ["int8", "int12", "fp16"]
    assert engine.probe_gaps["int12"] > ENGINE_TOLERANCE >= engine.probe_gap
    # more streams than the (patched) rule allows: int12 is not tried (fp16 is faster there)
    engine = make_stepper(saturated_unit_model(100.0, crowded_rows=True), SampleConfig(num_samples=4))
    assert engine.weights == "fp16" and "int12" not in engine.probe_gaps


def test_int12_weights_are_laid_out_as_the_kernels_read_them():
    """High bytes Q >> 4 and low nibbles packed two per byte (column j low, j + 64 high, per 128 columns)
    give back Q exactly; Q is within 2047 levels of each row's scale."""
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(8, 256)).astype(np.float32) * rng.uniform(0.1, 3, 256).astype(np.float32)
    quantized, row, col = fast_engine.rows_and_columns(matrix, fast_engine.INT12_LEVELS)
    assert np.abs(quantized).max() == 2047
    high, nibbles = fast_engine.int12_parts(quantized)
    assert high.dtype == np.int8 and nibbles.shape == (8, 128)
    blocks = nibbles.reshape(8, 2, 64)  # (rows, 128-column blocks, bytes)
    low = np.stack([blocks & 15, blocks >> 4], axis=2).reshape(8, 256)
    np.testing.assert_array_equal(16 * high.astype(np.int32) + low, quantized)
    restored = quantized * row[:, None] * col[None, :]
    assert np.abs(restored - matrix).max() <= 0.5 * (row[:, None] * col[None, :]).max() * 1.0001


def test_a_checkpoint_where_fp16_strays_too_is_sampled_exactly_saying_so(caplog):
    """3001 is no fp16 number (it rounds to 3000): unit 0's pull is then off by its whole value."""
    model = saturated_unit_model(3001.0, crowded_rows=True)
    caplog.set_level(logging.WARNING, logger="rnnlab")
    engine = make_stepper(model, SampleConfig())
    assert engine.weights == "fp32" and min(engine.probe_gaps.values()) > ENGINE_TOLERANCE
    assert "sampling with exact fp32 weights" in caplog.text
    # fp32 (only the summation order differs; with weights of 3001 cancelling, that shows a little)
    assert largest_probability_gap(model, engine, [0], steps=200) < 1e-3
    # beyond fp16's range, the fp16 engine is not built at all
    with torch.no_grad():
        model.layers.weight_hh_l0[1, 0] = 70000.0
    with pytest.raises(ValueError, match="fp16's range"):
        fast_engine.FastStepEngine(model, "fp16")
    # ... and the default skips the fp16 rungs, saying so, rather than failing
    caplog.clear()
    engine = make_stepper(model, SampleConfig())
    assert engine.weights == "fp32" and "fp16" not in engine.probe_gaps and "int8" in engine.probe_gaps
    assert "cannot hold this model in fp16+int8" in caplog.text or "cannot hold this model in fp16" in caplog.text


def test_asked_weights_are_used_and_models_it_cannot_run_get_the_numpy_engine(caplog):
    model = small_model()
    assert make_stepper(model, SampleConfig(engine_weights="int8")).weights == "int8"
    assert isinstance(make_stepper(model, SampleConfig(engine_weights="fp16")), fast_engine.FastStepEngine)
    assert stepper_name(make_stepper(model, SampleConfig(engine_weights="fp32"))) == "numpy fp32"
    qrnn = RecurrentLM(ModelConfig(cell="qrnn", num_layers=2, hidden_size=16, embedding_size=4), 11).eval()
    assert fast_engine.why_not(qrnn) and not fast_engine.supports(qrnn)
    caplog.set_level(logging.WARNING, logger="rnnlab")
    assert stepper_name(make_stepper(qrnn, SampleConfig(engine_weights="fp16"))) == "numpy fp32"
    assert "fp16 weights need the compiled step" in caplog.text


def test_without_the_compiled_step_sampling_uses_the_numpy_engine(monkeypatch, caplog):
    """An install with no C compiler: the package imports and samples, with the NumPy engine."""
    monkeypatch.setattr(fast_engine, "_fast_step", None)
    model = small_model()
    assert not fast_engine.available() and "not built" in fast_engine.why_not(model)
    assert stepper_name(make_stepper(model, SampleConfig())).startswith("numpy")
    caplog.set_level(logging.WARNING, logger="rnnlab")
    assert stepper_name(make_stepper(model, SampleConfig(engine_weights="fp16"))) == "numpy fp32"
    assert len(list(generate(make_stepper(model, SampleConfig()), [1], SampleConfig(length=20)))) == 20


def test_the_server_steps_with_the_default_engine_on_every_core(trained_checkpoint):
    from rnnlab.serve.engine import LoadedModel

    loaded = LoadedModel.load("m", trained_checkpoint)
    assert loaded.info["engine"] == stepper_name(loaded.stepper) and loaded.info["engine"].startswith("compiled")
    assert loaded.stepper.threads >= 1  # all cores, whatever torch's --threads
    assert LoadedModel.load("m", trained_checkpoint, "fp32").info["engine"] == "numpy fp32"



def test_the_cli_and_the_server_give_the_same_seeded_completion_with_the_default_engine(trained_checkpoint,
                                                                                          capsys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rnnlab.cli import main
    from rnnlab.config import ServeConfig
    from rnnlab.serve.app import create_app
    from rnnlab.serve.engine import LoadedModel

    assert main(["sample", str(trained_checkpoint), "--prime-text", "ROMEO:", "--length", "80", "--seed", "3"]) == 0
    by_cli = capsys.readouterr().out.removeprefix("ROMEO:").removesuffix("\n")
    loaded = LoadedModel.load("m", trained_checkpoint)
    assert loaded.info["engine"].startswith("compiled")
    client = TestClient(create_app([loaded], ServeConfig()), base_url="http://127.0.0.1")
    response = client.post("/v1/complete", json={"prompt": "ROMEO:", "length": 80, "seed": 3})
    assert len(by_cli) == 80 and by_cli == response.json()["completions"][0]["text"]


def test_the_probe_is_four_seeded_texts_the_model_draws_itself():
    """After token 0 and after three random 4-token prompts (odd contexts are where rounding strays most),
    the same texts every time; scored along them, the exact engine is the model to 1e-5."""
    from rnnlab.models.cpu_engine import step_engine
    from rnnlab.sampling import PROBE_STEPS, gap_along, probe_texts

    model = small_model(hidden=32, vocab=20)
    texts, again = probe_texts(model), probe_texts(model)
    assert [t.prime_ids for t in texts][0] == [0] and all(len(t.prime_ids) == 4 for t in texts[1:])
    assert all(len(t.tokens) == PROBE_STEPS and t.probs.shape == (PROBE_STEPS, 20) for t in texts)
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(texts, again, strict=True))
    np.testing.assert_allclose(texts[0].probs.sum(axis=1), 1.0, atol=1e-9)
    assert max(gap_along(step_engine(model, "fp32"), t) for t in texts) < 1e-5
    assert max(gap_along(model, t) for t in texts) < 1e-5  # the reference is the model's own step
    assert 0 < max(gap_along(fast_engine.FastStepEngine(model, "int8"), t) for t in texts) < ENGINE_TOLERANCE
