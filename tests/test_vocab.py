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
    assert vocab.unknown_pieces("abxcz") == ["x", "z"]
    assert vocab.drop_unknown("abxcz") == "abc"


@pytest.mark.parametrize("size, dtype", [(2, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16),
                                         (65537, np.uint32)])
def test_smallest_id_dtype(size, dtype):
    assert token_dtype(size) == dtype


def test_json_round_trip():
    vocab = CharVocab("hello\n\t")
    again = vocab_from_dict(vocab.to_dict())
    assert again.chars == vocab.chars


# --- word and BPE tokenizers ---------------------------------------------------------------------


from rnnlab.data.vocab import EOS, UNK, BpeVocab, WordVocab, count_words, word_pieces  # noqa: E402

PTB_LIKE = " the cat sat on the mat \n the dog sat \n\n a cat ran \n"


def test_word_tokens_cover_the_text_and_eos_marks_line_breaks():
    pieces, lengths = word_pieces(PTB_LIKE)
    assert pieces[:7] == ["the", "cat", "sat", "on", "the", "mat", "\n"]
    assert int(lengths.sum()) == len(PTB_LIKE)  # whitespace counts with the token after it
    assert count_words(PTB_LIKE)[EOS] == 4


def test_word_round_trip_normalizes_whitespace_only():
    vocab = WordVocab.from_counts(count_words(PTB_LIKE))
    ids = vocab.encode(PTB_LIKE)
    assert vocab.decode(ids) == "the cat sat on the mat\nthe dog sat\n\na cat ran\n"
    assert vocab.decode(vocab.encode("a cat\nthe mat")) == "a cat\nthe mat"


def test_word_vocab_is_sorted_by_frequency_with_cap_and_min_count():
    counts = count_words(PTB_LIKE)
    vocab = WordVocab.from_counts(counts)
    frequencies = [counts[w] for w in vocab.tokens if w != UNK]
    assert frequencies == sorted(frequencies, reverse=True)  # what the adaptive softmax expects
    capped = WordVocab.from_counts(counts, max_size=4)
    assert len(capped) == 4 and {EOS, UNK} <= set(capped.tokens)
    assert capped.tokens == [UNK, EOS, "the", "cat"]  # the 7 dropped words join <unk>'s count
    rare = WordVocab.from_counts(counts, min_count=2)
    assert set(rare.tokens) == {EOS, UNK, "the", "cat", "sat"}
    assert rare.decode(rare.encode("the dog sat")) == f"the {UNK} sat"
    assert rare.unknown_pieces("the dog sat on") == ["dog", "on"]
    assert rare.drop_unknown("the dog sat") == "the sat"


def test_word_vocab_json_round_trip_and_streaming_detokenizer():
    vocab = WordVocab.from_counts(count_words(PTB_LIKE))
    again = vocab_from_dict(vocab.to_dict())
    assert again.tokens == vocab.tokens
    ids = vocab.encode("cat sat\nthe dog")
    after_prompt = vocab.detokenizer(after="the")
    assert "".join(after_prompt.push(int(i)) for i in ids) == " cat sat\nthe dog"
    assert vocab.line_start() == [vocab.tokens.index(EOS)]


def test_bpe_round_trips_any_text_exactly():
    text = open_corpus_text()[:60_000]
    vocab = BpeVocab.train([text[:30_000], text[30_000:]], vocab_size=400, min_count=2)
    assert len(vocab) == 400
    sample = "KING RICHARD:\nNaïve — 🎭  spaces\tand tabs\n"
    ids, lengths = vocab.encode_with_lengths(sample)
    assert vocab.decode(ids) == sample and int(lengths.sum()) == len(sample)
    assert len(ids) < len(sample.encode("utf-8"))  # merges were learned
    stream = vocab.detokenizer()
    assert "".join(stream.push(int(i)) for i in ids) == sample  # multi-byte characters come out whole
    again = vocab_from_dict(vocab.to_dict())
    assert again.encode(sample).tolist() == ids.tolist()
    assert vocab.unknown_pieces(sample) == []


def test_bpe_training_is_deterministic():
    text = open_corpus_text()[:20_000]
    first = BpeVocab.train([text], vocab_size=300)
    second = BpeVocab.train([text], vocab_size=300)
    assert first.tokens == second.tokens


def test_bad_vocabularies_are_refused():
    with pytest.raises(VocabularyError, match="needs <eos> and <unk>"):
        WordVocab(["a", "b"])
    with pytest.raises(VocabularyError, match="more than its 256 bytes"):
        BpeVocab.train(["abc"], vocab_size=200)
    with pytest.raises(VocabularyError, match="invalid BPE tokenizer"):
        vocab_from_dict({"kind": "bpe", "tokenizer": {"nonsense": 1}})


def open_corpus_text() -> str:
    from rnnlab.data.text import embedded_corpus_path

    return embedded_corpus_path().read_text(encoding="utf-8")
