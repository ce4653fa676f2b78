import os

import numpy as np
import pytest

from rnnlab.data.corpus import prepare_corpus
from rnnlab.data.text import read_text_chunks, resolve_text_path
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


# --- word and BPE corpora, separate train/valid/test files ----------------------------------------

from rnnlab.data.text import read_line_chunks, resolve_corpus_files  # noqa: E402
from rnnlab.data.vocab import UNK, TokenizerSpec  # noqa: E402


def test_word_corpus_has_uint16_ids_and_character_lengths(ptb_folder, tmp_path):
    corpus = prepare_corpus(ptb_folder / "ptb.train.txt", cache_dir=tmp_path, spec=TokenizerSpec("word"))
    text = (ptb_folder / "ptb.train.txt").read_text(encoding="utf-8")
    assert corpus.vocab.kind == "word" and len(corpus.vocab) > 256 and corpus.tokens.dtype == np.uint16
    assert corpus.meta["tokens"] == len(text.split()) + text.count("\n")  # one <eos> per line
    assert int(corpus.char_lengths.sum()) == corpus.meta["characters"] == len(text)
    first_lines = "".join(text.splitlines(keepends=True)[:3])
    n = len(first_lines.split()) + 3
    assert corpus.vocab.decode(corpus.tokens[:n]) == "\n".join(" ".join(line.split()) for line in
                                                              first_lines.splitlines()) + "\n"


def test_word_cap_gives_uint8_ids_and_unk(ptb_folder, tmp_path):
    corpus = prepare_corpus(ptb_folder / "ptb.train.txt", cache_dir=tmp_path, spec=TokenizerSpec("word", 200, 1))
    assert len(corpus.vocab) == 200 and corpus.tokens.dtype == np.uint8
    assert (np.asarray(corpus.tokens) == corpus.vocab.tokens.index(UNK)).any()


def test_separate_files_keep_their_split_and_vocabulary_comes_from_train(ptb_folder, tmp_path):
    files = resolve_corpus_files(ptb_folder)
    assert (files.train.name, files.val.name, files.test.name) == ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
    corpus = prepare_corpus(ptb_folder, cache_dir=tmp_path, spec=TokenizerSpec("word"))
    splits = corpus.splits(0.3, 0.3)  # the fractions do not apply to separate files
    for name, split in (("train", splits.train), ("valid", splits.val), ("test", splits.test)):
        text = (ptb_folder / f"ptb.{name}.txt").read_text(encoding="utf-8")
        assert len(split) == len(text.split()) + text.count("\n")
        assert int(splits.lengths(name if name != "valid" else "val").sum()) == len(text)
    train_words = set((ptb_folder / "ptb.train.txt").read_text(encoding="utf-8").split())
    assert set(corpus.vocab.tokens) - {"<eos>", "<unk>"} <= train_words
    explicit = prepare_corpus(ptb_folder / "ptb.train.txt", cache_dir=tmp_path, spec=TokenizerSpec("word"),
                              val_path=ptb_folder / "ptb.valid.txt", test_path=ptb_folder / "ptb.test.txt")
    assert explicit.meta["split_tokens"] == corpus.meta["split_tokens"]


def test_char_vocabulary_of_separate_files_covers_all_of_them(tmp_path):
    for name, text in (("train", "abc\n"), ("valid", "abz\n"), ("test", "aby\n")):
        (tmp_path / f"x.{name}.txt").write_text(text * 10, encoding="utf-8")
    corpus = prepare_corpus(tmp_path, cache_dir=tmp_path / "cache")
    assert {"y", "z"} <= set(corpus.vocab.chars)
    assert corpus.meta["split_tokens"] == [40, 40, 40]


def test_tokenizer_settings_are_part_of_the_cache_key(ptb_folder, tmp_path):
    path = ptb_folder / "ptb.valid.txt"
    folders = {prepare_corpus(path, cache_dir=tmp_path, spec=spec).tokens.filename
               for spec in (TokenizerSpec(), TokenizerSpec("word"), TokenizerSpec("word", 100, 1),
                            TokenizerSpec("bpe", 300, 2))}
    assert len(folders) == 4


def test_line_chunks_end_at_line_breaks_and_encode_like_the_whole(ptb_folder, tmp_path):
    path = ptb_folder / "ptb.valid.txt"
    chunks = list(read_line_chunks(path, read_bytes=100))
    assert "".join(chunks) == path.read_text(encoding="utf-8")
    assert all(chunk.endswith("\n") for chunk in chunks[:-1])
    whole = prepare_corpus(path, cache_dir=tmp_path / "a", spec=TokenizerSpec("bpe", 300, 2))
    small = prepare_corpus(path, cache_dir=tmp_path / "b", spec=TokenizerSpec("bpe", 300, 2), read_bytes=100)
    assert np.array_equal(whole.tokens, small.tokens)


def test_bpe_corpus_decodes_back_to_the_text(ptb_folder, tmp_path):
    path = ptb_folder / "ptb.valid.txt"
    corpus = prepare_corpus(path, cache_dir=tmp_path, spec=TokenizerSpec("bpe", 500, 2))
    text = path.read_text(encoding="utf-8")
    assert corpus.vocab.decode(corpus.tokens) == text and len(corpus.tokens) < len(text) / 2
    assert int(corpus.char_lengths.sum()) == len(text)


def test_incomplete_split_folders_are_refused(tmp_path):
    (tmp_path / "ptb.train.txt").write_text("a b\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="no valid file"):
        prepare_corpus(tmp_path)
    with pytest.raises(CorpusError, match="needs a separate validation file"):
        prepare_corpus(tmp_path / "ptb.train.txt", test_path=tmp_path / "ptb.train.txt")
    (tmp_path / "other").mkdir()
    with pytest.raises(CorpusError, match="no input.txt and no train file"):
        prepare_corpus(tmp_path / "other")


def test_single_word_file_learns_its_vocabulary_from_the_training_part_only(tmp_path):
    lines = [f"common words here line{i}" for i in range(90)] + ["valonly words"] * 5 + ["testonly words"] * 5
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for spec in (TokenizerSpec("word"), TokenizerSpec("bpe", 300, 1)):
        corpus = prepare_corpus(path, cache_dir=tmp_path / "cache", spec=spec, fractions=(0.05, 0.05))
        splits = corpus.splits(0.05, 0.05)
        decoded = [corpus.vocab.decode(np.asarray(s)) for s in (splits.train, splits.val, splits.test)]
        if spec.kind == "bpe":  # byte-level BPE decodes exactly; the cut falls at a line break
            assert "".join(decoded) == path.read_text(encoding="utf-8")
            assert decoded[0].endswith("\n") and decoded[1].endswith("\n")
            assert "valonly" not in corpus.vocab.tokens and "Ġvalonly" not in corpus.vocab.tokens
        else:
            assert "valonly" not in corpus.vocab.tokens and "testonly" not in corpus.vocab.tokens
            assert "line0" in corpus.vocab.tokens and "<unk>" in decoded[1] and "<unk>" in decoded[2]
        assert 0.85 < len(decoded[0]) / len(path.read_text(encoding="utf-8")) < 0.95
        assert corpus.meta["split_fractions"] == [0.05, 0.05]
        with pytest.raises(CorpusError, match="prepared with val/test fractions"):
            corpus.splits(0.1, 0.05)


def test_the_fractions_are_part_of_a_single_word_files_cache_key(ptb_folder, tmp_path):
    path = ptb_folder / "ptb.valid.txt"
    a = prepare_corpus(path, cache_dir=tmp_path, spec=TokenizerSpec("word"), fractions=(0.05, 0.05))
    b = prepare_corpus(path, cache_dir=tmp_path, spec=TokenizerSpec("word"), fractions=(0.1, 0.1))
    assert a.tokens.filename != b.tokens.filename
    assert len(b.splits(0.1, 0.1).val) > len(a.splits(0.05, 0.05).val)
    char_a = prepare_corpus(path, cache_dir=tmp_path, fractions=(0.05, 0.05))
    char_b = prepare_corpus(path, cache_dir=tmp_path, fractions=(0.1, 0.1))
    assert char_a.tokens.filename == char_b.tokens.filename  # a character corpus is cut when used


def test_cut_points_never_split_a_character_without_line_breaks(tmp_path):
    path = tmp_path / "oneline.txt"
    path.write_text("é" * 5000, encoding="utf-8")  # no line break, no space: cut at a character boundary
    corpus = prepare_corpus(path, cache_dir=tmp_path / "c", spec=TokenizerSpec("bpe", 300, 1))
    splits = corpus.splits(0.05, 0.05)
    assert all(len(s) for s in (splits.train, splits.val, splits.test))
    assert corpus.vocab.decode(np.asarray(corpus.tokens)) == "é" * 5000


def test_prepared_files_are_readable_by_others_as_the_umask_allows(text_file, tmp_path):
    old = os.umask(0o022)
    try:
        corpus = prepare_corpus(text_file("abc abc\n" * 20), cache_dir=tmp_path / "cache")
    finally:
        os.umask(old)
    folder = os.path.dirname(corpus.tokens.filename)
    assert os.stat(folder).st_mode & 0o777 == 0o755


def test_a_read_only_data_folder_is_left_alone_even_by_root(tmp_path, monkeypatch):
    from rnnlab.data.corpus import default_cache_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "t.txt").write_text("abc", encoding="utf-8")
    assert default_cache_root(folder / "t.txt") == folder / ".rnnlab_cache"
    folder.chmod(0o555)
    try:
        assert default_cache_root(folder / "t.txt") == tmp_path / "xdg" / "rnnlab"
    finally:
        folder.chmod(0o755)
    (folder / ".rnnlab_cache").mkdir(mode=0o555)  # somebody's cache we may not write in
    try:
        assert default_cache_root(folder / "t.txt") == tmp_path / "xdg" / "rnnlab"
    finally:
        (folder / ".rnnlab_cache").chmod(0o755)
    assert default_cache_root(folder / "t.txt") == folder / ".rnnlab_cache"


def test_a_single_line_word_corpus_still_gets_all_three_parts(tmp_path):
    path = tmp_path / "oneline.txt"
    path.write_text(" ".join(f"w{i % 50}" for i in range(4000)) + "\n", encoding="utf-8")  # one line, then EOF
    corpus = prepare_corpus(path, cache_dir=tmp_path / "c", spec=TokenizerSpec("word"))
    splits = corpus.splits(0.05, 0.05)
    assert len(splits.val) > 100 and len(splits.test) > 100
    assert 0.85 < len(splits.train) / len(corpus.tokens) < 0.95
