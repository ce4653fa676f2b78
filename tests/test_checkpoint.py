import json

import pytest
import torch
from safetensors.torch import save_file

from rnnlab.config import RunConfig
from rnnlab.data.vocab import CharVocab
from rnnlab.errors import CheckpointError
from rnnlab.models.lm import RecurrentLM
from rnnlab.training.checkpoint import (
    FORMAT_VERSION,
    METADATA_KEY,
    checkpoint_name,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    update_pointer,
)


def small_run():
    config = RunConfig()
    config.model.hidden_size, config.model.embedding_size = 16, 4
    vocab = CharVocab("abcdef")
    return config, vocab, RecurrentLM(config.model, len(vocab))


def test_name_carries_epoch_and_val_loss():
    assert checkpoint_name("lstm", 0.951, 2.06812) == "lm_lstm_epoch0.95_2.0681.safetensors"


def test_round_trip_with_optimizer(tmp_path):
    config, vocab, model = small_run()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    model(torch.randint(0, 6, (2, 3)), targets=torch.randint(0, 6, (2, 3)))[1].backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "c.safetensors", model, config, vocab, metrics={"val_loss": 1.5},
                           trainer={"step": 1}, optimizer=optimizer)
    ckpt = load_checkpoint(path)
    assert ckpt.config == config and ckpt.vocab.chars == vocab.chars and ckpt.metrics["val_loss"] == 1.5
    rebuilt = ckpt.build_model()
    for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    fresh = torch.optim.Adam(rebuilt.parameters(), lr=0.5)
    fresh.load_state_dict(ckpt.optimizer_state())
    assert fresh.param_groups[0]["lr"] == 0.01 and tuple(fresh.param_groups[0]["betas"]) == (0.8, 0.9)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left behind


def test_half_precision_weights_load_into_a_cpu_fp32_model(tmp_path):
    """What a GPU run in bf16 would save: it loads and runs on CPU in fp32 with no conversion step."""
    config, vocab, model = small_run()
    path = save_checkpoint(tmp_path / "c.safetensors", model.to(torch.bfloat16), config, vocab, metrics={})
    rebuilt = load_checkpoint(path).build_model("cpu")
    assert rebuilt.head.weight.dtype == torch.float32 and rebuilt.head.weight.device.type == "cpu"
    logits, _ = rebuilt.step(torch.tensor([1]), None)
    assert torch.isfinite(logits).all()


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    config, vocab, model = small_run()

    def broken(tensors, filename, metadata):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("rnnlab.training.checkpoint.save_file", broken)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c.safetensors", model, config, vocab, metrics={})
    assert list(tmp_path.iterdir()) == []


def test_truncated_and_corrupt_files_are_refused(tmp_path):
    config, vocab, model = small_run()
    path = save_checkpoint(tmp_path / "c.safetensors", model, config, vocab, metrics={})
    data = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "truncated.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "garbage.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_foreign_safetensors_and_future_format(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not an rnnlab checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    config, vocab, model = small_run()
    future = {"format_version": FORMAT_VERSION + 1, "config": config.to_dict(), "vocab": vocab.to_dict()}
    save_file({"model.head.bias": torch.zeros(6)}, str(tmp_path / "future.safetensors"),
              metadata={METADATA_KEY: json.dumps(future)})
    with pytest.raises(CheckpointError, match="newer rnnlab"):
        load_checkpoint(tmp_path / "future.safetensors")


def test_migrations_run_in_order(tmp_path, monkeypatch):
    config, vocab, model = small_run()
    old = {"format_version": 0, "config": config.to_dict(), "vocab": vocab.to_dict(), "legacy": True}
    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={METADATA_KEY: json.dumps(old)})
    with pytest.raises(CheckpointError, match="cannot upgrade"):
        load_checkpoint(tmp_path / "old.safetensors")
    monkeypatch.setitem(__import__("rnnlab.training.checkpoint", fromlist=["MIGRATIONS"]).MIGRATIONS, 0,
                        lambda doc: {**doc, "format_version": 1, "metrics": {"migrated": doc["legacy"]}})
    assert load_checkpoint(tmp_path / "old.safetensors").metrics == {"migrated": True}


def test_folder_resolves_through_pointers_and_pruning_keeps_best(tmp_path):
    config, vocab, model = small_run()
    names = []
    for i, loss in enumerate([2.0, 1.0, 3.0, 4.0]):
        path = save_checkpoint(tmp_path / f"c{i}.safetensors", model, config, vocab, metrics={"val_loss": loss})
        names.append(path.name)
    update_pointer(tmp_path, "best", tmp_path / "c1.safetensors", 1.0)
    update_pointer(tmp_path, "last", tmp_path / "c3.safetensors", 4.0)
    kept = prune_checkpoints(tmp_path, names, keep_last=1)
    assert kept == ["c1.safetensors", "c3.safetensors"]
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == kept
    assert load_checkpoint(tmp_path).metrics["val_loss"] == 1.0
    assert load_checkpoint(tmp_path, prefer="last").metrics["val_loss"] == 4.0


def test_folder_without_pointer(tmp_path):
    with pytest.raises(CheckpointError, match="no best.json"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("section, key, value, message", [
    ("model", "cell", "foo", "cell must be one of"),
    ("train", "seq_length", 0, "seq_length must be > 0"),
    ("model", "dropout", 1.5, "dropout must be in"),
])
def test_an_invalid_saved_config_is_refused_in_one_line(tmp_path, section, key, value, message):
    config, vocab, model = small_run()
    document = {"format_version": FORMAT_VERSION, "config": config.to_dict(), "vocab": vocab.to_dict()}
    document["config"][section][key] = value
    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "c.safetensors"),
              metadata={METADATA_KEY: json.dumps(document)})
    with pytest.raises(CheckpointError, match=f"invalid config or vocabulary: {message}"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_checkpoints_get_the_usual_file_permissions(tmp_path):
    import os
    config, vocab, model = small_run()
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "c.safetensors", model, config, vocab, metrics={})
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def _edited(tmp_path, edit, tensors=None):
    config, vocab, model = small_run()
    document = {"format_version": FORMAT_VERSION, "config": config.to_dict(), "vocab": vocab.to_dict(),
                "trainer": {}, "metrics": {}}
    edit(document)
    weights = tensors or {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp_path / "e.safetensors"), metadata={METADATA_KEY: json.dumps(document)})
    return tmp_path / "e.safetensors"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(config=None), "invalid config or vocabulary"),
    (lambda d: d.update(config=[]), "invalid config or vocabulary"),
    (lambda d: d.update(vocab=None), "invalid config or vocabulary"),
    (lambda d: d["vocab"].update(chars=["ab", *d["vocab"]["chars"][1:]]), "invalid config or vocabulary"),
    (lambda d: d.update(trainer=[1]), "trainer must be a JSON object"),
    (lambda d: d.update(format_version="x"), "invalid format_version: 'x'"),
    (lambda d: d.update(format_version=1.5), "invalid format_version: 1.5"),
])
def test_a_hand_edited_header_fails_in_one_line(tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(_edited(tmp_path, edit))


def test_non_finite_weights_are_refused(tmp_path):
    _, _, model = small_run()
    weights = {f"model.{k}": v.contiguous().clone() for k, v in model.state_dict().items()}
    weights["model.head.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"non-finite \(NaN or inf\) weights: head.weight"):
        load_checkpoint(_edited(tmp_path, lambda d: None, weights))
