"""Word and BPE models end to end: prepare, train on separate files, eval in bits per character, sample."""

import json

import pytest

from rnnlab.training.checkpoint import load_checkpoint
from tests.e2e.test_cli import TINY, run


def test_prepare_reports_words_and_the_files_own_split(capsys, ptb_folder, tmp_path):
    code, out, err = run(capsys, "prepare", ptb_folder, "--tokenizer", "word", "--cache-dir", tmp_path)
    assert code == 0, err
    assert "words (uint16 ids)" in out and "(the files' own split)" in out and "tokens:" in out


@pytest.mark.parametrize("tokenizer, extra", [("word", ["--min-count", "2"]), ("bpe", ["--vocab-size", "400"])])
def test_train_eval_sample_with_word_and_bpe_tokenizers(capsys, ptb_folder, tmp_path, tokenizer, extra):
    folder = tmp_path / "ck"
    code, out, err = run(capsys, "train", ptb_folder, "--tokenizer", tokenizer, *extra, *TINY, "--max-steps", 12,
                         "--checkpoint-dir", folder, "--cache-dir", tmp_path / "cache", "--sample-length", 10)
    assert code == 0, err
    assert "bits/char" in err and "perplexity" in err
    ckpt = load_checkpoint(folder)
    assert ckpt.vocab.kind == tokenizer and ckpt.metrics["tokenizer"] == tokenizer
    assert ckpt.metrics["val_bits_per_char"] < ckpt.metrics["val_loss"] / 0.693  # tokens span several characters

    test_file = ptb_folder / "ptb.test.txt"
    code, out, err = run(capsys, "eval", folder, test_file, "--json")
    assert code == 0, err
    report = json.loads(out)
    text = test_file.read_text(encoding="utf-8")
    assert report["tokenizer"] == tokenizer and report["tokens"] < report["characters"] <= len(text)
    assert abs(report["bits_per_char"] * report["characters"] - report["bits_per_token"] * report["tokens"]) < 1e-3
    code, out, _ = run(capsys, "eval", folder, test_file)
    assert "bits per character" in out and "perplexity per token" in out and "bits per token" in out

    code, out, err = run(capsys, "sample", folder, "--length", 15, "--prime-text", "the king", "--seed", 3)
    assert code == 0 and out.startswith("the king"), err
    again = run(capsys, "sample", folder, "--length", 15, "--prime-text", "the king", "--seed", 3)[1]
    assert again == out
    if tokenizer == "word":
        assert out.startswith("the king ") or out.startswith("the king\n")  # words are spaced
        code, _, err = run(capsys, "sample", folder, "--prime-text", "zyzzyva the", "--length", 5)
        assert code == 1 and "words the model's vocabulary lacks: 'zyzzyva'" in err
        code, out, err = run(capsys, "sample", folder, "--prime-text", "zyzzyva the", "--length", 5,
                             "--unknown", "skip")
        assert code == 0 and out.startswith("the")


def test_fine_tuning_a_word_model_reads_new_text_with_its_vocabulary(capsys, ptb_folder, tmp_path, text_file):
    folder = tmp_path / "base"
    assert run(capsys, "train", ptb_folder, "--tokenizer", "word", *TINY, "--max-steps", 5, "--checkpoint-dir",
               folder, "--cache-dir", tmp_path / "cache", "--sample-length", 0)[0] == 0
    new_text = text_file(" the brand new words of a the king \n" * 400)
    code, _, err = run(capsys, "train", new_text, "--tokenizer", "word", "--init-from", folder, *TINY,
                       "--max-steps", 3, "--checkpoint-dir", tmp_path / "tuned", "--sample-length", 0)
    assert code == 0, err
    assert load_checkpoint(tmp_path / "tuned").vocab.tokens == load_checkpoint(folder).vocab.tokens
    code, _, err = run(capsys, "train", new_text, "--init-from", folder, *TINY, "--max-steps", 3,
                       "--checkpoint-dir", tmp_path / "t2", "--sample-length", 0)  # the checkpoint's tokenizer
    assert code == 0, err
    assert load_checkpoint(tmp_path / "t2").vocab.tokens == load_checkpoint(folder).vocab.tokens
    code, _, err = run(capsys, "train", new_text, "--init-from", folder, *TINY, "--max-steps", 3,
                       "--checkpoint-dir", tmp_path / "t3", "--tokenizer", "char")
    assert code == 1 and "train it with --tokenizer word" in err
    code, _, err = run(capsys, "train", new_text, "--init-from", folder, *TINY, "--max-steps", 3,
                       "--checkpoint-dir", tmp_path / "t4", "--vocab-size", 50)
    assert code == 1 and "keeps the checkpoint's vocabulary; drop --vocab-size" in err


@pytest.mark.parametrize("flags, message", [
    (["--vocab-size", "100"], "apply to the word and bpe tokenizers"),
    (["--tokenizer", "bpe", "--vocab-size", "100"], "holds the 256 bytes and more"),
    (["--tokenizer", "word", "--min-count", "0"], "min_count must be > 0"),
    (["--test-file", "x.txt"], "--test-file needs --val-file"),
])
def test_bad_tokenizer_settings(capsys, tmp_path, flags, message):
    code, _, err = run(capsys, "train", *TINY, *flags, "--checkpoint-dir", tmp_path, "--max-steps", 1)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_a_run_with_a_separate_val_file_resumes_with_the_same_flags_given_again(capsys, ptb_folder, tmp_path,
                                                                               monkeypatch):
    monkeypatch.chdir(ptb_folder)
    flags = ["ptb.train.txt", "--val-file", "ptb.valid.txt", "--tokenizer", "word", *TINY, "--sample-length", 0,
             "--cache-dir", tmp_path / "cache"]
    code, _, err = run(capsys, "train", *flags, "--max-steps", 3, "--checkpoint-dir", tmp_path / "ck")
    assert code == 0, err
    code, _, err = run(capsys, "train", *flags, "--max-steps", 5, "--resume", tmp_path / "ck")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "ck", prefer="last").trainer["progress"]["step"] == 5


def test_init_from_with_a_broken_preset_is_one_line(capsys, tmp_path, trained_checkpoint):
    preset = tmp_path / "bad.toml"
    preset.write_text("model = 3\n", encoding="utf-8")
    code, _, err = run(capsys, "train", "--init-from", trained_checkpoint, "--config", preset)
    assert code == 1 and "[model] must be a table of settings" in err and "Traceback" not in err
