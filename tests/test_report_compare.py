"""`vlm-grades compare`: side-by-side table, speedups vs. the baseline, JSON and the wall-time plot."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from fixtures_run import make_run
from vlm_grades.cli import main

NEVER = {"vision": 1e-9, "projector": 1e-9, "language": 1e-9}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    make_run(root / "baseline", tau=NEVER, name_config="none", vision_layers=1, language_layers=2)
    make_run(root / "grades", vision_layers=1, language_layers=2)
    return root


def test_compare_writes_table_json_and_plot(pair, capsys):
    out = pair / "cmp"
    assert main(["compare", str(pair / "baseline"), str(pair / "grades"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "baseline (baseline)" in printed and "speedup (wall)" in printed and "score easyvqa/test" in printed
    result = json.loads((out / "compare.json").read_text())
    base, grades = result["runs"]
    assert base["is_baseline"] and not grades["is_baseline"]
    assert base["speedup_wall"] == 1.0 and base["speedup_flops"] == 1.0
    assert grades["speedup_wall"] == pytest.approx(base["wall_time"] / grades["wall_time"])
    assert grades["speedup_flops"] == pytest.approx(base["flops"] / grades["flops"])
    assert grades["steps"] < base["steps"] == 200 and grades["speedup_flops"] > 1
    assert grades["score_delta"]["easyvqa/test"] == pytest.approx(
        grades["scores"]["easyvqa/test"] - base["scores"]["easyvqa/test"])
    with Image.open(out / "compare.png") as im:
        assert im.format == "PNG" and im.size[0] > 800
    assert "| baseline (baseline) |" in (out / "compare.md").read_text()


def test_baseline_flag_adds_the_run_first(pair, capsys):
    assert main(["compare", str(pair / "grades"), "--baseline", str(pair / "baseline"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in result["runs"]] == ["baseline", "grades"] and result["baseline"] == "baseline"
    assert main(["compare", str(pair / "grades"), str(pair / "baseline"), "--baseline", str(pair / "baseline"),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["is_baseline"] for r in result["runs"]] == [False, True]
    assert result["runs"][0]["speedup_wall"] > 1


def test_compare_rejects_non_run_folder(pair, tmp_path, capsys):
    assert main(["compare", str(pair / "grades"), str(tmp_path)]) == 2
    assert "not a vlm-grades run folder" in capsys.readouterr().err


def test_score_panel_keeps_close_scores_close():
    from vlm_grades.report.compare import score_limits

    lo, hi = score_limits([66.5, 66.8])                 # 0.3 points apart: not a full-height gap
    assert hi - lo >= 10 and lo < 66.5 and hi > 66.8
    lo, hi = score_limits([99.5, 99.9])                 # percentages stay inside 0-100
    assert hi == 100 and hi - lo >= 10 and lo < 99.5
    lo, hi = score_limits([20.0, 90.0])                 # a real gap keeps its scale
    assert lo < 20 and 90 < hi <= 100 and hi - lo < 80
    assert score_limits([]) is None
