import numpy as np
import pytest

from rnnlab.data.vocab import CharVocab, token_dtype, vocab_from_dict
from rnnlab.errors import VocabularyError


def test_code_points_not_bytes_or_utf16_units():
    text = "naïve café — 🎭 ok"
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    assert len(ids) == len(text)  # one id per code point; the emoji is one token, not a surrogate pair
    assert vocab.decode(ids) == text
    assert "🎭" in vocab.chars


def test_ids_follow_code_point_order():
    assert CharVocab("cab").chars == ["a", "b", "c"]


def test_unknown_characters_are_listed():
    vocab = CharVocab("abc")
    with pytest.raises(VocabularyError, match="'x', 'z'"):
        vocab.encode("abxcz")
    assert vocab.unknown_characters("abxcz") == ["x", "z"]
    assert vocab.drop_unknown("abxcz") == "abc"


@pytest.mark.parametrize("size, dtype", [(2, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16),
                                         (65537, np.uint32)])
def test_smallest_id_dtype(size, dtype):
    assert token_dtype(size) == dtype


def test_json_round_trip():
    vocab = CharVocab("hello\n\t")
    again = vocab_from_dict(vocab.to_dict())
    assert again.chars == vocab.chars
