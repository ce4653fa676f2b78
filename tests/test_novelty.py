"""`rnnlab novelty`: a planted copy is found exactly, absent text scores 0, n-gram shares match a
brute-force count, the index is cached, and the command checks a checkpoint's own sample."""

import json
import random

import pytest

pytest.importorskip("pydivsufsort")

from rnnlab.cli import main  # noqa: E402
from rnnlab.novelty import build_index, novelty  # noqa: E402


def random_text(alphabet, size, seed):
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(size))


@pytest.fixture
def corpus(tmp_path):
    planted = "ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun."
    text = random_text("abcdefgh \n", 50_000, 1) + planted + random_text("abcdefgh \n", 50_000, 2)
    path = tmp_path / "train.txt"
    path.write_text(text, encoding="utf-8")
    return path, text, planted


def test_a_planted_passage_is_found_exactly(corpus, tmp_path):
    path, _, planted = corpus
    index = build_index(path, tmp_path / "cache")
    sample = random_text("0123456789", 300, 3) + planted + random_text("0123456789", 300, 4)  # digits: not in the text
    report = novelty(index, sample, (10, 20, 50))
    assert report.longest == planted and report.passages == [planted]
    assert report.shares[50] == pytest.approx((len(planted) - 50 + 1) / (len(sample) - 50 + 1))


def test_text_absent_from_the_corpus_scores_zero(corpus, tmp_path):
    index = build_index(corpus[0], tmp_path / "cache")
    report = novelty(index, random_text("XYZ0123", 2000, 5), (10, 20))
    assert report.longest == "" and report.shares == {10: 0.0, 20: 0.0} and report.passages == []


def test_ngram_shares_and_the_longest_span_agree_with_brute_force(tmp_path):
    text = random_text("ab", 3000, 6)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    index = build_index(tmp_path / "t.txt", tmp_path / "cache")
    sample = random_text("ab", 400, 7)
    report = novelty(index, sample, (5, 12, 16))
    for n in (5, 12, 16):
        grams = [sample[i:i + n] for i in range(len(sample) - n + 1)]
        assert report.shares[n] == pytest.approx(sum(g in text for g in grams) / len(grams)), n
    longest = max(length for i in range(len(sample)) for length in range(len(sample) - i + 1)
                  if sample[i:i + length] in text)
    assert len(report.longest) == longest and report.longest in text and report.longest in sample


def test_the_index_is_built_once_and_reused(corpus, tmp_path):
    cache = tmp_path / "cache"
    build_index(corpus[0], cache)
    cached = list(cache.glob("*.suffixes.npy"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = build_index(corpus[0], cache)
    assert cached[0].stat().st_mtime_ns == stamp and again.occurs(corpus[2].encode())


def test_the_command_checks_a_checkpoints_own_sample_and_a_file(capsys, trained_checkpoint, corpus, tmp_path):
    from rnnlab.data.text import embedded_corpus_path

    code = main(["novelty", str(trained_checkpoint), str(embedded_corpus_path()), "--length", "300", "--json",
                 "--cache-dir", str(tmp_path / "cache")])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["characters"] == 300 and set(report["ngram_shares"]) == {"10", "20", "50"}
    sample = tmp_path / "sample.txt"
    sample.write_text("xx " + corpus[2] + " yy", encoding="utf-8")
    assert main(["novelty", str(sample), str(corpus[0]), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert f"{len(corpus[2]) + 1} characters" in out or f"{len(corpus[2])} characters" in out
    assert main(["novelty", str(sample), str(corpus[0]), "--ngrams", "ten"]) == 1
    assert "ngrams look like" in capsys.readouterr().err


def test_word_ngrams_count_words_and_keep_the_text_whole(tmp_path):
    text = "the cat sat on the mat and the dog ran off\n" * 20 + "zebra quagga\n"
    (tmp_path / "w.txt").write_text(text, encoding="utf-8")
    index = build_index(tmp_path / "w.txt", tmp_path / "cache")
    sample = "yak yak the cat sat on the mat yak"
    report = novelty(index, sample, (2, 6), words=True, min_passage=3)
    assert report.unit == "words" and report.longest == "the cat sat on the mat"  # (it starts lines there)
    grams = sample.split()
    assert report.shares[2] == pytest.approx(5 / (len(grams) - 1))  # the five word pairs of "the cat ... mat"
    assert report.shares[6] == pytest.approx(1 / (len(grams) - 5)) and report.passages == ["the cat sat on the mat"]
