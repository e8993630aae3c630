"""`vlm-grades report` on a real short nanoVLM training run (about a minute on 2 CPU cores)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from vlm_grades.cli import main
from vlm_grades.report.figures import FIGURES
from vlm_grades.training.run_folder import read_jsonl


@pytest.mark.slow
def test_report_on_real_run(tmp_path, capsys):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vlm_grades", "train", "--model", "nanovlm", "--steps", "24", "--batch-size", "16",
           "--max-samples", "256", "--eval-max-samples", "16", "--alpha", "0.25", "--tau-vision", "1",
           "--tau-projector", "1e-12", "--tau-language", "3e-5", "--out", str(run), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "vision" in printed and "language" in printed
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "report.html", *FIGURES}
    report = json.loads((out / "report.json").read_text())
    events = list(read_jsonl(run / "events.jsonl"))
    freezes = {e["component"]: e["step"] for e in events if e["type"] == "freeze"}
    assert freezes  # tau-vision 1 freezes the whole tower right after the grace period
    assert {c["name"]: c["freeze_step"] for c in report["components"] if c["freeze_step"] is not None} == freezes
    vision = report["modalities"]["vision"]
    assert vision["frozen"] == vision["components"] and vision["flops_saved"] > 0
    finalize = [e for e in events if e["type"] == "finalize"]
    assert {e["modality"]: e["step"] for e in finalize} == {
        m: s["finalize_step"] for m, s in report["modalities"].items() if s["finalize_step"] is not None}
    assert report["run"]["steps_run"] == 24 and report["run"]["status"] == "finished"
    assert report["run"]["evals"] and report["flops"]["total"]["saved"] > 0
    for name in FIGURES:
        with Image.open(out / name) as im:
            im.verify()
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and html.count("data:image/png;base64,") == len(FIGURES)
    assert main(["report", "--live", str(run)]) == 0
    assert main(["compare", str(run), str(run), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.png").exists()
