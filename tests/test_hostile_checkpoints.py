"""Crafted checkpoints, made here from a real tiny run: each gives exit 1 and one error line on --resume,
and nothing outside the checkpoint's folder is touched. The cases whose unchecked tensors would reach
the fused LSTM/Adam kernels run in a subprocess, so a native crash fails the test instead of killing
the test runner."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import rewrite_checkpoint, tiny_config

from rnnlab.cli import main
from rnnlab.training.checkpoint import load_checkpoint, read_pointer
from rnnlab.training.loop import train


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished tiny LSTM run with a carried state and Adam moments."""
    folder = tmp_path_factory.mktemp("hostile-base")
    train(tiny_config(folder, max_steps=20, eval_every=10), progress_bar=False)
    return folder


@pytest.fixture
def crafted(tmp_path, base_run):
    """crafted(edit, checksum=True) -> a copy of the run's folder whose last checkpoint `edit(document,
    tensors)` changed; the checksum is recomputed unless told not to (to reach the later checks)."""
    def make(edit, checksum=True):
        folder = tmp_path / "run"
        shutil.copytree(base_run, folder)
        rewrite_checkpoint(folder / read_pointer(folder, "last")["file"], edit, checksum)
        return folder
    return make


@pytest.fixture
def sentinel(tmp_path):
    """A file outside the checkpoint folder that no resume may delete or change."""
    path = tmp_path / "sentinel.safetensors"
    path.write_text("keep me", encoding="utf-8")
    return path


def resume_in_process(capsys, folder):
    code = main(["--quiet", "train", "--resume", str(folder), "--max-steps", "25", "--no-progress"])
    return code, capsys.readouterr().err


def resume_in_subprocess(folder):
    done = subprocess.run([sys.executable, "-m", "rnnlab", "--quiet", "train", "--resume", str(folder),
                           "--max-steps", "25", "--no-progress"], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr


def assert_one_error_line(code, err, message):
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("rnnlab: error:"), err
    assert message in lines[0], lines[0]


def progress(edit):
    return lambda doc, tensors: edit(doc["trainer"]["progress"])


# --- HIGH 1: saved file names that leave the folder ------------------------------------------

@pytest.mark.parametrize("name", ["../sentinel.safetensors", "SENTINEL", "sub/../../sentinel.safetensors"])
def test_saved_names_outside_the_folder_are_refused_and_nothing_is_deleted(capsys, crafted, sentinel, name):
    name = str(sentinel) if name == "SENTINEL" else name
    folder = crafted(progress(lambda p: p["saved"].insert(0, name)))
    code, err = resume_in_process(capsys, folder)
    assert_one_error_line(code, err, "not a checkpoint file name inside the folder")
    assert sentinel.read_text(encoding="utf-8") == "keep me"


def test_a_pointer_naming_a_file_outside_the_folder_is_refused(capsys, crafted, sentinel):
    folder = crafted(lambda doc, tensors: None)
    (folder / "last.json").write_text(json.dumps({"file": "../sentinel.safetensors", "val_loss": 1.0}),
                                      encoding="utf-8")
    code, err = resume_in_process(capsys, folder)
    assert_one_error_line(code, err, "not a checkpoint file name inside the folder")
    assert sentinel.read_text(encoding="utf-8") == "keep me"


# --- HIGH 2: tensors that would reach native kernels with the wrong shape ----------------------

def _set(name, value):
    def edit(doc, tensors):
        tensors[name] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("carry.0", torch.zeros(2, 3, 5)), "carry.0 is float32 (2, 3, 5); this run needs float32 (2, 8, 32)"),
    (_set("carry.1", torch.zeros(2, 8, 32, dtype=torch.float64)), "carry.1 is float64"),
    (_set("optimizer.0.exp_avg", torch.zeros(7)), "optimizer.0.exp_avg is float32 (7,)"),
    (_set("optimizer.1.exp_avg_sq", torch.zeros(3, 3, dtype=torch.float16)), "optimizer.1.exp_avg_sq is float16"),
    (_set("optimizer.0.step", torch.zeros(4)), "optimizer.0.step is float32 (4,)"),
    (_set("rng.cpu.0", torch.zeros(10, dtype=torch.uint8)), "rng.cpu.0 is uint8 (10,)"),
    (_set("carry.0", torch.full((2, 8, 32), float("nan"))), "carry.0 holds NaN or inf"),
], ids=["carry-shape", "carry-dtype", "adam-moment-shape", "adam-moment-dtype", "adam-step", "rng", "carry-nan"])
def test_wrong_shapes_and_dtypes_are_refused_before_native_code(crafted, edit, message):
    code, err = resume_in_subprocess(crafted(edit))
    assert_one_error_line(code, err, message)


def _drop(prefix):
    def edit(doc, tensors):
        for name in [k for k in tensors if k.startswith(prefix)]:
            del tensors[name]
    return edit


def _weights_as_integers(doc, tensors):
    name = next(k for k in tensors if k.startswith("model.") and k.endswith("weight"))
    tensors[name] = tensors[name].to(torch.int32)


@pytest.mark.parametrize("edit, message", [
    (_drop("carry."), "the carried state has 0 tensors; this model carries 2"),
    (_set("evil.0", torch.zeros(1)), "unknown tensor(s) evil.0"),
    (_set("raw.0", torch.zeros(1)), "raw.* weights without NT-ASGD averaging"),
    (_set("optimizer.999.exp_avg", torch.zeros(1)), "optimizer state names parameter '999'"),
    (_set("rng.cuda.0", torch.zeros(3, 3)), "rng.cuda.0 must be a 1-D uint8 tensor"),
    (_drop("rng."), "no optimizer or RNG state"),
    (_weights_as_integers, "weights do not fit the saved config"),
    (lambda doc, t: doc["trainer"].update(has_carry="yes"), "has_carry must be true or false"),
    (lambda doc, t: doc["trainer"]["batcher"].update(batch_index=10 ** 12), "batch_index must be an integer in"),
    (lambda doc, t: doc["trainer"]["batcher"].update(epoch=-1), "epoch must be an integer in"),
    (lambda doc, t: doc["trainer"].update(grad_scaler={"scale": 1e9}), "trainer.grad_scaler must hold"),
    (lambda doc, t: doc["trainer"].update(averaging={"count": -3}), "trainer.averaging.count must be an integer"),
    (lambda doc, t: doc["optimizer"]["param_groups"][0].update(lr=float("nan")), "param_groups.0.lr must be"),
    (lambda doc, t: doc["optimizer"]["param_groups"][0].update(params=[0, 1]), "does not list this model's"),
    (lambda doc, t: doc["optimizer"]["param_groups"][0].update(eps=1.0), "optimizer setting(s) eps differ"),
    (progress(lambda p: p.update(step=-1)), "progress.step must be an integer"),
    (progress(lambda p: p.update(step=1e300)), "progress.step must be an integer"),
    (progress(lambda p: p.update(best_val_loss="low")), "progress.best_val_loss must be a finite number"),
    (progress(lambda p: p.update(saved="lm_a.safetensors")), "progress.saved must be a list"),
    (progress(lambda p: p.update(surprise=1)), "progress has unknown field(s): surprise"),
    (lambda doc, t: doc["trainer"].pop("progress"), "holds no training state to resume"),
], ids=["no-carry", "unknown-tensor", "raw-without-averaging", "optimizer-param-id", "cuda-rng", "no-rng",
        "int-weights", "has-carry", "batch-index", "epoch", "grad-scaler", "averaging-count", "lr-nan",
        "param-groups", "optimizer-setting", "step-negative", "step-huge", "best-loss", "saved-type",
        "progress-unknown", "no-progress"])
def test_tampered_training_state_is_one_error_line(capsys, crafted, sentinel, edit, message):
    code, err = resume_in_process(capsys, crafted(edit))
    assert_one_error_line(code, err, message)
    assert sentinel.read_text(encoding="utf-8") == "keep me"


# --- bit flips: the content checksum -----------------------------------------------------------

def _flip_a_bit(name_prefix):
    def edit(doc, tensors):
        name = next(k for k in sorted(tensors) if k.startswith(name_prefix))
        flat = tensors[name].contiguous().view(-1).view(torch.uint8)
        flat[len(flat) // 2] ^= 0x04  # a small change of one weight: still finite, only the checksum sees it
    return edit


@pytest.mark.parametrize("prefix, what", [("model.", "weights"), ("optimizer.", "training state")])
def test_a_flipped_bit_is_caught_by_the_checksum(capsys, crafted, prefix, what):
    folder = crafted(_flip_a_bit(prefix), checksum=False)
    code, err = resume_in_process(capsys, folder)
    assert_one_error_line(code, err, f"its {what} do not match the checksum")


def test_a_flipped_bit_in_the_weights_stops_sampling_too(capsys, crafted):
    folder = crafted(_flip_a_bit("model."), checksum=False)
    code = main(["sample", str(folder / read_pointer(folder, "last")["file"]), "--length", "5"])
    assert_one_error_line(code, capsys.readouterr().err, "do not match the checksum")


def test_a_missing_checksum_is_refused(capsys, crafted):
    folder = crafted(lambda doc, tensors: doc.pop("checksum"), checksum=False)
    code, err = resume_in_process(capsys, folder)
    assert_one_error_line(code, err, "has no valid checksum")


# --- paths stored in a checkpoint are not written to ------------------------------------------

def test_a_stored_cache_dir_is_not_written_to_on_resume(capsys, crafted, tmp_path):
    planted = tmp_path / "planted-cache"
    folder = crafted(lambda doc, tensors: doc["config"]["data"].update(cache_dir=str(planted)))
    code, err = resume_in_process(capsys, folder)
    assert code == 0, err
    assert not planted.exists()
    assert load_checkpoint(folder, prefer="last").trainer["progress"]["step"] == 25  # the run went on
