"""`rnnlab experiment schemes` end to end on a tiny budget: it writes its table, a valid PNG and a summary."""

import json

from rnnlab.cli import main


def test_schemes_experiment_writes_table_plot_and_summary(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(("It is a truth universally acknowledged, that a single man in possession of a good "
                     "fortune, must be in want of a wife.\n") * 300, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["experiment", "schemes", str(text), "--out", str(out), "--steps", "6", "--architectures",
                 "1x8,2x8", "--curve-architecture", "1x8", "--k2", "16", "--k1", "8", "--batch-size", "4",
                 "--timing-batches", "1"])
    assert code == 0, capsys.readouterr().err
    table = (out / "table4.md").read_text()
    assert "| Scheme 4 |" in table and "r=2, γ=8" in table
    rows = json.loads((out / "table4.json").read_text())
    assert len(rows) == 8 and all(r["train_ms_per_batch"] > 0 and r["sample_ms_per_token"] > 0 for r in rows)
    png = (out / "fig9.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    results = json.loads((out / "results.json").read_text())
    assert set(results["curves"]) == {"1", "2", "3", "4"}
    assert all(point["sequences"] == point["steps"] * 4 for point in results["curves"]["1"])
    assert "progressive sampling is" in (out / "summary.md").read_text()


def test_bad_architecture_list(tmp_path, capsys):
    code = main(["experiment", "schemes", "--out", str(tmp_path), "--architectures", "big"])
    assert code == 1 and "architectures look like" in capsys.readouterr().err
