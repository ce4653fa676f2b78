"""Files and folders a run meets (issue 11): a used checkpoint folder, non-UTF-8 paths, a full disk,
kill -9 leftovers, a FIFO, a log removed under a running job, an output that cannot encode the text."""

import json
import os
import subprocess
import sys
import textwrap

from conftest import StopAfter, tiny_config
from safetensors import SafetensorError

from rnnlab.cli import main
from rnnlab.training.checkpoint import load_checkpoint, read_pointer
from rnnlab.training.loop import train

TINY = ["--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--seq-length", "16",
        "--eval-every", "5", "--sample-length", "0", "--no-progress"]


def one_error_line(capsys, code, message):
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("rnnlab: error:"), err
    assert message in err, err


def test_a_new_run_into_a_used_folder_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    folder = tmp_path / "ck"
    assert main(["--quiet", "train", *TINY, "--max-steps", "5", "--checkpoint-dir", str(folder)]) == 0
    best = read_pointer(folder, "best")
    code = main(["--quiet", "train", *TINY, "--max-steps", "5", "--learning-rate", "0.5",
                 "--checkpoint-dir", str(folder)])
    one_error_line(capsys, code, f"{folder} holds another run")
    assert read_pointer(folder, "best") == best  # the earlier run's best is untouched
    assert main(["--quiet", "train", "--resume", str(folder), "--max-steps", "10", "--no-progress"]) == 0
    assert load_checkpoint(folder, prefer="last").trainer["progress"]["step"] == 10
    capsys.readouterr()
    earlier = {p.name for p in folder.glob("lm_*.safetensors")}
    assert main(["--quiet", "train", *TINY, "--max-steps", "5", "--seed", "7", "--overwrite",
                 "--checkpoint-dir", str(folder)]) == 0
    assert load_checkpoint(folder, prefer="last").trainer["progress"]["step"] == 5  # a new run
    assert not earlier & {p.name for p in folder.glob("lm_*.safetensors")} - {read_pointer(folder, "last")["file"]}
    assert [json.loads(line)["event"] for line in open(folder / "log.jsonl")][0] == "start"


def test_non_utf8_paths_are_refused_up_front(tmp_path, capsys):
    text = tmp_path / os.fsdecode(b"t\xffext.txt")
    text.write_text("some text to learn from, again and again\n" * 200, encoding="utf-8")
    code = main(["train", str(text), *TINY, "--max-steps", "5", "--checkpoint-dir", str(tmp_path / "ck")])
    one_error_line(capsys, code, "is not a UTF-8 path")
    folder = tmp_path / os.fsdecode(b"c\xffk")
    code = main(["train", *TINY, "--max-steps", "5", "--checkpoint-dir", str(folder)])
    one_error_line(capsys, code, "--checkpoint-dir")
    assert not (tmp_path / "ck").exists() and not folder.exists()


def test_a_checkpoint_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x", encoding="utf-8")
    code = main(["train", *TINY, "--max-steps", "5", "--checkpoint-dir", str(tmp_path / "file")])
    one_error_line(capsys, code, "is not a folder")


def test_a_full_disk_is_one_line_and_the_last_checkpoint_stays_good(tmp_path, capsys, monkeypatch):
    import rnnlab.training.checkpoint as checkpoint

    real, calls = checkpoint.save_file, []

    def filling_up(tensors, filename, metadata):
        calls.append(filename)
        if len(calls) > 1:
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", filling_up)
    folder = tmp_path / "ck"
    code = main(["--quiet", "train", *TINY, "--max-steps", "10", "--checkpoint-dir", str(folder)])
    one_error_line(capsys, code, "No space left on device")
    assert load_checkpoint(folder, prefer="last").trainer["progress"]["step"] == 5
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


KILLED_WRITE = textwrap.dedent("""
    import os, signal, sys
    import rnnlab.training.checkpoint as checkpoint
    from rnnlab.cli import main
    real, calls = checkpoint.save_file, []
    def killed(tensors, filename, metadata):
        calls.append(filename)
        if len(calls) > 1:  # the second checkpoint: half written, then kill -9
            open(filename, "wb").write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
        real(tensors, filename, metadata=metadata)
    checkpoint.save_file = killed
    sys.exit(main(sys.argv[1:]))
""")


def test_after_a_kill_during_a_checkpoint_write_the_next_run_leaves_no_temporary_file(tmp_path):
    folder = tmp_path / "ck"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITE, "--quiet", "train", *TINY, "--max-steps", "10",
                             "--checkpoint-dir", str(folder)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9
    assert [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # what kill -9 leaves
    resumed = subprocess.run([sys.executable, "-m", "rnnlab", "--quiet", "train", "--resume", str(folder),
                              "--no-progress"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(folder, prefer="last").trainer["progress"]["step"] == 10


KILLED_PREPARE = textwrap.dedent("""
    import os, signal, sys
    import rnnlab.data.corpus as corpus
    from rnnlab.cli import main
    def killed(parts, vocab, destination, *rest):
        open(destination, "wb").write(b"some tokens")
        os.kill(os.getpid(), signal.SIGKILL)
    corpus._encode_parts = killed
    sys.exit(main(sys.argv[1:]))
""")


def test_a_preparation_killed_halfway_is_cleaned_up_by_the_next_one(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the text of a corpus, line after line\n" * 300, encoding="utf-8")
    cache = tmp_path / "cache"
    args = ["--quiet", "prepare", str(text), "--cache-dir", str(cache)]
    killed = subprocess.run([sys.executable, "-c", KILLED_PREPARE, *args], capture_output=True, timeout=300)
    assert killed.returncode == -9 and list(cache.glob(".preparing-*"))
    done = subprocess.run([sys.executable, "-m", "rnnlab", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not list(cache.glob(".preparing-*"))


def test_a_fifo_is_refused_not_waited_on(tmp_path, capsys):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    code = main(["sample", str(fifo), "--length", "5"])
    one_error_line(capsys, code, "not a checkpoint file")
    code = main(["eval", str(fifo), str(fifo)])
    one_error_line(capsys, code, "not a checkpoint file")


class RemoveTheLogAt(StopAfter):
    """Never stops the run; at poll `n` it deletes the run's log, as a user cleaning up might."""

    def __init__(self, folder, n):
        super().__init__(10 ** 9)
        self.folder, self.at = folder, n

    @property
    def requested(self):
        self.polls += 1
        if self.polls == self.at:
            (self.folder / "log.jsonl").unlink()
        return False

    @requested.setter
    def requested(self, value):
        pass


def test_a_log_removed_under_a_running_job_starts_again_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "ck"
    config = tiny_config(folder, max_steps=12, eval_every=4, log_every=1)
    train(config, stop=RemoveTheLogAt(folder, 6), progress_bar=False)
    steps = [json.loads(line).get("step") for line in open(folder / "log.jsonl")]
    assert steps and min(s for s in steps if s is not None) >= 5 and max(steps) == 12
    assert "was removed while the run went on" in caplog.text


def test_an_output_that_cannot_encode_the_text_is_one_line(tmp_path):
    text = tmp_path / "accents.txt"
    text.write_text("été, à côté du théâtre où l'on crée\n" * 200, encoding="utf-8")
    folder = tmp_path / "ck"
    assert main(["--quiet", "train", str(text), *TINY, "--max-steps", "5", "--checkpoint-dir", str(folder)]) == 0
    done = subprocess.run([sys.executable, "-m", "rnnlab", "sample", str(folder), "--length", "300",
                           "--prime-text", "été"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "PYTHONIOENCODING=utf-8" in done.stderr.strip().splitlines()[-1]
