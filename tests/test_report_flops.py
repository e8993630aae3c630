"""The FLOPs estimate equals a hand computation for a tiny run written record by record."""
from __future__ import annotations

import pytest
import yaml

from vlm_grades.report import flops, summary
from vlm_grades.report.run_data import RunData
from vlm_grades.training.run_folder import RunFolder


def tiny_run(path, metrics_every: int = 1, ended: bool = True):
    """vision P=100 (one matrix n=60), projector P=20 (n=20), language P=200 (n=50, n=80); 10 planned steps,
    stopped at 6. Rows/step: vision 4, projector 2, language 3 then 5 from step 5."""
    path.mkdir(parents=True)
    run = RunFolder(path, create=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"steps": 10}))
    run.write_json("components.json", {"architecture": "nanovlm", "modalities": {
        "vision": {"parameters": 100, "monitored_parameters": 60},
        "projector": {"parameters": 20, "monitored_parameters": 20},
        "language": {"parameters": 200, "monitored_parameters": 130}}, "components": [
        {"name": "v.fc1", "modality": "vision", "layer": 0, "kind": "mlp.fc1", "numel": 60},
        {"name": "mp.proj", "modality": "projector", "layer": 0, "kind": "proj", "numel": 20},
        {"name": "l.q", "modality": "language", "layer": 0, "kind": "attn.q", "numel": 50},
        {"name": "l.up", "modality": "language", "layer": 0, "kind": "mlp.up", "numel": 80}]})
    run.append("events", {"type": "start", "step": 0, "time": 0.0, "total_steps": 10, "resumed_from": None})
    for step in range(1, 7):
        if step % metrics_every == 0:
            run.append("metrics", {"step": step, "loss": 1.0 / step, "wall": step * 1.0,
                                   "tokens": {"vision": 4, "projector": 2, "language": 3 if step <= 4 else 5}})
        run.append("convergence", {"step": step, "metric": "grad_change", "values": {"v.fc1": 1.0 / step},
                                   "tau": {"v.fc1": 0.4}, "frozen": []})
        if step == 2:
            run.append("events", {"type": "freeze", "step": 2, "component": "v.fc1", "modality": "vision",
                                  "value": 0.3, "tau": 0.4})
        if step == 3:
            run.append("events", {"type": "freeze", "step": 3, "component": "l.q", "modality": "language",
                                  "value": 0.1, "tau": 0.4})
        if step == 4:
            run.append("events", {"type": "finalize", "step": 4, "modality": "vision", "parameters": 100})
    run.append("events", {"type": "stop", "step": 6, "reason": "test"})
    if ended:
        run.append("events", {"type": "end", "step": 6, "wall_time": 6.0, "stop_reason": "test"})
    return RunData.load(path)


def test_flops_match_hand_computation(tmp_path):
    est = flops.estimate(tiny_run(tmp_path / "run"))
    v, p, lang = (est["modalities"][m] for m in ("vision", "projector", "language"))
    # baseline: 6 P r + 10 P per step
    assert v["baseline"] == 6 * (6 * 100 * 4 + 10 * 100)
    assert p["baseline"] == 6 * (6 * 20 * 2 + 10 * 20)
    assert lang["baseline"] == 4 * (6 * 200 * 3 + 10 * 200) + 2 * (6 * 200 * 5 + 10 * 200)
    # vision: v.fc1 frozen at 2 saves 2nr + 10n on steps 3-4; finalized at 4: 4Pr + 10P on steps 5-6
    assert v["saved"] == 2 * (2 * 60 * 4 + 10 * 60) + 2 * (4 * 100 * 4 + 10 * 100)
    assert p["saved"] == 0
    # language: l.q frozen at 3 saves on steps 4 (r=3), 5 and 6 (r=5)
    assert lang["saved"] == (2 * 50 * 3 + 500) + 2 * (2 * 50 * 5 + 500)
    total = est["total"]
    assert total["baseline"] == 20400 + 2640 + 38400
    assert total["saved"] == 7360 + 0 + 2800
    assert total["actual"] == total["baseline"] - total["saved"]
    # 4 planned steps never run, at the mean baseline cost per step run
    assert est["remaining_steps"] == 4
    assert total["baseline_planned"] == pytest.approx(61440 + 4 * (3400 + 440 + 6400))
    assert total["saved_planned"] == pytest.approx(10160 + 4 * (3400 + 440 + 6400))
    assert v["saved_fraction"] == pytest.approx(7360 / 20400)


def test_sparse_metrics_stand_for_the_steps_since_the_previous_line(tmp_path):
    run = tiny_run(tmp_path / "run", metrics_every=2)
    assert list(flops.rows_per_step(run, "language", 6)) == [3, 3, 3, 3, 5, 5]
    assert list(flops.rows_per_step(run, "vision", 8)) == [4] * 8
    assert flops.estimate(run)["total"]["saved"] == 10160


def test_running_run_has_no_planned_saving(tmp_path):
    est = flops.estimate(tiny_run(tmp_path / "run", ended=False))  # a stop event without end still counts
    assert est["remaining_steps"] == 4
    (tmp_path / "run" / "events.jsonl").write_text(
        "\n".join(l for l in (tmp_path / "run" / "events.jsonl").read_text().splitlines() if '"stop"' not in l))
    est = flops.estimate(RunData.load(tmp_path / "run"))
    assert est["remaining_steps"] is None and est["total"]["saved_planned"] is None
    assert est["total"]["saved"] == 10160


def test_summary_uses_the_estimate(tmp_path):
    report = summary.build(tiny_run(tmp_path / "run"))
    assert report["modalities"]["vision"]["flops_saved"] == 7360
    assert report["modalities"]["vision"]["finalize_step"] == 4
    assert report["modalities"]["language"]["frozen"] == 1
    assert report["modalities"]["language"]["frozen_parameter_fraction"] == pytest.approx(50 / 130)
    assert report["run"]["planned_steps"] == 10 and report["run"]["steps_run"] == 6
