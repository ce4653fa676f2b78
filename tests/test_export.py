"""ONNX export: onnxruntime gives the same next-character distribution as the torch model."""

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from rnnlab.cli import main  # noqa: E402
from rnnlab.onnx_runtime import OnnxModel  # noqa: E402
from rnnlab.training.checkpoint import load_checkpoint  # noqa: E402


def test_onnx_step_matches_the_torch_model(tmp_path, trained_checkpoint, capsys):
    assert main(["export", str(trained_checkpoint), "--onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    onnx_model = OnnxModel(tmp_path / "m.onnx")
    model = load_checkpoint(trained_checkpoint).build_model()
    state_t, state_o = None, onnx_model.init_state(3)
    with torch.inference_mode():
        for tokens in ([1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]):
            logits_t, state_t = model.step(torch.tensor(tokens), state_t)
            logits_o, state_o = onnx_model.step(np.array(tokens), state_o)
            p_t, p_o = torch.softmax(logits_t, -1).numpy(), torch.softmax(torch.from_numpy(logits_o), -1).numpy()
            assert np.abs(p_t - p_o).max() < 1e-5
    text = onnx_model.complete("ROMEO:", length=50, seed=3)
    assert len(text) == 50 and text == onnx_model.complete("ROMEO:", length=50, seed=3)


def test_the_runtime_needs_no_torch(tmp_path, trained_checkpoint):
    main(["export", str(trained_checkpoint), "--onnx", "--out", str(tmp_path / "m.onnx")])
    code = ("import sys; sys.modules['torch'] = None; from rnnlab.onnx_runtime import OnnxModel; "
            "print(OnnxModel(sys.argv[1]).complete('KING', length=20))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx")], capture_output=True, text=True,
                         check=True).stdout
    assert len(out.rstrip("\n")) >= 20


@pytest.mark.parametrize("cell", ["gru", "rnn", "qrnn"])
def test_other_cells_export_too(tmp_path, cell):
    from rnnlab.config import RunConfig
    from rnnlab.data.vocab import CharVocab
    from rnnlab.models.lm import RecurrentLM
    from rnnlab.training.checkpoint import save_checkpoint
    config = RunConfig()
    config.model.cell, config.model.hidden_size, config.model.embedding_size = cell, 12, 4
    vocab = CharVocab("abcdefg\n")
    torch.manual_seed(0)
    model = RecurrentLM(config.model, len(vocab)).eval()
    path = save_checkpoint(tmp_path / "c.safetensors", model, config, vocab, metrics={})
    assert main(["export", str(path), "--onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    onnx_model = OnnxModel(tmp_path / "m.onnx")
    with torch.inference_mode():
        logits_t, _ = model.step(torch.tensor([1, 2]), None)
    logits_o, _ = onnx_model.step(np.array([1, 2]), onnx_model.init_state(2))
    assert np.abs(logits_t.numpy() - logits_o).max() < 1e-5


def test_a_word_level_model_exports_and_completes_words(tmp_path):
    from rnnlab.config import RunConfig
    from rnnlab.data.vocab import WordVocab, count_words
    from rnnlab.models.lm import RecurrentLM
    from rnnlab.training.checkpoint import save_checkpoint
    config = RunConfig()
    config.data.tokenizer = "word"
    config.model.hidden_size, config.model.embedding_size = 12, 4
    vocab = WordVocab.from_counts(count_words("the cat sat on the mat\nthe dog ran\n"))
    torch.manual_seed(0)
    model = RecurrentLM(config.model, len(vocab)).eval()
    path = save_checkpoint(tmp_path / "c.safetensors", model, config, vocab, metrics={})
    assert main(["export", str(path), "--onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    text = OnnxModel(tmp_path / "m.onnx").complete("the cat", length=8, seed=1)
    assert text.startswith((" ", "\n")) and len(text.split()) + text.count("\n") == 8
    assert set(text.split()) <= set(vocab.tokens)


def test_the_cli_the_server_and_the_onnx_engine_give_the_same_seeded_completion(tmp_path, trained_checkpoint,
                                                                              capsys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rnnlab.config import ServeConfig
    from rnnlab.serve.app import create_app
    from rnnlab.serve.engine import LoadedModel

    assert main(["export", str(trained_checkpoint), "--onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    request = {"prompt": "ROMEO:", "length": 60, "seed": 11, "temperature": 0.8, "top_k": 20, "top_p": 0.95}
    assert main(["sample", str(trained_checkpoint), "--prime-text", "ROMEO:", "--length", "60", "--seed", "11",
                 "--temperature", "0.8", "--top-k", "20", "--top-p", "0.95", "--engine-weights", "fp32"]) == 0
    by_cli = capsys.readouterr().out.removeprefix("ROMEO:").removesuffix("\n")
    exact = LoadedModel.load("m", trained_checkpoint, "fp32")  # the ONNX engine's weights are fp32
    client = TestClient(create_app([exact], ServeConfig()), base_url="http://127.0.0.1")
    by_server = client.post("/v1/complete", json=request).json()["completions"][0]["text"]
    by_onnx = OnnxModel(tmp_path / "m.onnx").complete("ROMEO:", length=60, seed=11, temperature=0.8, top_k=20,
                                                      top_p=0.95)
    assert len(by_cli) == 60 and by_cli == by_server == by_onnx
