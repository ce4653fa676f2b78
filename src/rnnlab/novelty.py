"""`rnnlab novelty`: how much of a sample is copied from the training text (torch-rnn's check, done properly).

The training text's UTF-8 bytes get a suffix array (libdivsufsort through pydivsufsort: a few
seconds and 4 bytes per byte of text for 100 MB), built once and cached beside the text's prepared
corpus. A pattern occurs in the text exactly when a binary search over the suffixes finds it, so
for a sample of m characters:
* the longest verbatim span comes from matching statistics — the longest match starting at each
  position, where the match at i + 1 is at least the match at i minus one, so about 2m searches;
* the share of its n-grams (n characters; n words for a word model) found in the text, for each n;
* the copied passages themselves: the longest matches, without overlaps.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rnnlab.errors import RnnlabError


@dataclass
class TextIndex:
    text: bytes
    suffixes: np.ndarray  # positions of the text's suffixes, in sorted order

    def occurs(self, pattern: bytes) -> bool:
        """Whether `pattern` is a substring of the text (binary search over the sorted suffixes)."""
        text, sa, size = self.text, self.suffixes, len(pattern)
        low, high = 0, len(sa)
        while low < high:
            middle = (low + high) // 2
            start = int(sa[middle])
            if text[start:start + size] < pattern:
                low = middle + 1
            else:
                high = middle
        return low < len(sa) and text[int(sa[low]):int(sa[low]) + size] == pattern


def build_index(text_path: Path, cache_dir: Path) -> TextIndex:
    """The text's suffix array, from the cache when this exact text was indexed before."""
    text = Path(text_path).read_bytes()
    if not text:
        raise RnnlabError(f"{text_path} is empty")
    digest = hashlib.blake2b(text, digest_size=16).hexdigest()
    cached = Path(cache_dir) / f"{Path(text_path).stem}-{digest}.suffixes.npy"
    if cached.is_file():
        try:
            suffixes = np.load(cached, mmap_mode="r")
            if len(suffixes) == len(text):
                return TextIndex(text, suffixes)
        except (OSError, ValueError):
            pass  # a damaged cache entry: build it again
    try:
        from pydivsufsort import divsufsort
    except ImportError:
        raise RnnlabError("novelty needs pydivsufsort: pip install 'rnnlab[experiments]'") from None
    suffixes = divsufsort(np.frombuffer(text, dtype=np.uint8).copy())
    cached.parent.mkdir(parents=True, exist_ok=True)
    temporary = cached.with_name(f".{cached.name}.{digest[:16]}.tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, suffixes)
    temporary.replace(cached)
    return TextIndex(text, suffixes)


@dataclass
class NoveltyReport:
    characters: int
    longest: str  # the longest span of the sample found verbatim in the text
    shares: dict[int, float]  # n -> share of the sample's n-grams that occur in the text
    passages: list[str] = field(default_factory=list)  # the longest copied passages, longest first
    unit: str = "characters"

    def as_dict(self) -> dict:
        return {"characters": self.characters, "longest_copied": len(self.longest), "longest_text": self.longest,
                "unit": self.unit, "ngram_shares": {str(n): share for n, share in self.shares.items()},
                "passages": self.passages}


def novelty(index: TextIndex, sample: str, ngrams: tuple[int, ...], words: bool = False,
            passages: int = 5, min_passage: int = 20) -> NoveltyReport:
    """How much of `sample` is in the indexed text (see the module's docstring)."""
    pieces = _pieces(sample, words)
    encoded = [p.encode("utf-8") for p in pieces]
    matches = _matching_lengths(index, encoded, words)
    best = int(np.argmax(matches)) if matches else 0
    longest = _span(pieces, best, matches[best], words) if matches else ""
    shares = {}
    for n in ngrams:
        starts = range(len(pieces) - n + 1)
        shares[n] = (sum(matches[i] >= n for i in starts) / len(starts)) if len(starts) > 0 else 0.0
    return NoveltyReport(len(sample), longest, shares, _passages(pieces, matches, passages, min_passage, words),
                         "words" if words else "characters")


def _pieces(sample: str, words: bool) -> list[str]:
    """Characters, or words with the whitespace before each (so joined pieces are the sample's text)."""
    return re.findall(r"\s*\S+", sample) if words else list(sample)


def _matching_lengths(index: TextIndex, pieces: list[bytes], words: bool = False) -> list[int]:
    """For every position i, the most pieces from i on that occur together in the text. (Words are
    matched without the whitespace before the first: a copied phrase may start a line in the text.)"""
    lengths, length = [], 0
    for i in range(len(pieces)):
        length = max(length - 1, 0)  # what matched from i - 1 still matches from i, minus its first piece
        while i + length < len(pieces):
            pattern = b"".join(pieces[i:i + length + 1])
            if not index.occurs(pattern.lstrip() if words else pattern):
                break
            length += 1
        lengths.append(length)
    return lengths


def _span(pieces: list[str], start: int, length: int, words: bool) -> str:
    text = "".join(pieces[start:start + length])
    return text.lstrip() if words else text


def _passages(pieces: list[str], matches: list[int], count: int, min_length: int, words: bool) -> list[str]:
    """The longest copied stretches, none overlapping another, at least `min_length` pieces long."""
    taken, chosen = np.zeros(len(pieces), dtype=bool), []
    for i in sorted(range(len(matches)), key=lambda i: -matches[i]):
        if len(chosen) == count or matches[i] < min_length:
            break
        if not taken[i:i + matches[i]].any():
            taken[i:i + matches[i]] = True
            chosen.append(_span(pieces, i, matches[i], words))
    return chosen
