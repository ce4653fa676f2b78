"""The one door to a run: resolve_run gives the library the run the CLI would start or resume, the
policies come from metadata on the config fields, and every subcommand's flags from a dataclass."""

import dataclasses
import json
import shutil

import pytest
from conftest import StopAfter, tiny_config

from rnnlab.cli import build_parser, main
from rnnlab.config import EvalConfig, ModelConfig, SchemesExperimentConfig, TrainConfig, marked
from rnnlab.errors import ConfigError
from rnnlab.training.checkpoint import load_checkpoint
from rnnlab.training.loop import train
from rnnlab.training.run import resolve_run


def records(folder):
    lines = [json.loads(line) for line in open(folder / "log.jsonl")]
    return {(r["event"], r["step"]): r.get("train_loss", r.get("val_loss")) for r in lines
            if r["event"] in ("train", "val")}


def test_the_library_resumes_with_one_call_exactly_as_the_cli_does(tmp_path, capsys):
    config = tiny_config(tmp_path / "stopped", max_steps=16, eval_every=8, log_every=1)
    train(config, stop=StopAfter(6), progress_bar=False)
    shutil.copytree(tmp_path / "stopped", tmp_path / "by-cli")
    run = resolve_run(resume=tmp_path / "stopped")  # no config: the checkpoint's own
    assert run.progress.step == 6 and run.resumed_from is not None
    library = train(run, progress_bar=False)
    assert main(["--quiet", "train", "--resume", str(tmp_path / "by-cli"), "--no-progress"]) == 0
    a, b = records(tmp_path / "stopped"), records(tmp_path / "by-cli")
    assert library.steps == 16 and set(a) == set(b) and all(a[key] == b[key] for key in a)  # bit for bit


def test_resolve_run_takes_overrides_and_refuses_what_a_resume_may_not_change(tmp_path):
    train(tiny_config(tmp_path / "ck", max_steps=4, eval_every=4), progress_bar=False)
    assert resolve_run(resume=tmp_path / "ck", overrides={"train": {"max_steps": 9}}).config.train.max_steps == 9
    with pytest.raises(ConfigError, match="cannot change train.learning_rate when resuming"):
        resolve_run(resume=tmp_path / "ck", overrides={"train": {"learning_rate": 0.5}})


def changed_value(field, value):
    if field.metadata.get("choices"):
        return next(choice for choice in field.metadata["choices"] if choice != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    return "7"


@pytest.mark.parametrize("name", marked(ModelConfig, "shapes_weights"))
def test_every_field_marked_as_shaping_the_weights_is_kept_by_a_resume_and_by_init_from(
        tmp_path_factory, capsys, name):
    folder = tmp_path_factory.getbasetemp() / "shapes-weights-run"
    if not (folder / "last.json").is_file():
        train(tiny_config(folder, max_steps=2, eval_every=2), progress_bar=False)
    field = next(f for f in dataclasses.fields(ModelConfig) if f.name == name)
    value = changed_value(field, getattr(load_checkpoint(folder).config.model, name))
    flag = "--" + (field.metadata.get("flag") or name).replace("_", "-")
    as_flag = [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    for door in ("--resume", "--init-from"):
        code = main(["--quiet", "train", door, str(folder), *as_flag, "--no-progress"])
        err = capsys.readouterr().err.strip()
        expected = (f"cannot change model.{name} when resuming" if door == "--resume"
                    else f"--init-from keeps the checkpoint's architecture; it has {name}=")
        assert code == 1 and len(err.splitlines()) == 1 and expected in err, (door, err)


def test_the_resume_policy_is_read_from_the_fields():
    resumable = set(marked(TrainConfig, "resumable"))
    assert {"max_steps", "max_epochs", "max_minutes", "checkpoint_dir"} <= resumable
    assert not resumable & {"learning_rate", "seed", "batch_size", "seq_length", "optimizer"}
    assert not set(marked(ModelConfig, "resumable"))  # nothing about the model may change on resume


def flags_of(parser_args):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    sub = commands.choices[parser_args[0]]
    if len(parser_args) > 1:
        sub = next(a for a in sub._actions if a.dest == "experiment").choices[parser_args[1]]
    return {option for action in sub._actions for option in action.option_strings}


def dataclass_flags(section_type, skip=()):
    flags = set()
    for f in dataclasses.fields(section_type):
        if f.name in skip:
            continue
        flag = "--" + (f.metadata.get("flag") or f.name).replace("_", "-")
        flags.add(flag)
        if f.type in (bool, "bool"):
            flags.add(f"--no-{flag[2:]}")
    return flags


def test_eval_flags_come_from_eval_config(capsys):
    assert flags_of(["eval"]) - {"-h", "--help", "--quiet"} == dataclass_flags(EvalConfig)
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(EvalConfig):
        assert f.metadata["help"].split()[0] in out


def test_experiment_flags_come_from_its_config():
    assert flags_of(["experiment", "schemes"]) - {"-h", "--help", "--quiet"} == \
        dataclass_flags(SchemesExperimentConfig, skip=("data",))


def test_a_given_setting_that_would_do_nothing_is_refused(tmp_path, capsys, trained_checkpoint):
    text = tmp_path / "t.txt"
    text.write_text("some text to score\n" * 20, encoding="utf-8")
    code = main(["experiment", "schemes", "--out", str(tmp_path / "x"), "--steps", "5", "--max-minutes", "1"])
    assert code == 1 and "give --steps or --max-minutes, not both" in capsys.readouterr().err
    code = main(["eval", str(trained_checkpoint), str(text), "--dynamic-decay", "0.1"])
    assert code == 1 and "--dynamic-decay set dynamic evaluation: add --dynamic" in capsys.readouterr().err
