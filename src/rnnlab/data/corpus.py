"""Turn a text corpus into a memory-mapped token file, once, and split it.

`prepare_corpus` streams the text in fixed-size chunks (so peak memory does not grow with the
file), checks it is UTF-8 text, builds the vocabulary of the chosen tokenizer (char, word or BPE),
and writes `tokens.bin` (uint8/16/32 ids, by vocabulary size) + `vocab.json` + `meta.json` into a
cache folder named after a hash of the text and the tokenizer settings: a changed file gets
prepared again, an unchanged one is reused. Word and BPE corpora also get `lengths.bin`, the
characters of text each token covers, so losses can be reported in bits per character.
The cache folder is written under a temporary name and renamed, so it is never half-written.

A corpus is one file split by fractions (train, then val, then test at the end), or separate
train/valid/test files (PTB, WikiText), whose own split is kept. A single file read as words or
BPE is cut into its three parts when it is prepared, at line breaks, so that the vocabulary is
learned from the training part alone; a character corpus is cut when it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, so no clean-up of abandoned preparations
    fcntl = None

from rnnlab.data.text import (
    READ_BYTES,
    CorpusFiles,
    TextPart,
    embedded_corpus_path,
    read_line_chunks,
    read_text_chunks,
    resolve_corpus_files,
    text_parts,
)
from rnnlab.data.vocab import (
    DEFAULT_BPE_SIZE,
    BpeVocab,
    CharVocab,
    TokenizerSpec,
    Vocab,
    WordVocab,
    code_points,
    count_words,
    token_dtype,
    vocab_from_dict,
)
from rnnlab.errors import CorpusError, RnnlabError

log = logging.getLogger("rnnlab")

PREPARED_FORMAT = 2
SPLIT_NAMES = ("train", "val", "test")



@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    # characters of text each token covers, per split (None: one character per token)
    char_lengths: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def lengths(self, name: str) -> np.ndarray | None:
        return None if self.char_lengths is None else self.char_lengths[name]


@dataclass
class PreparedCorpus:
    tokens: np.ndarray  # a read-only memmap of ids
    vocab: Vocab
    meta: dict
    char_lengths: np.ndarray | None = None  # a memmap: characters each token covers (word/BPE)

    def splits(self, val_frac: float, test_frac: float) -> Splits:
        """Separate files keep their own split; one file is cut contiguously: train, then val, then test."""
        n = len(self.tokens)
        cut_at = self.meta.get("split_fractions")
        if cut_at and not (math.isclose(cut_at[0], val_frac) and math.isclose(cut_at[1], test_frac)):
            raise CorpusError(f"this corpus was prepared with val/test fractions {cut_at[0]}/{cut_at[1]}, not "
                              f"{val_frac}/{test_frac}")
        if self.meta.get("split_tokens"):
            n_train, n_val, _ = self.meta["split_tokens"]
        else:
            n_val, n_test = int(n * val_frac), int(n * test_frac)
            n_train = n - n_val - n_test
        bounds = (0, n_train, n_train + n_val, n)

        def cut(array):
            return {name: array[bounds[i]:bounds[i + 1]] for i, name in enumerate(SPLIT_NAMES)}

        lengths = cut(self.char_lengths) if self.char_lengths is not None else None
        return Splits(**cut(self.tokens), char_lengths=lengths)

    @property
    def tokenizer(self) -> str:
        return self.vocab.kind


def corpus_digest(files: CorpusFiles, spec: TokenizerSpec, fractions: tuple[float, float] | None = None) -> str:
    """A hash of the text and of how it is tokenized (a single char-level file: of its bytes alone;
    a single word or BPE file: also of the fractions it is cut at)."""
    digest = hashlib.blake2b(digest_size=16)
    for number, path in enumerate(files.all()):
        if number:
            digest.update(b"\x00next-file\x00")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(READ_BYTES), b""):  # noqa: B023 - consumed at once
                digest.update(block)
    if files.separate or spec.kind != "char":
        digest.update(f"\x00{'split' if files.separate else 'one'}\x00{spec.key()}".encode())
    if fractions is not None and not files.separate and spec.kind != "char":
        digest.update(f"\x00fractions {fractions[0]!r} {fractions[1]!r}".encode())
    return digest.hexdigest()


def default_cache_root(text_path: Path) -> Path:
    """.rnnlab_cache beside the text when its folder is ours to write in, else the user's cache.
    (Ownership and the owner's write bit, not just access(): root may write anywhere, but should not
    litter a read-only data folder it was only pointed at.)"""
    folder = text_path.parent
    beside = folder / ".rnnlab_cache"
    if text_path != embedded_corpus_path() and _owned_and_writable(beside if beside.is_dir() else folder):
        return beside
    return user_cache_root()


def user_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rnnlab"


def _owned_and_writable(folder: Path) -> bool:
    try:
        info = folder.stat()
        return info.st_uid == os.geteuid() and bool(info.st_mode & stat.S_IWUSR) and os.access(folder, os.W_OK)
    except (OSError, AttributeError):  # AttributeError: no geteuid (Windows)
        return os.access(folder, os.W_OK)


def prepare_corpus(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                   read_bytes: int = READ_BYTES, spec: TokenizerSpec | None = None,
                   val_path: str | os.PathLike | None = None,
                   test_path: str | os.PathLike | None = None, vocab: Vocab | None = None,
                   fractions: tuple[float, float] = (0.05, 0.05)) -> PreparedCorpus:
    """Prepare (or reuse) the token file of a text corpus and open it as a memmap.

    With `vocab` (a model's own, to fine-tune it on new text), the text is encoded with that
    vocabulary instead of one built from it. `fractions` (val, test) cut a single word or BPE file
    (see text_parts); a character corpus is cut by PreparedCorpus.splits."""
    spec = spec or TokenizerSpec()
    files = resolve_corpus_files(path, val_path, test_path)
    for file in files.all():
        if file.stat().st_size == 0:
            raise CorpusError(f"{file} is empty")
    root = Path(cache_dir) if cache_dir else default_cache_root(files.train)
    fractions = (float(fractions[0]), float(fractions[1]))
    digest = corpus_digest(files, spec, fractions)
    if vocab is not None:
        spec = TokenizerSpec(vocab.kind, len(vocab))
        given = json.dumps(vocab.to_dict(), sort_keys=True).encode()
        digest = hashlib.blake2b(digest.encode() + given, digest_size=16).hexdigest()
    target = root / f"{files.train.stem}-{digest}"
    if (target / "meta.json").is_file():
        try:
            return open_prepared(target)
        except (OSError, ValueError, KeyError, RnnlabError):  # a damaged cache entry: prepare it again
            shutil.rmtree(target, ignore_errors=True)
    _write_prepared(files, spec, digest, target, read_bytes, vocab, fractions)
    return open_prepared(target)


def prepare_from_config(data, vocab: Vocab | None = None) -> PreparedCorpus:
    """prepare_corpus with the settings of a DataConfig (and, optionally, a model's vocabulary)."""
    return prepare_corpus(data.path, data.cache_dir, spec=tokenizer_spec(data), val_path=data.val_file,
                          test_path=data.test_file, vocab=vocab, fractions=(data.val_frac, data.test_frac))


def tokenizer_spec(data) -> TokenizerSpec:
    vocab_size = data.vocab_size or (DEFAULT_BPE_SIZE if data.tokenizer == "bpe" else 0)
    return TokenizerSpec(data.tokenizer, vocab_size, data.min_count)


def open_prepared(folder: Path) -> PreparedCorpus:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    vocab = vocab_from_dict(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    tokens = _open_array(folder / "tokens.bin", np.dtype(meta["dtype"]), meta["tokens"])
    lengths = None
    if (folder / "lengths.bin").is_file():
        lengths = _open_array(folder / "lengths.bin", np.dtype(np.uint32), meta["tokens"])
    return PreparedCorpus(tokens, vocab, meta, lengths)


def _open_array(file: Path, dtype: np.dtype, count: int) -> np.ndarray:
    if file.stat().st_size != count * dtype.itemsize:
        raise ValueError(f"{file} has the wrong size")
    return np.memmap(file, dtype=dtype, mode="r", shape=(count,))


def _write_prepared(files: CorpusFiles, spec: TokenizerSpec, digest: str, target: Path, read_bytes: int,
                    vocab: Vocab | None, fractions: tuple[float, float]) -> None:
    parts = text_parts(files, vocab.kind if vocab is not None else spec.kind, fractions)
    vocab = vocab or build_vocabulary(files, spec, read_bytes, train_part=parts[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_preparations(target.parent)
    staging = target.parent / f".preparing-{secrets.token_hex(8)}"
    staging.mkdir()  # (not mkdtemp: its 0700 would keep a shared cache from other users; the umask decides)
    held = _hold(staging)
    try:
        dtype = token_dtype(len(vocab))
        lengths_file = staging / "lengths.bin" if vocab.kind != "char" else None
        counts = _encode_parts(parts, vocab, staging / "tokens.bin", lengths_file, read_bytes)
        if counts[0][0] == 0:
            raise CorpusError(f"{files.train} holds no tokens" + ("" if len(parts) == 1 or files.separate else
                                                                  " in its training part"))
        (staging / "vocab.json").write_text(json.dumps(vocab.to_dict(), ensure_ascii=False), encoding="utf-8")
        meta = {"format": PREPARED_FORMAT, "source": " + ".join(str(p) for p in files.all()), "blake2b": digest,
                "tokens": sum(n for n, _ in counts), "characters": sum(c for _, c in counts),
                "dtype": dtype.name, "vocab_size": len(vocab), "tokenizer": vocab.kind,
                "vocab_cap": spec.vocab_size, "min_count": spec.min_count}
        if len(parts) > 1:
            meta["split_tokens"] = [n for n, _ in counts] + [0] * (3 - len(counts))
            meta["split_characters"] = [c for _, c in counts] + [0] * (3 - len(counts))
        if len(parts) > 1 and not files.separate:
            meta["split_fractions"] = list(fractions)
        (staging / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "meta.json").is_file():  # another process did not win the race
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _release(staging, held)


# --- preparations a killed process left behind ---------------------------------------------------
# A preparation holds an exclusive lock on `.preparing-HEX.lock` while it writes `.preparing-HEX/`;
# a folder whose lock can be taken belongs to nobody any more (its process died) and is removed.

ABANDONED_AFTER = 24 * 3600  # seconds: a staging folder without a lock file (an older rnnlab) is stale by then


def _hold(staging: Path):
    if fcntl is None:
        return None
    handle = open(f"{staging}.lock", "w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _release(staging: Path, handle) -> None:
    if handle is not None:
        Path(handle.name).unlink(missing_ok=True)
        handle.close()


def remove_abandoned_preparations(root: Path) -> list[Path]:
    """Remove the half-written staging folders of preparations whose process is gone."""
    removed = []
    for staging in root.glob(".preparing-*"):
        if not staging.is_dir():
            continue
        lock = Path(f"{staging}.lock")
        if lock.is_file() and fcntl is not None:
            with open(lock, "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # another process is preparing it right now
                shutil.rmtree(staging, ignore_errors=True)
                lock.unlink(missing_ok=True)
        elif time.time() - staging.stat().st_mtime > ABANDONED_AFTER:
            shutil.rmtree(staging, ignore_errors=True)
        else:
            continue
        removed.append(staging)
        log.info("removed %s, left by a preparation that was interrupted", staging.name)
    return removed


def build_vocabulary(files: CorpusFiles, spec: TokenizerSpec, read_bytes: int = READ_BYTES,
                     train_part: TextPart | None = None) -> Vocab:
    """The vocabulary of a corpus, in one streaming pass. Characters come from every file (a
    character first seen in the test text would otherwise be unencodable); words and BPE merges
    are learned from the training text only (`train_part`: the training file, or the training part
    of a single file), and anything else they meet becomes <unk> or bytes."""
    if spec.kind == "char":
        return scan_vocabulary(files.all(), read_bytes)[0]
    part = train_part or TextPart(files.train)
    if spec.kind == "word":
        counts = None
        for text in read_line_chunks(part.path, read_bytes, part.start, part.end):
            chunk = count_words(text)
            counts = chunk if counts is None else counts + chunk
        if not counts:
            raise CorpusError(f"{files.train} holds no words" + ("" if part.end is None else " in its training part"))
        return WordVocab.from_counts(counts, spec.vocab_size, spec.min_count)
    if spec.kind == "bpe":
        return BpeVocab.train(read_line_chunks(part.path, read_bytes, part.start, part.end), spec.vocab_size,
                              spec.min_count)
    raise CorpusError(f"unknown tokenizer {spec.kind!r}")


def scan_vocabulary(paths: Path | list[Path], read_bytes: int = READ_BYTES) -> tuple[CharVocab, int]:
    """One streaming pass: the set of code points and the number of characters."""
    seen = np.zeros(0, dtype=np.uint32)
    count = 0
    for path in [paths] if isinstance(paths, Path) else paths:
        for text in read_text_chunks(path, read_bytes):
            points = code_points(text)
            seen = np.union1d(seen, np.unique(points))
            count += len(points)
        if count == 0:
            raise CorpusError(f"{path} is empty")
    return CharVocab.from_code_points(seen), count


@dataclass
class EncodedFile:
    tokens: np.ndarray  # memmap of ids
    char_lengths: np.ndarray | None  # memmap of characters per token (word/BPE)
    characters: int  # characters of the whole text


def encode_file_to_memmap(text_path: Path, vocab: Vocab, folder: Path, read_bytes: int = READ_BYTES) -> EncodedFile:
    """Encode any text file with an existing vocabulary into memmaps in `folder` (used by evaluation)."""
    lengths_file = folder / "lengths.bin" if vocab.kind != "char" else None
    [(count, characters)] = _encode_parts([TextPart(text_path)], vocab, folder / "tokens.bin", lengths_file,
                                          read_bytes)
    if count == 0:
        raise CorpusError(f"{text_path} holds no tokens")
    tokens = np.memmap(folder / "tokens.bin", dtype=token_dtype(len(vocab)), mode="r", shape=(count,))
    lengths = np.memmap(lengths_file, dtype=np.uint32, mode="r", shape=(count,)) if lengths_file else None
    return EncodedFile(tokens, lengths, characters)


def _encode_parts(parts: list[TextPart], vocab: Vocab, destination: Path, lengths_file: Path | None,
                  read_bytes: int) -> list[tuple[int, int]]:
    """Append the ids (and, for word/BPE, the per-token character counts) of every part, chunk by
    chunk; returns (tokens, characters) per part."""
    counts = []
    chunks = read_text_chunks if vocab.kind == "char" else read_line_chunks
    with open(destination, "wb") as ids_out, open(lengths_file or os.devnull, "wb") as lengths_out:
        for part in parts:
            tokens = characters = 0
            for text in chunks(part.path, read_bytes, part.start, part.end):
                ids, lengths = vocab.encode_with_lengths(text) if lengths_file else (vocab.encode(text), None)
                ids_out.write(ids.tobytes())
                if lengths is not None:
                    lengths_out.write(lengths.tobytes())
                tokens += len(ids)
                characters += len(text)
            counts.append((tokens, characters))
        for handle in (ids_out, lengths_out) if lengths_file else (ids_out,):
            handle.flush()
            os.fsync(handle.fileno())
    return counts
