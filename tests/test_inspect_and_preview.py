"""`rnnlab inspect` on real checkpoints, previews after every validation and `rnnlab plot` of real runs
(issue 13, items 4 to 6)."""

import json
import math

import pytest
from conftest import tiny_config

from rnnlab.cli import main
from rnnlab.training.checkpoint import load_checkpoint, save_checkpoint
from rnnlab.training.loop import train


def test_inspect_tells_what_a_checkpoint_holds(capsys, trained_checkpoint, tmp_path):
    assert main(["inspect", str(trained_checkpoint), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    ckpt = load_checkpoint(trained_checkpoint)
    assert facts["parameters"] == ckpt.build_model().num_parameters()
    assert (facts["cell"], facts["layers"], facts["hidden_size"]) == ("lstm", 2, 32)
    assert facts["tokenizer"] == "char" and facts["vocab_size"] == 65
    assert facts["step"] == ckpt.trainer["progress"]["step"] and facts["val_loss"] == ckpt.metrics["val_loss"]
    assert facts["format_version"] == 2 and facts["checksum_verified"] and facts["resumable"]
    assert facts["corpus_digest"] == ckpt.metrics["corpus_digest"] and facts["config"] == ckpt.config.to_dict()
    assert main(["inspect", str(trained_checkpoint)]) == 0
    text = capsys.readouterr().out
    assert "2x32 lstm" in text and f"{facts['parameters']:,} parameters" in text and "resumable: yes" in text
    bare = save_checkpoint(tmp_path / "bare.safetensors", ckpt.build_model(), ckpt.config, ckpt.vocab, metrics={})
    assert main(["inspect", str(bare)]) == 0
    assert "resumable: no" in capsys.readouterr().out


def test_inspect_of_a_broken_file_is_one_line(capsys, tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert main(["inspect", str(tmp_path / "junk.safetensors")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def records(folder, event):
    return [r for r in map(json.loads, open(folder / "log.jsonl")) if r["event"] == event]


def test_previews_follow_every_validation_and_leave_the_run_as_it_was(tmp_path, caplog):
    plain = train(tiny_config(tmp_path / "plain", max_steps=12, eval_every=4, log_every=1), progress_bar=False)
    with_previews = train(tiny_config(tmp_path / "previews", max_steps=12, eval_every=4, log_every=1,
                                      preview_length=30, preview_prime="The"), progress_bar=False)
    previews = records(tmp_path / "previews", "preview")
    assert [p["step"] for p in previews] == [4, 8, 12]
    assert all(p["prime"] == "The" and len(p["text"]) == 30 for p in previews)
    assert "preview at step 8: The" in caplog.text
    losses = {(r["event"], r["step"]): r.get("train_loss", r.get("val_loss"))
              for r in records(tmp_path / "plain", "train") + records(tmp_path / "plain", "val")}
    again = {(r["event"], r["step"]): r.get("train_loss", r.get("val_loss"))
             for r in records(tmp_path / "previews", "train") + records(tmp_path / "previews", "val")}
    assert losses == again and plain.val_loss == with_previews.val_loss  # the same run, bit for bit


def test_previews_are_not_printed_with_quiet(tmp_path, capsys):
    args = ["train", "--hidden-size", "16", "--embedding-size", "8", "--max-steps", "4", "--eval-every", "4",
            "--sample-length", "0", "--preview-length", "20", "--no-progress", "--checkpoint-dir"]
    assert main(["--quiet", *args, str(tmp_path / "a")]) == 0
    assert "preview at step" not in capsys.readouterr().err
    assert records(tmp_path / "a", "preview")  # (the run log still has it)
    assert main([*args, str(tmp_path / "b")]) == 0
    assert "preview at step 4" in capsys.readouterr().err


def test_plot_draws_the_runs_it_is_given(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from rnnlab.plots import plot_runs, read_curves

    for name in ("small", "wider"):
        config = tiny_config(tmp_path / name, max_steps=12, eval_every=4, log_every=2)
        config.model.hidden_size = 16 if name == "small" else 48
        train(config, progress_bar=False)
    out = tmp_path / "plots" / "curves.png"
    assert main(["plot", str(tmp_path / "small"), str(tmp_path / "wider"), "--out", str(out), "--x", "time"]) == 0
    assert "written:" in capsys.readouterr().out
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    drawn = plot_runs([tmp_path / "small"], tmp_path / "epoch.png", x="epoch", unit="nats")
    assert drawn["xlabel"].startswith("epoch") and drawn["ylabel"].startswith("loss (nats")
    curves = read_curves(tmp_path / "small", "step", "bits")
    assert [s for s, _ in curves.val] == [4, 8, 12] and [s for s, _ in curves.train] == [2, 4, 6, 8, 10, 12]
    nats = read_curves(tmp_path / "small", "step", "nats")
    assert curves.val[0][1] == pytest.approx(nats.val[0][1] / math.log(2))  # bits per char of a char model


def test_plot_refuses_what_it_cannot_draw(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 1
    assert "holds no run log" in capsys.readouterr().err
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x.jpg")]) == 1
    assert "must name a .png file" in capsys.readouterr().err
