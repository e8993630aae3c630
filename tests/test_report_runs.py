"""Reports render for runs that stopped early, froze nothing, were resumed, or are still running."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from fixtures_run import make_run
from vlm_grades.report.build import write_report
from vlm_grades.report.figures import FIGURES
from vlm_grades.report.run_data import RunData

NEVER = {"vision": 1e-9, "projector": 1e-9, "language": 1e-9}

VARIANTS = {
    # name: (make_run kwargs, expectations)
    "no_freeze_sparse_logs": dict(total_steps=80, tau=NEVER, log_every=10),
    "resumed_without_truncation": dict(crash_at=130, resume_from=100, seed=4),
    "running_torn_tail": dict(max_steps=90, running=True, torn_tail=True, seed=5),
    "killed_before_checks": dict(total_steps=200, max_steps=3, running=True, torn_tail=True),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_renders(tmp_path, name):
    truth = make_run(tmp_path / "run", vision_layers=1, language_layers=2, **VARIANTS[name])
    report, written = write_report(tmp_path / "run", tmp_path / "out", ["png", "json", "html"])
    assert {p.name for p in written} == {"report.json", "report.html", *FIGURES}
    for p in written:
        if p.suffix == ".png":
            with Image.open(p) as im:
                im.verify()
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["run"]["steps_run"] == truth.last_step
    assert {c["name"]: c["freeze_step"] for c in saved["components"] if c["freeze_step"]} == truth.freeze_steps
    assert saved["run"]["status"] == ("finished" if truth.ended else "running or interrupted")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "http://" not in html and "https://" not in html


def test_no_freeze_saves_nothing(tmp_path):
    make_run(tmp_path / "run", total_steps=80, tau=NEVER, log_every=10)
    report, _ = write_report(tmp_path / "run", tmp_path / "out", ["json"])
    assert report["flops"]["total"]["saved"] == 0 and report["flops"]["total"]["saved_planned"] == 0
    for s in report["modalities"].values():
        assert s["frozen"] == 0 and s["first_freeze_step"] is None and s["median_freeze_step"] is None
    assert report["run"]["stop_reason"] == "max steps"


def test_resumed_run_keeps_the_latest_attempt(tmp_path):
    truth = make_run(tmp_path / "run", crash_at=130, resume_from=100, seed=4)
    run = RunData.load(tmp_path / "run")
    steps = [m["step"] for m in run.metrics]
    assert steps == sorted(set(steps)) and steps[-1] == truth.last_step
    assert [c["step"] for c in run.checks] == sorted({c["step"] for c in run.checks})
    assert run.freeze_steps == truth.freeze_steps
    raw = (tmp_path / "run" / "events.jsonl").read_text().count('"type": "freeze"')
    assert raw > len(truth.freeze_steps)  # the crashed attempt logged freezes that the resume redid
    assert summary_resumed(tmp_path) == 1


def summary_resumed(tmp_path) -> int:
    report, _ = write_report(tmp_path / "run", tmp_path / "out2", ["json"])
    return report["run"]["resumed"]


def test_running_run_has_no_planned_saving_and_skips_torn_lines(tmp_path):
    truth = make_run(tmp_path / "run", max_steps=90, running=True, torn_tail=True, seed=5)
    report, _ = write_report(tmp_path / "run", tmp_path / "out", ["json"])
    assert report["run"]["steps_run"] == 90 == truth.last_step  # the torn step 99999 line is ignored
    assert report["flops"]["remaining_steps"] is None and report["flops"]["total"]["saved_planned"] is None
    assert report["run"]["stop_reason"] is None and report["run"]["wall_time"] > 0
