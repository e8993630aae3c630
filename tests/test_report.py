"""`vlm-grades report` on a realistic synthetic run folder: files, JSON vs. events, PNGs, HTML, errors."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from fixtures_run import make_run
from vlm_grades.cli import main
from vlm_grades.errors import UserError
from vlm_grades.report.build import write_report
from vlm_grades.report.figures import FIGURES
from vlm_grades.report.run_data import RunData
from vlm_grades.training.run_folder import read_jsonl


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    truth = make_run(root / "run", seed=0)
    assert main(["report", str(root / "run"), "--out", str(root / "out")]) == 0
    return root / "run", root / "out", truth


def test_every_file_present(reported):
    _, out, _ = reported
    names = {p.name for p in out.iterdir()}
    assert names == {"report.json", "report.md", "report.html", *FIGURES}


def test_default_out_is_run_report_folder(tmp_path):
    make_run(tmp_path / "run", total_steps=60, seed=3)
    assert main(["report", str(tmp_path / "run"), "--format", "json"]) == 0
    assert [p.name for p in (tmp_path / "run" / "report").iterdir()] == ["report.json"]


def test_json_consistent_with_events(reported):
    run, out, truth = reported
    report = json.loads((out / "report.json").read_text())
    events = list(read_jsonl(run / "events.jsonl"))
    freezes = {e["component"]: e["step"] for e in events if e["type"] == "freeze"}
    assert freezes == truth.freeze_steps
    assert {c["name"]: c["freeze_step"] for c in report["components"] if c["freeze_step"] is not None} == freezes
    for modality, s in report["modalities"].items():
        steps = sorted(freezes[c["name"]] for c in report["components"]
                       if c["modality"] == modality and c["name"] in freezes)
        assert s["frozen"] == len(steps)
        assert s["first_freeze_step"] == steps[0] and s["last_freeze_step"] == steps[-1]
        assert steps[0] <= s["median_freeze_step"] <= steps[-1]
        assert s["components"] == sum(c["modality"] == modality for c in report["components"])
        assert 0 < s["statistic_end"] < s["statistic_start"]
        assert s["finalize_step"] == truth.finalize_steps.get(modality)
    stop = [e for e in events if e["type"] == "stop"][0]
    assert report["run"]["steps_run"] == stop["step"] == truth.last_step
    assert report["run"]["stop_reason"] == "all components frozen"
    assert report["run"]["planned_steps"] == 200
    total = report["flops"]["total"]
    assert 0 < total["saved"] < total["saved_planned"] < total["baseline_planned"]
    assert total["saved"] == pytest.approx(sum(m["saved"] for m in report["flops"]["modalities"].values()))
    assert "weight-gradient" in report["flops"]["model"]


def test_pngs_are_valid_and_readable(reported):
    _, out, _ = reported
    for name in FIGURES:
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG"
            w, h = im.size
            assert 800 <= w <= 3000 and 400 <= h <= 3000, (name, im.size)
            assert round(im.info["dpi"][0]) == 150


def test_html_is_self_contained(reported):
    _, out, _ = reported
    text = (out / "report.html").read_text()
    assert "http://" not in text and "https://" not in text
    images = re.findall(r'<img[^>]*src="([^"]*)"', text)
    assert len(images) == len(FIGURES) and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)
    assert "easyvqa" in text and "grad_change" in text  # config.yaml is shown
    for modality in ("vision", "projector", "language"):
        assert f"<td>{modality}</td>" in text


def test_markdown_links_figures(reported):
    _, out, _ = reported
    text = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in text
    assert "| vision |" in text


def test_printed_summary(tmp_path, capsys):
    make_run(tmp_path / "run", total_steps=60, seed=1)
    assert main(["report", str(tmp_path / "run"), "--format", "json"]) == 0
    printed = capsys.readouterr().out
    for word in ("vision", "projector", "language", "total", "FLOPs saved"):
        assert word in printed


def test_html_neutralizes_urls_from_config(tmp_path):
    make_run(tmp_path / "run", total_steps=60, seed=1)
    cfg = tmp_path / "run" / "config.yaml"
    cfg.write_text(cfg.read_text() + "data: https://example.org/vqa\n")
    write_report(tmp_path / "run", tmp_path / "out", ["html"])
    text = (tmp_path / "out" / "report.html").read_text()
    assert "https://" not in text and "example.org/vqa" in text


def test_not_a_run_folder(tmp_path, capsys):
    (tmp_path / "stuff.txt").write_text("hello")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a vlm-grades run folder" in err and len(err.strip().splitlines()) == 1
    assert main(["report", str(tmp_path / "missing")]) == 2
    with pytest.raises(UserError):
        RunData.load(tmp_path)


def test_broken_registry_and_bad_format(tmp_path, capsys):
    make_run(tmp_path / "run", total_steps=60)
    assert main(["report", str(tmp_path / "run"), "--format", "pdf"]) == 2
    assert "--format" in capsys.readouterr().err
    (tmp_path / "run" / "components.json").write_text("{not json")
    assert main(["report", str(tmp_path / "run")]) == 2
    assert "components.json" in capsys.readouterr().err


def test_report_folder_written_to_given_out(reported):
    run, out, _ = reported
    assert Path(out).is_dir() and not (run / "report").exists()


def test_csv_on_request(tmp_path):
    truth = make_run(tmp_path / "run", total_steps=60, seed=2)
    _, written = write_report(tmp_path / "run", tmp_path / "out", ["csv"])
    assert [p.name for p in written] == ["components.csv"]
    import csv
    rows = list(csv.DictReader(open(tmp_path / "out" / "components.csv")))
    assert len(rows) == 30
    assert {r["name"]: int(r["freeze_step"]) for r in rows if r["freeze_step"]} == truth.freeze_steps
