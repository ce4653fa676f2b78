"""Turn a text file into a memory-mapped token file, once, and split it.

`prepare_corpus` streams the file in fixed-size chunks (so peak memory does not grow with the
file), checks it is UTF-8 text, builds the character vocabulary, and writes
`tokens.bin` (uint8/16/32 ids) + `vocab.json` + `meta.json` into a cache folder named after a
hash of the file's bytes: a changed file gets prepared again, an unchanged one is reused.
The cache folder is written under a temporary name and renamed, so it is never half-written.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np

from rnnlab.data.vocab import CharVocab, code_points, token_dtype, vocab_from_dict
from rnnlab.errors import CorpusError

PREPARED_FORMAT = 1
READ_BYTES = 1 << 20  # 1 MiB per chunk bounds the memory used while preparing
EMBEDDED_CORPUS = "tinyshakespeare"


@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class PreparedCorpus:
    tokens: np.ndarray  # a read-only memmap of ids
    vocab: CharVocab
    meta: dict

    def splits(self, val_frac: float, test_frac: float) -> Splits:
        """Contiguous splits: train is the start, then val, then test at the very end."""
        n = len(self.tokens)
        n_val, n_test = int(n * val_frac), int(n * test_frac)
        n_train = n - n_val - n_test
        return Splits(self.tokens[:n_train], self.tokens[n_train:n_train + n_val], self.tokens[n_train + n_val:])


def embedded_corpus_path() -> Path:
    return Path(str(resources.files("rnnlab").joinpath(f"data/corpora/{EMBEDDED_CORPUS}.txt")))


def resolve_text_path(path: str | os.PathLike | None) -> Path:
    """The text file a DATA argument names: the embedded corpus, a file, or a folder's input.txt."""
    if path is None:
        return embedded_corpus_path()
    resolved = Path(path).expanduser()
    if resolved.is_dir():
        candidate = resolved / "input.txt"
        if not candidate.is_file():
            raise CorpusError(f"folder {resolved} holds no input.txt")
        return candidate
    if not resolved.exists():
        raise CorpusError(f"file not found: {resolved}")
    if not resolved.is_file():
        raise CorpusError(f"not a regular file: {resolved}")
    return resolved


def read_text_chunks(path: Path, read_bytes: int = READ_BYTES) -> Iterator[str]:
    """Decode a file as strict UTF-8, chunk by chunk; errors name the failing byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        while True:
            raw = handle.read(read_bytes)
            final = not raw
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise CorpusError(f"{path} looks binary: NUL byte at byte offset {offset + nul}")
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final=final)
            except UnicodeDecodeError as exc:
                at = offset - pending + exc.start
                raise CorpusError(f"{path} is not valid UTF-8: undecodable byte at byte offset {at}") from None
            offset += len(raw)
            if text:
                yield text
            if final:
                return


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(READ_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_root(text_path: Path) -> Path:
    if text_path == embedded_corpus_path() or not os.access(text_path.parent, os.W_OK):
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return base / "rnnlab"
    return text_path.parent / ".rnnlab_cache"


def prepare_corpus(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                   read_bytes: int = READ_BYTES) -> PreparedCorpus:
    """Prepare (or reuse) the token file of a text corpus and open it as a memmap."""
    text_path = resolve_text_path(path)
    if text_path.stat().st_size == 0:
        raise CorpusError(f"{text_path} is empty")
    root = Path(cache_dir) if cache_dir else default_cache_root(text_path)
    digest = file_digest(text_path)
    target = root / f"{text_path.stem}-{digest}"
    if (target / "meta.json").is_file():
        try:
            return open_prepared(target)
        except (OSError, ValueError, KeyError):  # a damaged cache entry: prepare it again
            shutil.rmtree(target, ignore_errors=True)
    _write_prepared(text_path, digest, target, read_bytes)
    return open_prepared(target)


def open_prepared(folder: Path) -> PreparedCorpus:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    vocab = vocab_from_dict(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    dtype = np.dtype(meta["dtype"])
    if (folder / "tokens.bin").stat().st_size != meta["tokens"] * dtype.itemsize:
        raise ValueError(f"{folder / 'tokens.bin'} has the wrong size")
    tokens = np.memmap(folder / "tokens.bin", dtype=dtype, mode="r", shape=(meta["tokens"],))
    return PreparedCorpus(tokens, vocab, meta)


def _write_prepared(text_path: Path, digest: str, target: Path, read_bytes: int) -> None:
    vocab, count = scan_vocabulary(text_path, read_bytes)
    if count == 0:
        raise CorpusError(f"{text_path} is empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".preparing-", dir=target.parent))
    try:
        dtype = token_dtype(len(vocab))
        _encode_to_file(staging / "tokens.bin", text_path, vocab, read_bytes)
        (staging / "vocab.json").write_text(json.dumps(vocab.to_dict(), ensure_ascii=False), encoding="utf-8")
        meta = {"format": PREPARED_FORMAT, "source": str(text_path), "blake2b": digest,
                "tokens": count, "dtype": dtype.name, "vocab_size": len(vocab)}
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


def scan_vocabulary(text_path: Path, read_bytes: int = READ_BYTES) -> tuple[CharVocab, int]:
    """One streaming pass: the set of code points and the number of characters."""
    seen = np.zeros(0, dtype=np.uint32)
    count = 0
    for text in read_text_chunks(text_path, read_bytes):
        points = code_points(text)
        seen = np.union1d(seen, np.unique(points))
        count += len(points)
    if count == 0:
        raise CorpusError(f"{text_path} is empty")
    return CharVocab.from_code_points(seen), count


def encode_file_to_memmap(text_path: Path, vocab: CharVocab, destination: Path,
                          read_bytes: int = READ_BYTES) -> np.ndarray:
    """Encode any text file with an existing vocabulary into a memmap (used by evaluation)."""
    count = _encode_to_file(destination, text_path, vocab, read_bytes)
    if count == 0:
        raise CorpusError(f"{text_path} is empty")
    return np.memmap(destination, dtype=token_dtype(len(vocab)), mode="r", shape=(count,))


def _encode_to_file(destination: Path, text_path: Path, vocab: CharVocab, read_bytes: int) -> int:
    """Append the ids of every chunk to a file; returns the number of ids written."""
    count = 0
    with open(destination, "wb") as handle:
        for text in read_text_chunks(text_path, read_bytes):
            ids = vocab.encode(text)
            handle.write(ids.tobytes())
            count += len(ids)
        handle.flush()
        os.fsync(handle.fileno())
    return count
