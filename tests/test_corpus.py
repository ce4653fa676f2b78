import os

import numpy as np
import pytest

from rnnlab.data.corpus import prepare_corpus, read_text_chunks, resolve_text_path
from rnnlab.errors import CorpusError


def test_prepare_writes_memmap_vocab_and_meta(text_file, tmp_path):
    path = text_file("hello world\n" * 10)
    corpus = prepare_corpus(path, cache_dir=tmp_path / "cache")
    assert isinstance(corpus.tokens, np.memmap)
    assert corpus.tokens.dtype == np.uint8
    assert corpus.vocab.decode(corpus.tokens) == "hello world\n" * 10
    assert corpus.meta["tokens"] == 120 and corpus.meta["vocab_size"] == len(set("hello world\n"))


def test_large_vocabulary_uses_uint16(text_file, tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 2
    corpus = prepare_corpus(text_file(text), cache_dir=tmp_path / "cache")
    assert corpus.tokens.dtype == np.uint16
    assert corpus.vocab.decode(corpus.tokens) == text


def test_chunked_preparation_splits_multibyte_characters_correctly(text_file, tmp_path):
    text = "é—🎭a" * 1000
    path = text_file(text)
    corpus = prepare_corpus(path, cache_dir=tmp_path / "cache", read_bytes=7)  # chunks cut inside characters
    assert corpus.vocab.decode(corpus.tokens) == text


def test_prepared_once_then_reused_and_redone_when_the_file_changes(text_file, tmp_path):
    path = text_file("abcabc")
    cache = tmp_path / "cache"
    first = prepare_corpus(path, cache_dir=cache)
    tokens_file = first.tokens.filename
    mtime = os.stat(tokens_file).st_mtime_ns
    again = prepare_corpus(path, cache_dir=cache)
    assert again.tokens.filename == tokens_file and os.stat(tokens_file).st_mtime_ns == mtime
    path.write_text("abcabd", encoding="utf-8")
    changed = prepare_corpus(path, cache_dir=cache)
    assert changed.tokens.filename != tokens_file
    assert changed.vocab.decode(changed.tokens) == "abcabd"
    assert not [p for p in cache.iterdir() if p.name.startswith(".preparing")]


def test_folder_with_input_txt(text_file, tmp_path):
    path = text_file("some text")
    assert resolve_text_path(path.parent) == path
    corpus = prepare_corpus(path.parent, cache_dir=tmp_path / "cache")
    assert corpus.meta["tokens"] == 9


def test_default_is_the_embedded_corpus():
    corpus = prepare_corpus(None)
    assert corpus.meta["tokens"] == 1_115_394 and corpus.meta["vocab_size"] == 65


def test_contiguous_splits_with_default_fractions(text_file, tmp_path):
    corpus = prepare_corpus(text_file("".join(chr(97 + i % 26) for i in range(1000))), cache_dir=tmp_path / "c")
    splits = corpus.splits(0.05, 0.05)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (900, 50, 50)
    joined = np.concatenate([splits.train, splits.val, splits.test])
    assert np.array_equal(joined, corpus.tokens)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"abc\x00def", "looks binary: NUL byte at byte offset 3"),
    (b"good text \xff more", "not valid UTF-8: undecodable byte at byte offset 10"),
    (b"caf\xc3", "not valid UTF-8: undecodable byte at byte offset 3"),  # truncated multi-byte sequence
])
def test_unusable_files_are_explained(text_file, tmp_path, content, message):
    with pytest.raises(CorpusError, match=message):
        prepare_corpus(text_file(content), cache_dir=tmp_path / "cache")


def test_bad_byte_offset_is_exact_across_chunks(text_file):
    path = text_file(b"a" * 20 + "é".encode() * 5 + b"\xfe")
    with pytest.raises(CorpusError, match="byte offset 30"):
        list(read_text_chunks(path, read_bytes=3))


def test_missing_file_and_folder_without_input(tmp_path):
    with pytest.raises(CorpusError, match="file not found"):
        prepare_corpus(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="holds no input.txt"):
        prepare_corpus(tmp_path)


def test_a_damaged_cache_entry_is_prepared_again(text_file, tmp_path):
    path = text_file("abcabc" * 10)
    corpus = prepare_corpus(path, cache_dir=tmp_path / "cache")
    tokens_file = corpus.tokens.filename
    del corpus
    with open(tokens_file, "r+b") as handle:
        handle.truncate(10)
    again = prepare_corpus(path, cache_dir=tmp_path / "cache")
    assert again.vocab.decode(again.tokens) == "abcabc" * 10


def test_prepare_does_not_import_torch(text_file, tmp_path):
    import subprocess
    import sys
    code = ("import sys; from rnnlab.cli import main; main(['--quiet', 'prepare', sys.argv[1], '--cache-dir', "
            "sys.argv[2]]); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, str(text_file("hello " * 50)), str(tmp_path / "c")], check=True,
                   capture_output=True)
