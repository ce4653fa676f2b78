import argparse

import pytest

from rnnlab.config import (
    ModelConfig,
    RunConfig,
    SampleConfig,
    TrainConfig,
    add_flags,
    build_run_config,
    build_section,
    overrides_from_args,
)
from rnnlab.errors import ConfigError


def parse(section, section_type, argv):
    parser = argparse.ArgumentParser()
    add_flags(parser, section, section_type)
    return overrides_from_args(parser.parse_args(argv))


def test_every_field_has_a_flag_with_its_type():
    overrides = parse("train", TrainConfig, ["--batch-size", "7", "--learning-rate", "0.01", "--optimizer", "sgd"])
    assert overrides == {"train": {"batch_size": 7, "learning_rate": 0.01, "optimizer": "sgd"}}


def test_flags_reject_bad_types_and_choices():
    with pytest.raises(SystemExit):
        parse("train", TrainConfig, ["--batch-size", "seven"])
    with pytest.raises(SystemExit):
        parse("model", ModelConfig, ["--cell", "transformer"])


def test_boolean_flags_have_negations():
    assert parse("sample", SampleConfig, ["--argmax"]) == {"sample": {"argmax": True}}
    assert parse("sample", SampleConfig, ["--no-fast"]) == {"sample": {"fast": False}}


def test_toml_then_flags_override(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("[model]\nhidden_size = 99\ncell = 'gru'\n[train]\nlearning_rate = 1\n")
    config = build_run_config(str(preset), {"model": {"hidden_size": 12}})
    assert (config.model.hidden_size, config.model.cell) == (12, "gru")
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)


@pytest.mark.parametrize("text, message", [
    ("[model]\nhiden_size = 3\n", "unknown setting"),
    ("[modle]\n", "unknown section"),
    ("[model]\nhidden_size = 'big'\n", "must be of type int"),
    ("[model]\nhidden_size = true\n", "must be an integer"),
    ("[model\n", "not valid TOML"),
])
def test_bad_presets_are_explained(tmp_path, text, message):
    preset = tmp_path / "p.toml"
    preset.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_run_config(str(preset), {})


def test_missing_preset():
    with pytest.raises(ConfigError, match="not found"):
        build_run_config("/nonexistent/p.toml", {})


@pytest.mark.parametrize("section, values, message", [
    ("model", {"hidden_size": 0}, "hidden_size must be > 0"),
    ("model", {"num_layers": -1}, "num_layers must be > 0"),
    ("model", {"dropout": 1.0}, "dropout must be in"),
    ("model", {"dropout": -0.1}, "dropout must be in"),
    ("train", {"batch_size": 0}, "batch_size must be > 0"),
    ("train", {"learning_rate": 0.0}, "learning_rate must be > 0"),
    ("train", {"learning_rate": float("nan")}, "learning_rate must be > 0"),
    ("data", {"val_frac": 1.5}, "val_frac"),
    ("data", {"val_frac": 0.6, "test_frac": 0.5}, "leave data for training"),
])
def test_absurd_settings_are_rejected(section, values, message):
    with pytest.raises(ConfigError, match=message):
        build_run_config(None, {section: values})


@pytest.mark.parametrize("values, message", [
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"temperature": -1.0}, "temperature must be > 0"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"length": 0}, "length must be > 0"),
])
def test_bad_sample_settings(values, message):
    with pytest.raises(ConfigError, match=message):
        build_section(SampleConfig, values)


def test_round_trip_through_dict():
    config = RunConfig()
    config.model.cell = "rnn"
    assert RunConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("text, message", [
    ("[model]\ncell = 'transformer'\n", "cell must be one of lstm, gru, rnn"),
    ("[train]\noptimizer = 'lbfgs'\n", "optimizer must be one of"),
    ("[train]\nschedule = 'linear'\n", "schedule must be one of"),
    ("[train]\nprecision = 'fp8'\n", "precision must be one of"),
    ("[train]\ndevice = 'tpu'\n", "device must be one of"),
    ("[train]\nprecision = 'fp16'\ndevice = 'cpu'\n", "fp16 is for CUDA"),
    ("[train]\nseed = -1\n", "seed must be in"),
    ("[model]\ncell = 'qrnn'\nqrnn_window = 3\n", "qrnn_window must be one of 1, 2; got 3"),
    ("[train]\nscheme = 7\n", "scheme must be one of 1, 2, 3, 4"),
    ("[model]\nhead = 'adaptive'\nadaptive_cutoffs = '50,20'\n", "must be positive and increasing"),
])
def test_choices_are_checked_whatever_their_source(tmp_path, text, message):
    preset = tmp_path / "p.toml"
    preset.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_run_config(str(preset), {})


def test_a_preset_that_is_not_utf8(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_bytes(b"[model]\ncell = '\xff'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_run_config(str(preset), {})


@pytest.mark.parametrize("values", [{"temperature": 0.5}, {"top_k": 3}, {"num_samples": 2}, {"argmax": True},
                                    {"sampling": "windowed"}])
def test_beam_search_refuses_sampling_settings(values):
    with pytest.raises(ConfigError, match="cannot be combined with"):
        build_section(SampleConfig, {"beam_width": 4, **values})


@pytest.mark.parametrize("overrides, flag, needs", [
    ({"model": {"qrnn_window": 1}}, "--qrnn-window", "--cell qrnn"),
    ({"model": {"qrnn_pooling": "ifo"}}, "--qrnn-pooling", "--cell qrnn"),
    ({"model": {"adaptive_cutoffs": "10,20"}}, "--adaptive-cutoffs", "--head adaptive"),
    ({"model": {"mos_experts": 3}}, "--mos-experts", "--head mos"),
    ({"model": {"dense_size": 64}}, "--dense-size", "--architecture paper"),
    ({"model": {"num_layers": 1, "dropout_hidden": 0.2}}, "--dropout-hidden", "--num-layers 2 or more"),
    ({"train": {"momentum": 0.5}}, "--momentum", "--optimizer sgd"),
    ({"train": {"nt_asgd_interval": 3}}, "--nt-asgd-interval", "--optimizer nt-asgd"),
    ({"train": {"cycle_steps": 100}}, "--cycle-steps", "--schedule cyclic"),
    ({"train": {"patience": 4}}, "--patience", "--schedule plateau"),
    ({"train": {"decay_after": 2}}, "--decay-after", "--schedule char-rnn"),
    ({"train": {"k3": 2, "seq_length": 8}}, "--k3", "--loss-positions last-k"),
    ({"train": {"loss_positions": "last", "loss_decay": "linear"}}, "--loss-decay", "--loss-positions all or last-k"),
    ({"model": {"num_layers": 2, "dropout_hidden": 0.3, "dropout_last_input": 0.0}}, "--dropout-hidden",
     "--num-layers 2 or more (3 or more with --dropout-last-input)"),
    ({"data": {"val_file": "v.txt", "val_frac": 0.1}}, "--val-frac", "a single corpus file"),
])
def test_a_setting_that_has_no_effect_is_reported(caplog, overrides, flag, needs):
    with caplog.at_level("WARNING", logger="rnnlab"):
        build_run_config(None, overrides)
    assert f"{flag} has no effect here: it needs {needs}" in caplog.text


def test_settings_in_use_and_the_shipped_presets_raise_no_warning(caplog):
    from pathlib import Path
    with caplog.at_level("WARNING", logger="rnnlab"):
        build_run_config(None, {"model": {"cell": "qrnn", "qrnn_window": 1}, "train": {"optimizer": "sgd",
                                                                                     "momentum": 0.5}})
        for preset in sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.toml")):
            build_run_config(str(preset), {})
    assert caplog.text == ""


def test_adaptive_softmax_on_ids_not_sorted_by_frequency_is_reported(caplog):
    with caplog.at_level("WARNING", logger="rnnlab"):
        build_run_config(None, {"model": {"head": "adaptive"}})
    assert "assumes ids sorted by frequency" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rnnlab"):
        build_run_config(None, {"model": {"head": "adaptive"}, "data": {"tokenizer": "word"}})
    assert caplog.text == ""


def test_fractions_with_a_folder_of_split_files_are_reported(caplog, tmp_path):
    for name in ("x.train.txt", "x.valid.txt"):
        (tmp_path / name).write_text("a b\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="rnnlab"):
        build_run_config(None, {"data": {"path": str(tmp_path), "test_frac": 0.1}})
    assert "--test-frac has no effect here" in caplog.text
    caplog.clear()
    (tmp_path / "input.txt").write_text("a b\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="rnnlab"):
        build_run_config(None, {"data": {"path": str(tmp_path), "test_frac": 0.1}})
    assert caplog.text == ""


@pytest.mark.parametrize("values", [{"temperature": 0.5}, {"top_k": 3}, {"top_p": 0.9}])
def test_argmax_refuses_settings_it_would_ignore(values):
    with pytest.raises(ConfigError, match="argmax always takes the most likely token"):
        build_section(SampleConfig, {"argmax": True, **values})
    build_section(SampleConfig, {"argmax": True, "num_samples": 2})  # several greedy streams are fine


@pytest.mark.parametrize("text, overrides, message", [
    ("train = 'x'\n", {}, r"\[train\] must be a table of settings"),
    ("model = 3\n", {}, r"\[model\] must be a table of settings"),
    ("data = 5\n", {"data": {"path": "x.txt"}}, r"\[data\] must be a table of settings"),
    ("[model]\nhidden_size = 'big'\n", {"model": {"hidden_size": 32}}, "model.hidden_size must be of type int"),
])
def test_a_broken_preset_is_refused_even_where_a_flag_replaces_the_value(tmp_path, text, overrides, message):
    preset = tmp_path / "p.toml"
    preset.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_run_config(str(preset), overrides)
