"""Result tables and heatmaps: files, order, averages, overwrite refusal, resuming."""

from __future__ import annotations

import csv
import json

import pytest

from armt.evaluation.reports import (
    compare_runs,
    comparison_table,
    load_results,
    markdown_table,
    merge_results,
    missing_pairs,
    result_record,
    wilson_interval,
    write_results,
)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results():
    return [result_record(t, n, c, 10) for t, n, c in [
        ("qa2", "4k", 3), ("qa1", "0k", 10), ("qa10", "0k", 7), ("qa1", "4k", 6), ("qa2", "0k", 8), ("qa1", "64k", 1)]]


def test_files_written(results, tmp_path):
    paths = write_results(results, tmp_path / "run", title="tiny model")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "heatmap.png", "results.csv", "results.json", "results.md"]
    png = paths["heatmap.png"].read_bytes()
    assert png.startswith(PNG) and len(png) > 1000
    rows = list(csv.DictReader(paths["results.csv"].open()))
    assert [(r["task"], r["length"]) for r in rows][:3] == [("qa1", "0k"), ("qa1", "4k"), ("qa1", "64k")]
    data = json.loads(paths["results.json"].read_text())
    assert data["tasks"] == ["qa1", "qa2", "qa10"] and data["lengths"] == ["0k", "4k", "64k"]
    md = paths["results.md"].read_text().splitlines()
    assert md[0] == "# tiny model"
    assert "| task | 0k | 4k | 64k |" in md
    assert "| qa2 | 80.0 | 30.0 | – |" in md
    # the average of a column is over the tasks that have it: (100 + 80 + 70) / 3, (60 + 30) / 2
    assert md[-1] == "| average | 83.3 | 45.0 | 10.0 |"


def test_given_order_of_lengths_and_tasks(results):
    md = markdown_table(results, tasks=["qa2", "qa1"], lengths=["64k", "0k"])
    assert md.splitlines()[0] == "| task | 64k | 0k |"
    assert md.splitlines()[2] == "| qa2 | – | 80.0 |"


def test_refuses_to_overwrite(results, tmp_path):
    write_results(results, tmp_path)
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_results(results[:1], tmp_path)
    assert (tmp_path / "results.json").read_text() == before
    write_results(results[:1], tmp_path, overwrite=True)
    assert len(load_results(tmp_path)) == 1


def test_load_and_resume(results, tmp_path):
    write_results(results[:3], tmp_path)
    old = load_results(tmp_path)
    # saved in table order: tasks qa1..qa20, then lengths short to long
    assert old == [results[1], results[0], results[2]]
    todo = missing_pairs(old, ["qa1", "qa2"], ["0k", "4k"])
    assert todo == [("qa1", "4k"), ("qa2", "0k")]
    new = [result_record("qa1", "4k", 5, 10), result_record("qa2", "0k", 9, 10), result_record("qa1", "0k", 0, 10)]
    merged = merge_results(old, new)
    cells = {(r["task"], r["length"]): r["correct"] for r in merged}
    assert cells[("qa1", "0k")] == 10 and cells[("qa1", "4k")] == 5 and len(merged) == 5
    assert {(r["task"], r["length"]): r["correct"] for r in merge_results(old, new, replace=True)}[("qa1", "0k")] == 0
    write_results(merged, tmp_path, overwrite=True)
    assert [(r["task"], r["length"]) for r in load_results(tmp_path)] == [
        ("qa1", "0k"), ("qa1", "4k"), ("qa2", "0k"), ("qa2", "4k"), ("qa10", "0k")]
    (tmp_path / "results.json").unlink()
    assert len(load_results(tmp_path)) == 5     # falls back to the CSV
    assert load_results(tmp_path / "empty") == []


def test_old_length_names_merge_with_new(tmp_path):
    # earlier versions saved 256 tokens as "256"; it is the same length as "0.25k"
    old = [{"task": "qa1", "length": "256", "n": 40, "correct": 16}, {"task": "qa1", "length": "1024", "n": 4, "correct": 1}]
    merged = merge_results(old, [result_record("qa1", "0.25k", 20, 40)], replace=True)
    assert {(r["length"], r["correct"]) for r in merged} == {("0.25k", 20), ("1k", 1)}
    assert missing_pairs(merged, ["qa1"], ["256", "0.5k"]) == [("qa1", "0.5k")]
    assert result_record("qa1", "free label", 1, 2)["length"] == "free label"


def test_bad_results_are_refused():
    with pytest.raises(ValueError, match="correct <= n"):
        result_record("qa1", "0k", 11, 10)
    with pytest.raises(ValueError, match="lacks"):
        markdown_table([{"task": "qa1", "length": "0k", "n": 3}])
    with pytest.raises(ValueError, match="not correct/n"):
        markdown_table([{"task": "qa1", "length": "0k", "n": 4, "correct": 1, "accuracy": 0.5}])
    with pytest.raises(ValueError, match="merge_results"):
        markdown_table([result_record("qa1", "0k", 1, 2)] * 2)


def test_metadata_kept_in_json(results, tmp_path):
    from armt.evaluation.reports import load_metadata

    assert load_metadata(tmp_path) == {}
    write_results(results, tmp_path, metadata={"model": "tiny", "sources": {"babi": "builtin"}})
    assert load_metadata(tmp_path) == {"model": "tiny", "sources": {"babi": "builtin"}}
    assert len(load_results(tmp_path)) == len(results)


def test_wilson_interval_matches_the_formula_and_stays_in_range():
    lo, hi = wilson_interval(18, 20)
    assert (round(lo, 4), round(hi, 4)) == (0.6990, 0.9721)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 5)[1] > 0.4  # five misses do not prove an accuracy of zero
    with pytest.raises(ValueError, match="n must be"):
        wilson_interval(0, 0)


def test_runs_compared_across_folders_and_from_the_shell(tmp_path, capsys):
    from armt.cli import main

    write_results([result_record("qa1", "0k", 19, 20), result_record("qa1", "4k", 10, 20),
                   result_record("qa2", "0k", 1, 20)], tmp_path / "short")
    write_results([result_record("qa1", "32k", 2, 3)], tmp_path / "long")
    write_results([result_record("qa1", "4k", 4, 20)], tmp_path / "wiped")
    compared = compare_runs({"ARMT": [tmp_path / "long", tmp_path / "short"], "wiped": [tmp_path / "wiped"]}, "qa1")
    assert [r["length"] for r in compared["ARMT"]] == ["0k", "4k", "32k"]
    table = comparison_table(compared, "qa1")
    assert table.splitlines()[0] == "| qa1 | ARMT | wiped |"
    assert "| 4k | 50% (n=20, 30-70) | 20% (n=20, 8-42) |" in table and "| 0k | 95% (n=20, 76-99) | - |" in table
    with pytest.raises(ValueError, match="two folders hold qa1 at 4k"):
        compare_runs({"x": [tmp_path / "short", tmp_path / "wiped"]}, "qa1")
    with pytest.raises(ValueError, match="holds no qa3 results"):
        compare_runs({"x": [tmp_path / "short"]}, "qa3")
    args = ["babilong", "compare", "--run", f"ARMT={tmp_path / 'short'},{tmp_path / 'long'}",
            "--run", f"wiped={tmp_path / 'wiped'}", "--out", str(tmp_path / "cmp")]
    assert main(args) == 0
    assert "| 32k | 67% (n=3, 21-94) | - |" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:8] == PNG
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert data["results"]["wiped"][0]["correct"] == 4
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["babilong", "compare", "--run", "nofolders", "--out", str(tmp_path / "c2")]) == 2
    assert "NAME=FOLDER" in capsys.readouterr().err


def test_long_titles_are_wrapped_to_stay_inside_the_figure():
    from armt.evaluation.reports import wrap_title

    title = "BABILong qa1, SmolLM2-135M trained at 0.25k, 0.5k then 1k, question alone"
    lines = wrap_title(title).split("\n")
    assert len(lines) == 2 and all(len(line) <= 64 for line in lines) and " ".join(lines) == title
    assert wrap_title("short") == "short"
