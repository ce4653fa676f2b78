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
