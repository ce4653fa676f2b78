"""Absurd sizes are refused with the figure before anything is allocated (issue 11), and BPE learns a
whitespace-free line in pieces of bounded length."""

import random
import shutil

import pytest
from conftest import rewrite_checkpoint

from rnnlab.cli import main
from rnnlab.data.vocab import BPE_PIECE, BpeVocab
from rnnlab.training.checkpoint import read_pointer


def one_error_line(capsys, code, message):
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("rnnlab: error:"), err
    assert message in err, err


@pytest.mark.parametrize("flags", [["--hidden-size", "10000000"], ["--embedding-size", "100000000000"],
                                   ["--head", "mos", "--mos-experts", "100000000000"]],
                         ids=["hidden", "embedding", "mos-experts"])
def test_a_model_too_big_for_the_machine_is_refused_with_its_size(tmp_path, capsys, flags):
    code = main(["--quiet", "train", *flags, "--max-steps", "1", "--checkpoint-dir", str(tmp_path / "ck")])
    one_error_line(capsys, code, "of memory and this machine has")
    assert not (tmp_path / "ck").exists()


def test_a_hand_edited_size_in_a_checkpoint_is_one_line_not_an_allocation(tmp_path, capsys, trained_checkpoint):
    folder = tmp_path / "ck"
    shutil.copytree(trained_checkpoint, folder)
    file = folder / read_pointer(folder, "best")["file"]
    rewrite_checkpoint(file, lambda document, tensors: document["config"]["model"].update(hidden_size=10_000_000))
    code = main(["sample", str(file), "--length", "5"])
    one_error_line(capsys, code, "weights do not fit the saved config")


@pytest.mark.parametrize("flags", [["--num-samples", "10000000"], ["--num-samples", "100000000"]])
def test_too_many_samples_at_once_are_refused_with_the_figure(capsys, trained_checkpoint, flags):
    code = main(["sample", str(trained_checkpoint), "--length", "5", *flags])
    one_error_line(capsys, code, "of memory and this machine has")


def test_a_bpe_vocabulary_beyond_the_library_is_refused(tmp_path, capsys):
    code = main(["prepare", "--tokenizer", "bpe", "--vocab-size", "4294967296", "--cache-dir", str(tmp_path)])
    one_error_line(capsys, code, "the limit is 4,194,304")


def test_bpe_learns_a_whitespace_free_line_in_pieces_of_bounded_length():
    random.seed(0)
    line = "".join(random.choice("abcdefghij") for _ in range(1_000_000))  # 1 MB, no whitespace
    vocab = BpeVocab.train([line, "and some ordinary text, with words in it\n" * 50], vocab_size=400)
    pieces = vocab.tokenizer.pre_tokenizer.pre_tokenize_str(line[:10_000])
    assert max(len(piece) for piece, _ in pieces) == BPE_PIECE
    assert max(len(token) for token in vocab.tokens) <= BPE_PIECE
    assert vocab.decode(vocab.encode(line[:5000] + " and so on\n")) == line[:5000] + " and so on\n"
