"""Vocabularies map text to integer ids and back; every one saves itself as JSON.

CharVocab works on Unicode code points (not bytes, not UTF-16 units), so 'é', '—' and emoji are
single tokens. Ids are assigned in code-point order, which makes the vocabulary of a text
independent of the order its characters first appear in.
"""

from __future__ import annotations

from typing import Iterable, Protocol

import numpy as np

from rnnlab.errors import VocabularyError


class Vocab(Protocol):
    kind: str

    def __len__(self) -> int: ...
    def encode(self, text: str) -> np.ndarray: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def to_dict(self) -> dict: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class CharVocab:
    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars: list[str] = sorted(set(chars))
        if not self.chars:
            raise VocabularyError("a vocabulary needs at least one character")
        self._points = code_points("".join(self.chars))
        self._index = {ch: i for i, ch in enumerate(self.chars)}
        # code point -> id (-1 if unknown); a table up to the largest known code point
        self._lookup = np.full(int(self._points.max()) + 1, -1, dtype=np.int32)
        self._lookup[self._points] = np.arange(len(self.chars), dtype=np.int32)

    @classmethod
    def from_code_points(cls, points: np.ndarray) -> "CharVocab":
        return cls(chr(int(p)) for p in points)

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, ch: str) -> bool:
        return ch in self._index

    def unknown_characters(self, text: str) -> list[str]:
        return sorted({ch for ch in set(text) if ch not in self._index})

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text`; raises VocabularyError listing any character the vocabulary lacks."""
        points = code_points(text)
        beyond = points >= len(self._lookup)
        ids = self._lookup[np.where(beyond, 0, points)]
        ids[beyond] = -1
        if (ids < 0).any():
            missing = sorted({chr(int(p)) for p in points[ids < 0]})
            raise VocabularyError(f"characters not in the vocabulary: {describe_chars(missing)}")
        return ids.astype(token_dtype(len(self)))

    def drop_unknown(self, text: str) -> str:
        return "".join(ch for ch in text if ch in self._index)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}

    def is_subset_of(self, other: "CharVocab") -> bool:
        return set(self.chars) <= set(other.chars)


def describe_chars(chars: Iterable[str]) -> str:
    """A readable list of characters, escaping invisible ones: 'a', 'é', '\\t'."""
    return ", ".join(repr(ch) for ch in chars)


def vocab_from_dict(raw: dict) -> CharVocab:
    kind = raw.get("kind")
    if kind == "char":
        return CharVocab(raw["chars"])
    raise VocabularyError(f"unknown vocabulary kind {kind!r}")
