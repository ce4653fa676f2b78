"""Reading a corpus's text: which files it is, and their text as strict UTF-8, chunk by chunk.

A corpus is one file, a folder holding input.txt, or a folder of train/valid/test files (PTB,
WikiText); its text is decoded in fixed-size chunks, so memory does not grow with the file, and
binary or non-UTF-8 input is refused with the byte offset where it fails.
"""

from __future__ import annotations

import codecs
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

from rnnlab.errors import CorpusError

READ_BYTES = 1 << 20  # 1 MiB per chunk bounds the memory used while reading
EMBEDDED_CORPUS = "tinyshakespeare"
# file names that mark a folder's train/valid/test files, as PTB (ptb.train.txt) and WikiText ship them
_ROLE_PATTERNS = {"train": re.compile(r"(^|[._-])train([._-]|$)"),
                  "val": re.compile(r"(^|[._-])(valid|val|validation|dev)([._-]|$)"),
                  "test": re.compile(r"(^|[._-])test([._-]|$)")}


@dataclass
class CorpusFiles:
    """The text of a corpus: one file, or separate train/valid/test files."""

    train: Path
    val: Path | None = None
    test: Path | None = None

    @property
    def separate(self) -> bool:
        return self.val is not None

    def all(self) -> list[Path]:
        return [p for p in (self.train, self.val, self.test) if p is not None]


@dataclass(frozen=True)
class TextPart:
    """Bytes [start, end) of a text file (end None: to the end); cuts fall between characters."""

    path: Path
    start: int = 0
    end: int | None = None


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
    return _existing_file(resolved)


def _existing_file(path: Path) -> Path:
    if not path.exists():
        raise CorpusError(f"file not found: {path}")
    if not path.is_file():
        raise CorpusError(f"not a regular file: {path}")
    return path


def resolve_corpus_files(path: str | os.PathLike | None, val_path: str | os.PathLike | None = None,
                         test_path: str | os.PathLike | None = None) -> CorpusFiles:
    """The files of a corpus: DATA (a file, a folder with input.txt, or a folder with train/valid/test
    files such as ptb.train.txt, ptb.valid.txt, ptb.test.txt), or DATA plus explicit val/test files."""
    if test_path is not None and val_path is None:
        raise CorpusError("a separate test file needs a separate validation file too (--val-file)")
    if val_path is not None:
        return CorpusFiles(resolve_text_path(path), _existing_file(Path(val_path).expanduser()),
                           _existing_file(Path(test_path).expanduser()) if test_path else None)
    folder = Path(path).expanduser() if path is not None else None
    if folder is None or not folder.is_dir() or (folder / "input.txt").is_file():
        return CorpusFiles(resolve_text_path(path))
    roles = {role: sorted(f for f in folder.iterdir() if f.is_file() and pattern.search(f.name))
             for role, pattern in _ROLE_PATTERNS.items()}
    if not roles["train"]:
        raise CorpusError(f"folder {folder} holds no input.txt and no train file (like ptb.train.txt)")
    for role, found in roles.items():
        if len(found) > 1:
            raise CorpusError(f"folder {folder} holds several {role} files: {', '.join(f.name for f in found)}")
    if not roles["val"]:
        raise CorpusError(f"folder {folder} holds a train file but no valid file (like ptb.valid.txt)")
    return CorpusFiles(roles["train"][0], roles["val"][0], roles["test"][0] if roles["test"] else None)


def read_text_chunks(path: Path, read_bytes: int = READ_BYTES, start: int = 0, end: int | None = None
                     ) -> Iterator[str]:
    """Decode a file (or its bytes [start, end)) as strict UTF-8, chunk by chunk; errors name the
    failing byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = start
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        handle.seek(start)
        while True:
            raw = handle.read(read_bytes if end is None else max(0, min(read_bytes, end - offset)))
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


def read_line_chunks(path: Path, read_bytes: int = READ_BYTES, start: int = 0, end: int | None = None
                     ) -> Iterator[str]:
    """Like read_text_chunks, but every chunk but the last ends at a line break, so word and BPE
    tokenizers never see a word cut in two. (A line longer than 16 chunks is cut at whitespace.)"""
    carry = ""
    for text in read_text_chunks(path, read_bytes, start, end):
        text = carry + text
        cut = text.rfind("\n") + 1
        if not cut and len(text) > 16 * read_bytes:
            cut = max((m.end() for m in re.finditer(r"\s+", text)), default=len(text))
        carry, text = text[cut:], text[:cut]
        if text:
            yield text
    if carry:
        yield carry


def text_parts(files: CorpusFiles, kind: str, fractions: tuple[float, float]) -> list[TextPart]:
    """The pieces a corpus is encoded from, in order: separate files as they are; a single word or BPE
    file cut into train, val and test at the first line break after each fraction of its bytes (its
    vocabulary must be learned from the training part alone); a single char file whole (cut later)."""
    if files.separate:
        return [TextPart(p) for p in files.all()]
    if kind == "char":
        return [TextPart(files.train)]
    size = files.train.stat().st_size
    val_frac, test_frac = fractions
    with open(files.train, "rb") as handle:
        first = _break_after(handle, int(size * (1.0 - val_frac - test_frac)), size)
        second = max(first, _break_after(handle, int(size * (1.0 - test_frac)), size))
    return [TextPart(files.train, 0, first), TextPart(files.train, first, second), TextPart(files.train, second)]


def _break_after(handle, offset: int, size: int, look: int = 1 << 16) -> int:
    """The byte offset just after the first line break at or after `offset` (within `look` bytes; else
    after whitespace, else the next character boundary), so a cut never splits a word or a character."""
    if offset <= 0 or offset >= size:
        return min(max(offset, 0), size)
    handle.seek(offset)
    ahead = handle.read(look)
    for separators in (b"\n", b" \t\r"):
        found = [i for i in (ahead.find(bytes([c])) for c in separators) if i >= 0]
        if found and offset + min(found) + 1 < size:  # (the file's final line break would leave nothing after)
            return offset + min(found) + 1
    continuation = next((i for i, byte in enumerate(ahead) if byte & 0xC0 != 0x80), len(ahead))
    return offset + continuation
