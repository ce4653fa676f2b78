"""Issue 15's daily-use corners: scoring the checkpoint's own held-out split, the version, presets by name."""

from __future__ import annotations

import json

import pytest

from rnnlab.cli import main
from rnnlab.data.corpus import prepare_from_config
from rnnlab.training.checkpoint import load_checkpoint


def scored(capsys, *args) -> dict:
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_split_equals_eval_of_the_same_text_as_a_file(trained_checkpoint, tmp_path, capsys, split):
    ckpt = load_checkpoint(trained_checkpoint)
    corpus = prepare_from_config(ckpt.config.data)
    tokens = getattr(corpus.splits(ckpt.config.data.val_frac, ckpt.config.data.test_frac), split)
    (tmp_path / "held_out.txt").write_text(ckpt.vocab.decode(tokens), encoding="utf-8")
    by_split = scored(capsys, str(trained_checkpoint), "--split", split)
    by_file = scored(capsys, str(trained_checkpoint), str(tmp_path / "held_out.txt"))
    assert by_split["split"] == split and by_split["tokens"] == by_file["tokens"] == len(tokens) - 1
    assert by_split["nats_per_char"] == pytest.approx(by_file["nats_per_char"], abs=1e-6)


def test_eval_takes_a_file_or_a_split(trained_checkpoint, tmp_path, capsys):
    assert main(["eval", str(trained_checkpoint)]) == 1
    assert "give a FILE to score, or --split val|test" in capsys.readouterr().err
    (tmp_path / "t.txt").write_text("to be or not", encoding="utf-8")
    assert main(["eval", str(trained_checkpoint), str(tmp_path / "t.txt"), "--split", "val"]) == 1
    with pytest.raises(SystemExit) as caught:  # (argparse: not one of the choices)
        main(["eval", str(trained_checkpoint), "--split", "train"])
    assert caught.value.code == 2


def test_a_shipped_preset_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from rnnlab.config import build_run_config
    from rnnlab.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    config = build_run_config("char_rnn_classic", {})
    assert config.model.hidden_size == 128 and config.train.optimizer == "rmsprop"
    assert build_run_config("char_rnn_classic.toml", {}).to_dict() == config.to_dict()
    with pytest.raises(ConfigError) as caught:
        build_run_config("char_rnn_clasic", {})
    assert "the presets shipped with rnnlab: blog_sherlock_lstm, char_ptb_awd_lstm" in str(caught.value)


def test_the_wheel_ships_the_presets_and_the_version(tmp_path, capsys):
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    from rnnlab import __version__
    from rnnlab.config.fields import preset_names

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("rnnlab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"rnnlab/presets/{name}.toml" for name in preset_names()} <= set(names)
    assert len(preset_names()) >= 10 and "rnnlab/data/corpora/tinyshakespeare.txt" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Classifier: License :: OSI Approved :: MIT License" in metadata
    assert "Provides-Extra: bpe" in metadata and "Requires-Dist: tokenizers" not in metadata.split("Provides-Extra")[0]
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"rnnlab {__version__}"

    # installed from the wheel into a fresh venv (its dependencies seen from this one, without this
    # checkout's editable rnnlab), a preset is found by name from a folder that holds no presets
    import site
    import venv

    fresh = tmp_path / "venv"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    fresh_site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                                check=True, capture_output=True, text=True).stdout.strip()
    Path(fresh_site, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n", encoding="utf-8")
    work = tmp_path / "elsewhere"
    work.mkdir()
    run = subprocess.run([str(python), "-c", "import rnnlab, sys; print(rnnlab.__file__); from rnnlab.cli import main; "
                          "sys.exit(main(sys.argv[1:]))", "--quiet", "train", "--config", "char_rnn_classic",
                          "--max-steps", "2", "--eval-every", "2", "--sample-length", "0", "--checkpoint-dir", "ck"],
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(fresh_site) and (work / "ck" / "best.json").is_file()


def test_the_three_line_api_trains_completes_and_scores(tmp_path, capsys):
    import rnnlab

    result = rnnlab.train(max_steps=12, hidden_size=32, num_layers=1, embedding_size=16, batch_size=4,
                          seq_length=16, eval_every=6, checkpoint_dir=str(tmp_path / "ck"), sample_length=0,
                          progress_bar=False)
    lm = rnnlab.load(result.checkpoint_dir)
    assert result.steps == 12 and lm.config.model.hidden_size == 32 and "1x32 lstm" in repr(lm)
    text = lm.complete("ROMEO:", length=40, temperature=0.8, seed=3)
    assert len(text) == 40 and text == lm.complete("ROMEO:", length=40, temperature=0.8, seed=3)
    assert len(lm.complete("ROMEO:", length=10, n=3)) == 3
    bits = lm.score("To be, or not to be, that is the question.")
    assert 0 < bits < 8 and lm.score("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz") != bits
    # the same number as the CLI's eval of that text
    (tmp_path / "t.txt").write_text("To be, or not to be, that is the question.", encoding="utf-8")
    assert main(["eval", str(result.checkpoint_dir), str(tmp_path / "t.txt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bits_per_char"] == pytest.approx(bits, abs=1e-9)


def test_the_api_refuses_unknown_settings_in_one_line(tmp_path):
    import rnnlab
    from rnnlab.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        rnnlab.train(hiden_size=32, checkpoint_dir=str(tmp_path / "ck"))
    assert "train() has no setting 'hiden_size'" in str(caught.value) and "hidden_size" in str(caught.value)
    with pytest.raises(ConfigError):
        rnnlab.train(hidden_size=-3, checkpoint_dir=str(tmp_path / "ck"))


def test_the_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    """The first Python block of README's Python API section, run as it is."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python") + 9)]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].endswith("bits/char") and 0 < float(printed[-1].split()[0]) < 8
    assert (tmp_path / "demo" / "best.json").is_file()


def test_resume_says_when_there_is_nothing_to_train_or_the_schedule_has_ended(tmp_path, caplog):
    import logging

    from conftest import tiny_config

    from rnnlab.training.loop import train
    from rnnlab.training.run import resolve_run

    train(tiny_config(tmp_path / "ck", max_steps=10, eval_every=5), progress_bar=False)
    caplog.set_level(logging.WARNING, logger="rnnlab")
    result = train(resolve_run(resume=tmp_path / "ck"), progress_bar=False)
    assert result.steps == 10 and "its --max-steps is 10: nothing to train; give a higher one" in caplog.text
    caplog.clear()
    run = resolve_run(resume=tmp_path / "ck", overrides={"train": {"max_steps": 14}})
    assert run.progress.planned_steps == 10
    train(run, progress_bar=False)
    assert "the cosine schedule was planned for 10 steps when the run started and has ended" in caplog.text
    assert "--extend-schedule" in caplog.text
    caplog.clear()
    run = resolve_run(resume=tmp_path / "ck", overrides={"train": {"max_steps": 30, "extend_schedule": True}})
    assert run.progress.planned_steps == 30 and "schedule" not in caplog.text


def test_without_a_terminal_progress_is_one_plain_line_per_log_window(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "train.log"
    with open(log, "wb") as handle:  # (stderr to a file: no terminal)
        subprocess.run([sys.executable, "-m", "rnnlab", "train", "--max-steps", "20", "--log-every", "5",
                        "--eval-every", "10", "--hidden-size", "16", "--num-layers", "1", "--batch-size", "4",
                        "--seq-length", "16", "--sample-length", "0", "--checkpoint-dir", str(tmp_path / "ck")],
                       stdout=handle, stderr=subprocess.STDOUT, check=True, timeout=300)
    text = log.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("step ") and "tokens/s" in line]
    assert "\r" not in text and [line.split()[1] for line in lines] == ["5/20", "10/20", "15/20", "20/20"]
    assert all("left" in line and "train loss" in line for line in lines)


def test_the_logged_train_loss_is_the_mean_of_its_window_and_the_eta_follows_the_time_limit(tmp_path):
    from conftest import tiny_config

    from rnnlab.training.loop import Meter, train
    from rnnlab.training.run import resolve_run

    train(tiny_config(tmp_path / "ck", max_steps=12, log_every=4, eval_every=12), progress_bar=False)
    records = [json.loads(line) for line in (tmp_path / "ck" / "log.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in trains] == [4, 8, 12]
    run = resolve_run(tiny_config(tmp_path / "ck2", max_steps=0, max_minutes=0.5))
    meter = Meter(run, enabled=False)
    from rnnlab.training.loop import train_batch

    losses = []
    for _ in range(3):
        loss, _ = train_batch(run, meter.elapsed())
        meter.step_done(loss)
        losses.append(loss)
    assert meter.window_loss() == pytest.approx(sum(losses) / 3)
    assert abs(meter.eta() - (30.0 - meter.elapsed())) < 1.0  # right after the first steps: the time left
    meter.close()


def test_eval_tokens_bounds_validation_and_the_whole_split_is_scored_at_the_end(tmp_path, caplog):
    import logging

    from conftest import tiny_config

    from rnnlab.training.loop import train

    caplog.set_level(logging.INFO, logger="rnnlab")
    result = train(tiny_config(tmp_path / "ck", max_steps=8, eval_every=4, eval_tokens=300), progress_bar=False)
    records = [json.loads(line) for line in (tmp_path / "ck" / "log.jsonl").read_text().splitlines()]
    whole = [r for r in records if r["event"] == "val_full"]
    assert len(whole) == 1 and whole[0]["tokens"] > 300 and result.whole_val_loss == whole[0]["val_loss"]
    assert "validation: the first 300 of the" in caplog.text
    assert result.whole_val_loss != result.val_loss  # (the part and the whole differ)
    caplog.clear()
    result = train(tiny_config(tmp_path / "ck2", max_steps=4, eval_every=4), progress_bar=False)
    assert result.whole_val_loss == result.val_loss and "validation: the first" not in caplog.text


def test_tensorboard_event_files_hold_the_run_log(tmp_path):
    pytest.importorskip("tensorboard")
    from conftest import tiny_config
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rnnlab.training.loop import train

    train(tiny_config(tmp_path / "ck", max_steps=8, eval_every=4, log_every=2, tensorboard=True,
                      preview_length=10), progress_bar=False)
    events = EventAccumulator(str(tmp_path / "ck" / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/learning_rate", "train/tokens_per_s", "val/loss", "val/bits_per_char"} <= set(
        tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]
    assert [e.step for e in events.Scalars("val/loss")] == [4, 8]
    records = [json.loads(line) for line in (tmp_path / "ck" / "log.jsonl").read_text().splitlines()]
    assert events.Scalars("val/loss")[0].value == pytest.approx(next(r["val_loss"] for r in records
                                                                     if r["event"] == "val"), rel=1e-6)
    assert "preview/text_summary" in tags["tensors"]


def test_a_validation_reports_its_progress():
    import numpy as np
    import torch

    from rnnlab.config import ModelConfig
    from rnnlab.evaluation import evaluate_tokens
    from rnnlab.models.lm import RecurrentLM

    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(num_layers=1, hidden_size=8, embedding_size=4), 7)
    seen = []
    tokens = np.random.default_rng(0).integers(0, 7, 5000)
    with_progress = evaluate_tokens(model, tokens, batch_size=4, seq_length=50, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 5
    assert with_progress.total_nats == evaluate_tokens(model, tokens, batch_size=4, seq_length=50).total_nats
