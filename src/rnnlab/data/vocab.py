"""Vocabularies (tokenizers) map text to integer ids and back; every one saves itself as JSON.

Three kinds share one protocol, so corpus preparation, training, sampling, evaluation and serving
never ask which one they hold:
- CharVocab works on Unicode code points (not bytes, not UTF-16 units), so 'é', '—' and emoji are
  single tokens. Ids are assigned in code-point order, which makes the vocabulary of a text
  independent of the order its characters first appear in.
- WordVocab splits on whitespace with the PTB/WikiText conventions: every line break is an `<eos>`
  token, words outside the vocabulary (rarer than `min_count`, or beyond the `max_size` most
  frequent) become `<unk>`. Ids are sorted by frequency, as the adaptive softmax expects.
- BpeVocab is a byte-level BPE trained on the corpus with Hugging Face `tokenizers` (offline): it
  has no unknown text at all and decodes back to exactly the text it encoded.

`encode_with_lengths` also says how many characters of the original text each token covers (the
whitespace before a word counts with the word), so any model's loss can be reported in bits per
character of the same text, whatever its tokenizer.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Protocol

import numpy as np

from rnnlab.errors import VocabularyError

DEFAULT_BPE_SIZE = 4096
EOS, UNK = "<eos>", "<unk>"


@dataclass(frozen=True)
class TokenizerSpec:
    """How a corpus is cut into tokens: the kind, a vocabulary cap (0 = none) and a minimum count."""

    kind: str = "char"
    vocab_size: int = 0
    min_count: int = 1

    def key(self) -> str:
        """Part of a prepared corpus's cache key: char-level ignores the word/BPE settings."""
        return "char" if self.kind == "char" else f"{self.kind}-v{self.vocab_size}-m{self.min_count}"


class Vocab(Protocol):
    kind: str
    tokens: list[str]  # the text of every id, in id order

    def __len__(self) -> int: ...
    def encode(self, text: str) -> np.ndarray: ...
    def encode_with_lengths(self, text: str) -> tuple[np.ndarray, np.ndarray]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def detokenizer(self, after: str = "") -> "Detokenizer": ...
    def unknown_pieces(self, text: str) -> list[str]: ...
    def drop_unknown(self, text: str) -> str: ...
    def line_start(self) -> list[int]: ...
    def to_dict(self) -> dict: ...


class Detokenizer(Protocol):
    def push(self, token: int) -> str: ...


BPE_PIECE = 128  # longest pre-token BPE learns from or encodes, in bytes
MAX_BPE_VOCAB = 1 << 22  # the tokenizers library counts ids in 32 bits; no BPE vocabulary gets near this


def vocab_size_problem(kind: str, vocab_size: int) -> str | None:
    """Why a vocabulary of this kind cannot have this size (0 = no cap), or None: the one rule, read by
    the config's validation and by the vocabularies themselves."""
    if kind == "word" and 0 < vocab_size < 3:
        return f"a word vocabulary needs room for {EOS}, {UNK} and a word; got vocab_size {vocab_size}"
    if kind == "bpe" and vocab_size > MAX_BPE_VOCAB:
        return f"a BPE vocabulary of {vocab_size:,} is beyond any corpus; the limit is {MAX_BPE_VOCAB:,}"
    if kind == "bpe" and 0 < vocab_size <= 256:
        return (f"a byte-level BPE vocabulary holds the 256 bytes and more (it needs more than its 256 bytes); "
                f"got vocab_size {vocab_size}")
    return None


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
        self.tokens = self.chars
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

    def unknown_pieces(self, text: str) -> list[str]:
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

    def encode_with_lengths(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        ids = self.encode(text)
        return ids, np.ones(len(ids), dtype=np.uint32)

    def drop_unknown(self, text: str) -> str:
        return "".join(ch for ch in text if ch in self._index)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def detokenizer(self, after: str = "") -> "_CharDetokenizer":
        return _CharDetokenizer(self.chars)

    def line_start(self) -> list[int]:
        """The ids that put a model at the start of a line (where text most naturally begins)."""
        return [self._index["\n"]] if "\n" in self._index else []

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class _CharDetokenizer:
    def __init__(self, chars: list[str]):
        self.chars = chars

    def push(self, token: int) -> str:
        return self.chars[token]


# A word is a run of non-whitespace; a line break is a token of its own. Each match also takes the
# whitespace before it, so the matches tile the text and give every token its character length.
_WORD_OR_LINE_BREAK = re.compile(r"[^\S\n]*(\S+|\n)")


def word_pieces(text: str) -> tuple[list[str], np.ndarray]:
    """Whitespace tokens of `text` ('\\n' for each line break) and the characters each covers."""
    pieces, ends = [], []
    for match in _WORD_OR_LINE_BREAK.finditer(text):
        pieces.append(match.group(1))
        ends.append(match.end())
    return pieces, _lengths_from_ends(np.asarray(ends, dtype=np.int64), len(text))


def count_words(text: str) -> Counter:
    """How often each word (and <eos>, once per line break) occurs in `text`."""
    counts = Counter(match.group(1) for match in _WORD_OR_LINE_BREAK.finditer(text))
    if "\n" in counts:
        counts[EOS] += counts.pop("\n")
    return counts


def _lengths_from_ends(ends: np.ndarray, text_length: int) -> np.ndarray:
    """Per-token character counts from each token's end offset; trailing text counts with the last token."""
    lengths = np.diff(ends, prepend=0)
    if len(lengths):
        lengths[-1] += text_length - ends[-1]
    return lengths.astype(np.uint32)


class WordVocab:
    kind = "word"

    def __init__(self, words: list[str]):
        if EOS not in words or UNK not in words:
            raise VocabularyError(f"a word vocabulary needs {EOS} and {UNK}")
        if len(set(words)) != len(words):
            raise VocabularyError("a word vocabulary lists a word twice")
        self.tokens = list(words)
        self._index = {w: i for i, w in enumerate(self.tokens)}
        self.eos, self.unk = self._index[EOS], self._index[UNK]

    @classmethod
    def from_counts(cls, counts: Counter, max_size: int = 0, min_count: int = 1) -> "WordVocab":
        """Keep words seen at least `min_count` times, at most `max_size` ids in all (0 = no cap);
        the rest become <unk>, whose count they join. Ids go by count (most frequent first)."""
        counts = Counter(counts)
        counts.setdefault(EOS, 0)
        counts.setdefault(UNK, 0)
        special = {EOS, UNK}
        ranked = [w for w, c in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
                  if w not in special and c >= min_count]
        if max_size:
            if problem := vocab_size_problem("word", max_size):
                raise VocabularyError(problem)
            ranked = ranked[:max_size - 2]
        kept = set(ranked) | special
        dropped = sum(c for w, c in counts.items() if w not in kept)
        effective = {w: counts[w] + (dropped if w == UNK else 0) for w in kept}
        return cls(sorted(kept, key=lambda w: (-effective[w], w)))

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    def _id(self, piece: str) -> int:
        return self.eos if piece == "\n" else self._index.get(piece, self.unk)

    def encode_with_lengths(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        pieces, lengths = word_pieces(text)
        ids = np.fromiter((self._id(p) for p in pieces), dtype=np.int64, count=len(pieces))
        return ids.astype(token_dtype(len(self))), lengths

    def encode(self, text: str) -> np.ndarray:
        return self.encode_with_lengths(text)[0]

    def unknown_pieces(self, text: str) -> list[str]:
        pieces, _ = word_pieces(text)
        return sorted({p for p in pieces if p != "\n" and p not in self._index})

    def drop_unknown(self, text: str) -> str:
        pieces, _ = word_pieces(text)
        return self.decode(self._id(p) for p in pieces if p == "\n" or p in self._index)

    def decode(self, ids: Iterable[int]) -> str:
        detokenizer = self.detokenizer()
        return "".join(detokenizer.push(int(i)) for i in ids)

    def detokenizer(self, after: str = "") -> "_WordDetokenizer":
        return _WordDetokenizer(self.tokens, self.eos, at_line_start=not after or after[-1].isspace())

    def line_start(self) -> list[int]:
        return [self.eos]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "words": self.tokens}


class _WordDetokenizer:
    """Words joined by one space; <eos> becomes a line break."""

    def __init__(self, words: list[str], eos: int, at_line_start: bool):
        self.words, self.eos, self.at_line_start = words, eos, at_line_start

    def push(self, token: int) -> str:
        if token == self.eos:
            self.at_line_start = True
            return "\n"
        text = self.words[token] if self.at_line_start else " " + self.words[token]
        self.at_line_start = False
        return text


class BpeVocab:
    """Byte-level BPE (Hugging Face `tokenizers`): every text encodes, and decodes back exactly."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]

    @classmethod
    def train(cls, chunks: Iterable[str], vocab_size: int = DEFAULT_BPE_SIZE, min_count: int = 2) -> "BpeVocab":
        tokenizers = _import_tokenizers()
        if problem := vocab_size_problem("bpe", vocab_size or 1):
            raise VocabularyError(problem)
        tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
        # ByteLevel's words, cut into pieces of at most BPE_PIECE bytes: BPE training is quadratic in a
        # word's length, and a whitespace-free line of 1 MB is one word (training took minutes; now about a second)
        tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
            tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False),
            tokenizers.pre_tokenizers.Split(tokenizers.Regex(f".{{1,{BPE_PIECE}}}"), "isolated")])
        tokenizer.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=max(min_count, 1), show_progress=False,
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(chunks, trainer)
        return cls(tokenizer)

    @classmethod
    def from_json(cls, serialized: str) -> "BpeVocab":
        tokenizers = _import_tokenizers()
        try:
            return cls(tokenizers.Tokenizer.from_str(serialized))
        except Exception as exc:  # the library raises plain Exceptions for malformed JSON
            raise VocabularyError(f"invalid BPE tokenizer: {exc}") from None

    def __len__(self) -> int:
        return len(self.tokens)

    def encode_with_lengths(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        encoding = self.tokenizer.encode(text)
        ends = np.asarray([end for _, end in encoding.offsets], dtype=np.int64)
        ids = np.asarray(encoding.ids, dtype=np.int64).astype(token_dtype(len(self)))
        return ids, _lengths_from_ends(ends, len(text))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64).astype(token_dtype(len(self)))

    def unknown_pieces(self, text: str) -> list[str]:
        return []  # bytes cover every text

    def drop_unknown(self, text: str) -> str:
        return text

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def detokenizer(self, after: str = "") -> "_BpeDetokenizer":
        return _BpeDetokenizer(self.tokenizer)

    def line_start(self) -> list[int]:
        return self.encode("\n").tolist()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": json.loads(self.tokenizer.to_str())}


class _BpeDetokenizer:
    """Streams text as tokens arrive; a character split over several byte tokens comes out whole."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.stream = _import_tokenizers().decoders.DecodeStream(skip_special_tokens=False)

    def push(self, token: int) -> str:
        return self.stream.step(self.tokenizer, token) or ""


def _import_tokenizers():
    try:
        import tokenizers
        import tokenizers.decoders
        import tokenizers.models
        import tokenizers.pre_tokenizers
        import tokenizers.trainers
    except ImportError:  # the [bpe] extra is missing: char and word vocabularies do without it
        raise VocabularyError("BPE needs the Hugging Face tokenizers library: pip install 'rnnlab[bpe]'") from None
    return tokenizers


def describe_chars(chars: Iterable[str]) -> str:
    """A readable list of characters, escaping invisible ones: 'a', 'é', '\\t'."""
    return ", ".join(repr(ch) for ch in chars)


def vocab_from_dict(raw: dict) -> Vocab:
    kind = raw.get("kind")
    if kind == "char":
        return CharVocab(raw["chars"])
    if kind == "word":
        return WordVocab(raw["words"])
    if kind == "bpe":
        return BpeVocab.from_json(json.dumps(raw["tokenizer"]))
    raise VocabularyError(f"unknown vocabulary kind {kind!r}")
