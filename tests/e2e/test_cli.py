"""The rnnlab command, in-process through cli.main (fast) and as real subprocesses (signals, tracebacks)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from rnnlab.cli import main
from rnnlab.training.checkpoint import FORMAT_VERSION, load_checkpoint

TINY = ["--hidden-size", "24", "--embedding-size", "8", "--batch-size", "8", "--seq-length", "32",
        "--eval-every", "10", "--sample-length", "40", "--no-progress"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def train_sample_eval(tmp_path, capsys, data, *flags, prime="ROMEO:"):
    """The CLI's three doors on one tiny run: train, then sample and eval its checkpoint."""
    folder = tmp_path / "ck"
    code, out, err = run(capsys, "train", *([data] if data else []), *TINY, *flags, "--max-steps", 10,
                         "--checkpoint-dir", folder)
    assert code == 0, err
    assert "parameters" in err and "best checkpoint:" in out and "sample:" in out
    code, out, err = run(capsys, "sample", folder, "--length", 30, "--prime-text", prime, "--seed", 1)
    assert code == 0 and out.startswith(prime), err
    text = tmp_path / "held-out.txt"
    text.write_text(f"{prime} and so the story goes on , as it went before .\n" * 30, encoding="utf-8")
    code, out, err = run(capsys, "eval", folder, text, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["tokens"] > 0 and 0 < report["bits_per_char"] < 20
    return folder, report


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "qrnn"])
@pytest.mark.parametrize("embedding", ["8", "0"])
def test_train_sample_eval_for_every_cell(tmp_path, capsys, cell, embedding):
    folder, report = train_sample_eval(tmp_path, capsys, None, "--cell", cell, "--embedding-size", embedding)
    assert load_checkpoint(folder).config.model.cell == cell and report["tokenizer"] == "char"
    code, out, _ = run(capsys, "sample", folder, "--length", 30, "--prime-text", "ROMEO:", "--seed", 1)
    assert len(out) == len("ROMEO:") + 30 + 1  # a character model: one character per token


@pytest.mark.parametrize("flags", [
    ["--tokenizer", "word"], ["--tokenizer", "bpe", "--vocab-size", "300"],
    ["--tokenizer", "word", "--head", "adaptive"], ["--head", "mos", "--mos-experts", "2"],
    ["--tokenizer", "word", "--tie-weights"],
], ids=["word", "bpe", "adaptive-head", "mos-head", "tied"])
def test_train_sample_eval_for_every_tokenizer_and_head(tmp_path, capsys, ptb_folder, flags):
    data = ptb_folder if "--tokenizer" in flags else None
    folder, report = train_sample_eval(tmp_path, capsys, data, *flags, prime="the" if data else "ROMEO:")
    config = load_checkpoint(folder).config
    assert report["tokenizer"] == config.data.tokenizer
    assert (config.model.head, config.model.tie_weights) == (
        flags[flags.index("--head") + 1] if "--head" in flags else "softmax", "--tie-weights" in flags)


def test_eval_json_keys_and_values(tmp_path, capsys, trained_checkpoint):
    text = tmp_path / "t.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20, encoding="utf-8")
    code, out, _ = run(capsys, "eval", trained_checkpoint, text, "--json")
    assert code == 0
    report = json.loads(out)
    assert {"nats_per_char", "bits_per_char", "perplexity", "perplexity_base2", "characters"} <= set(report)
    assert report["characters"] == report["tokens"] == len(text.read_text()) - 1
    assert report["tokenizer"] == "char" and report["bits_per_token"] == report["bits_per_char"]
    assert abs(report["bits_per_char"] - report["nats_per_char"] / 0.6931471805599453) < 1e-9
    code, out, _ = run(capsys, "eval", trained_checkpoint, text)
    assert "bits per character" in out and "perplexity" in out
    code, out, _ = run(capsys, "eval", trained_checkpoint, text, "--dynamic", "--dynamic-lr", "0.1", "--json")
    assert code == 0 and json.loads(out)["characters"] == report["characters"]
    for bad in (("--dynamic-lr", "0"), ("--dynamic-lr", "nan"), ("--dynamic-lr", "inf"), ("--dynamic-decay", "nan")):
        code, _, err = run(capsys, "eval", trained_checkpoint, text, "--dynamic", *bad)
        assert code == 1 and "--dynamic needs" in err, bad
    for flags, message in ((["--dynamic-lr", "0.1"], "--dynamic-lr set dynamic evaluation: add --dynamic"),
                           (["--dynamic", "--batch-size", "8"], "--dynamic reads the file as one stream"),
                           (["--dynamic", "--burn-in", "5"], "--dynamic reads the file as one stream")):
        code, _, err = run(capsys, "eval", trained_checkpoint, text, *flags)
        assert code == 1 and message in err, flags


def test_sample_is_reproducible_and_supports_every_option(capsys, trained_checkpoint):
    outputs = [run(capsys, "sample", trained_checkpoint, "--length", 50, "--seed", 5)[1] for _ in range(2)]
    assert outputs[0] == outputs[1]
    exact = run(capsys, "sample", trained_checkpoint, "--length", 50, "--seed", 5, "--engine-weights", "fp32")[1]
    assert run(capsys, "sample", trained_checkpoint, "--length", 50, "--seed", 5, "--no-fast")[1] == exact
    for extra in (["--top-k", 3], ["--top-p", 0.5], ["--argmax"], ["--temperature", 0.5], ["--beam-width", 3]):
        code, out, err = run(capsys, "sample", trained_checkpoint, "--length", 20, *extra)
        assert code == 0 and len(out) == 21, (extra, err)
    code, out, _ = run(capsys, "sample", trained_checkpoint, "--length", 20, "--num-samples", 3)
    assert out.count("--- sample") == 3
    code, out, err = run(capsys, "sample", trained_checkpoint, "--length", 5, "--window", 10)
    assert code == 0 and "--window has no effect here: it needs --sampling windowed" in err
    code, out, err = run(capsys, "sample", trained_checkpoint, "--length", 5, "--argmax", "--top-k", 3)
    assert code == 1 and "argmax always takes the most likely token" in err


def test_prime_file_and_unknown_characters(tmp_path, capsys, trained_checkpoint):
    prime = tmp_path / "prime.txt"
    prime.write_text("KING:", encoding="utf-8")
    code, out, _ = run(capsys, "sample", trained_checkpoint, "--prime-file", prime, "--length", 5)
    assert code == 0 and out.startswith("KING:")
    code, out, err = run(capsys, "sample", trained_checkpoint, "--prime-text", "Ça va ☃", "--length", 5)
    assert code == 1 and "'Ç', '☃'" in err and "--unknown skip" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "sample", trained_checkpoint, "--prime-text", "Ça va ☃", "--length", 5,
                         "--unknown", "skip")
    assert code == 0 and out.startswith("a va ") and "dropping" in err


def test_prepare_reports_the_corpus(capsys, text_file):
    code, out, _ = run(capsys, "prepare", text_file("hello\n" * 100), "--val-frac", "0.1")
    assert code == 0 and "characters: 600" in out and "uint8" in out and "val 60" in out


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    (b"", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "looks binary"),
    (b"hello \xff world", "not valid UTF-8: undecodable byte at byte offset 6"),
    (b"tiny corpus", "fewer than batch_size x seq_length + 1"),
])
def test_bad_training_text(tmp_path, capsys, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(capsys, "train", path, *TINY, "--checkpoint-dir", tmp_path / "ck", "--max-steps", 1)
    assert code == 1 and message in err and err.startswith("rnnlab: error:")
    assert len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "ck").glob("*.safetensors")) if (tmp_path / "ck").exists() else True


@pytest.mark.parametrize("flags, message", [
    (["--hidden-size", "0"], "hidden_size must be > 0"),
    (["--dropout", "1"], "dropout must be in [0, 1)"),
    (["--batch-size", "-3"], "batch_size must be > 0"),
    (["--val-frac", "0"], "validation split has 0 tokens"),
])
def test_bad_training_settings(tmp_path, capsys, flags, message):
    code, _, err = run(capsys, "train", *TINY, *flags, "--checkpoint-dir", tmp_path, "--max-steps", 1)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "0"], "temperature must be > 0"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--length", "-1"], "length must be > 0"),
])
def test_bad_sample_settings(capsys, trained_checkpoint, flags, message):
    code, _, err = run(capsys, "sample", trained_checkpoint, *flags)
    assert code == 1 and message in err


def test_bad_checkpoints(tmp_path, capsys, trained_checkpoint):
    code, _, err = run(capsys, "sample", tmp_path / "missing.safetensors")
    assert code == 1 and "checkpoint not found" in err
    real = load_checkpoint(trained_checkpoint).path
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(real.read_bytes()[:1000])
    code, _, err = run(capsys, "sample", truncated)
    assert code == 1 and "corrupt or truncated" in err
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint at all")
    code, _, err = run(capsys, "eval", corrupt, real)
    assert code == 1 and "corrupt or truncated" in err
    future = tmp_path / "future.safetensors"
    data = real.read_bytes()
    newer = "9" * len(str(FORMAT_VERSION))  # as many digits: the header keeps its length
    future.write_bytes(data.replace(f'\\"format_version\\": {FORMAT_VERSION}'.encode(),
                                    f'\\"format_version\\": {newer}'.encode(), 1))
    code, _, err = run(capsys, "sample", future)
    assert code == 1 and "newer rnnlab" in err


def test_resume_refuses_changed_hyperparameters(capsys, trained_checkpoint):
    code, _, err = run(capsys, "train", "--resume", trained_checkpoint, "--hidden-size", "99")
    assert code == 1 and "cannot change model.hidden_size when resuming" in err


def rnnlab(*argv, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "rnnlab", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_write_a_checkpoint_and_exit_cleanly(tmp_path, signum):
    folder = tmp_path / "ck"
    proc = rnnlab("train", *TINY, "--eval-every", "100000", "--checkpoint-dir", folder, "--max-steps", "1000000")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (folder / "log.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1.5)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "interrupted after" in out
    ckpt = load_checkpoint(folder, prefer="last")
    assert ckpt.trainer["progress"]["step"] > 0


def test_errors_never_show_a_traceback(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00binary")
    proc = rnnlab("train", bad, "--no-progress")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err and err.count("\n") == 1


def test_scheme_presets_train_and_sample_as_the_paper(tmp_path, capsys):
    folder = tmp_path / "s1"
    code, _, err = run(capsys, "train", "--scheme", "1", "--k2", "16", "--k1", "8", "--hidden-size", "16",
                       "--embedding-size", "0", "--batch-size", "4", "--max-steps", "4", "--eval-every", "4",
                       "--sample-length", "0", "--no-progress", "--checkpoint-dir", folder)
    assert code == 0, err
    config = load_checkpoint(folder).config.train
    assert (config.batching, config.state, config.loss_positions, config.k1, config.seq_length) == \
        ("equidistant", "learned", "all", 8, 16)
    calls = []
    import rnnlab.sampling as sampling
    original = sampling.generate

    def spy(stepper, prime, cfg):
        calls.append((cfg.sampling, cfg.window))
        return original(stepper, prime, cfg)

    sampling.generate = spy
    try:
        code, out, _ = run(capsys, "sample", folder, "--length", "5")
    finally:
        sampling.generate = original
    assert code == 0 and calls == [("windowed", 16)]
    code, out, _ = run(capsys, "eval", folder, folder.parent / "s1" / "log.jsonl", "--burn-in", "16", "--json")
    assert code in (0, 1)  # the run log may hold characters outside the vocabulary; only no traceback matters


def test_serve_without_checkpoints_trains_a_default_model_once(tmp_path, monkeypatch):
    import rnnlab.cli as cli
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cli, "DEFAULT_MODEL_MINUTES", 0.02)
    folder = cli._default_model()
    assert (folder / "best.json").is_file() and folder == tmp_path / "rnnlab" / "default-model"
    first = load_checkpoint(folder).path
    assert cli._default_model() == folder and load_checkpoint(folder).path == first  # cached, not retrained
    assert load_checkpoint(folder).config.model.hidden_size == 256


def test_resume_through_the_cli_continues_the_run(tmp_path, capsys):
    folder = tmp_path / "ck"
    code, out, err = run(capsys, "train", *TINY, "--max-steps", 10, "--eval-every", 5, "--checkpoint-dir", folder)
    assert code == 0, err
    code, out, err = run(capsys, "train", "--resume", folder, "--max-steps", 20, "--no-progress",
                         "--sample-length", "0")
    assert code == 0, err
    assert "resuming" in err and "done after 20 steps" in out
    assert load_checkpoint(folder, prefer="last").trainer["progress"]["step"] == 20


def test_init_from_takes_new_regularizers_and_keeps_the_architecture(tmp_path, capsys, trained_checkpoint):
    common = ["--max-steps", 4, "--eval-every", 4, "--batch-size", 8, "--seq-length", 32, "--sample-length", 0,
              "--no-progress"]
    code, _, err = run(capsys, "train", "--init-from", trained_checkpoint, *common, "--checkpoint-dir",
                       tmp_path / "a", "--weight-drop", 0.3, "--dropout-hidden", 0.2, "--ar", 1.0, "--dropout", 0.0)
    assert code == 0, err
    model = load_checkpoint(tmp_path / "a").config.model
    assert (model.weight_drop, model.dropout_hidden, model.activation_regularization, model.dropout) == \
        (0.3, 0.2, 1.0, 0.0)
    assert model.hidden_size == load_checkpoint(trained_checkpoint).config.model.hidden_size
    for flags, what in ((["--head", "adaptive"], "head=softmax"), (["--tie-weights"], "tie_weights=False"),
                        (["--cell", "gru"], "cell=lstm")):
        code, _, err = run(capsys, "train", "--init-from", trained_checkpoint, *common, *flags,
                           "--checkpoint-dir", tmp_path / "b")
        assert code == 1 and "keeps the checkpoint's architecture; it has " + what in err, err
    code, _, err = run(capsys, "train", "--init-from", trained_checkpoint, *common, "--state", "learned",
                       "--checkpoint-dir", tmp_path / "c")  # adds h0/c0 (from zero) to the checkpoint's weights
    assert code == 0, err
    assert "initial_state.0" in load_checkpoint(tmp_path / "c").model_state


def test_ctrl_c_while_preparing_stops_at_once_without_a_checkpoint(tmp_path, capsys, monkeypatch):
    import os

    import rnnlab.training.run as setup  # where a run is set up and its corpus prepared
    real = setup.prepare_from_config

    def interrupted_prepare(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while the corpus is being prepared
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(setup, "prepare_from_config", interrupted_prepare)
    code, out, err = run(capsys, "train", *TINY, "--max-steps", 5, "--checkpoint-dir", tmp_path / "ck")
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "ck").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back


def test_eval_scores_a_scheme_1_model_windowed_as_it_samples(tmp_path, capsys):
    folder = tmp_path / "s1"
    code, _, err = run(capsys, "train", *TINY, "--scheme", 1, "--k1", 16, "--max-steps", 4, "--eval-every", 4,
                       "--checkpoint-dir", folder)
    assert code == 0, err
    text = tmp_path / "t.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 4, encoding="utf-8")
    code, out, _ = run(capsys, "eval", folder, text, "--json")
    report = json.loads(out)
    assert code == 0 and report["evaluation"] == "windowed" and report["window"] == 32  # its k2
    code, out, _ = run(capsys, "eval", folder, text, "--json", "--sampling", "progressive")
    assert json.loads(out)["evaluation"] == "progressive"
    assert json.loads(out)["bits_per_char"] != report["bits_per_char"]
    code, out, _ = run(capsys, "eval", folder, text, "--window", 8, "--json")
    assert code == 0 and json.loads(out)["window"] == 8  # (its own way of sampling, over another window)
    code, _, err = run(capsys, "eval", load_checkpoint(folder).path, text, "--window", 8, "--sampling", "progressive")
    assert code == 1 and "--window sets windowed evaluation" in err
