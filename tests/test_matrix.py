"""`rnnlab matrix` on two tiny corpora with different alphabets: every output written, the documented
rule for characters a model does not know, and a diagonal that `rnnlab eval` reproduces."""

import csv
import json
import random

import pytest

pytest.importorskip("matplotlib")

from rnnlab.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix")
    rng = random.Random(0)
    (folder / "a.txt").write_text("".join(rng.choice("abcdefgh \n") for _ in range(40_000)), encoding="utf-8")
    (folder / "b.txt").write_text("".join(rng.choice("abcdXYZ0 \n") for _ in range(40_000)), encoding="utf-8")
    out = folder / "out"
    code = main(["--quiet", "matrix", "--corpus", f"a={folder / 'a.txt'}", "--corpus", f"b={folder / 'b.txt'}",
                 "--train-steps", "20", "--out", str(out)])
    assert code == 0
    return out


def cells(out):
    with open(out / "matrix.csv", encoding="utf-8") as handle:
        return {(row["model"], row["corpus"]): row for row in csv.DictReader(handle)}


def test_every_output_is_written(matrix):
    assert set(cells(matrix)) == {("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")}
    assert (matrix / "matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (matrix / "matrix.md").read_text(encoding="utf-8")
    assert "| model \\ corpus | a | b |" in text and "unknown]" in text
    assert (matrix / "models" / "a" / "best.json").is_file() and (matrix / "texts" / "b.val.txt").is_file()


def test_characters_a_model_does_not_know_are_left_out_and_their_share_shown(matrix):
    table = cells(matrix)
    b_text = (matrix / "texts" / "b.val.txt").read_text(encoding="utf-8")
    unknown_to_a = sum(ch in "XYZ0" for ch in b_text) / len(b_text)
    assert float(table[("a", "b")]["unknown_share"]) == pytest.approx(unknown_to_a, abs=1e-4)
    assert float(table[("a", "a")]["unknown_share"]) == 0 and float(table[("b", "b")]["unknown_share"]) == 0
    assert int(table[("a", "b")]["characters_scored"]) == len(b_text) - round(unknown_to_a * len(b_text)) - 1


def test_the_diagonal_is_what_rnnlab_eval_gives(matrix, capsys):
    for name in ("a", "b"):
        assert main(["eval", str(matrix / "models" / name), str(matrix / "texts" / f"{name}.val.txt"),
                     "--json", "--batch-size", "16"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert float(cells(matrix)[(name, name)]["bits_per_char"]) == pytest.approx(report["bits_per_char"],
                                                                                    abs=1e-4)


def test_a_model_for_a_corpus_that_is_not_there_is_one_line(tmp_path, capsys):
    code = main(["matrix", "--corpus", "a=x.txt", "--model", "c=y", "--out", str(tmp_path)])
    assert code == 1 and "--model names c" in capsys.readouterr().err
