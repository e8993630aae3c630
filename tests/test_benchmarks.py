"""Smoke tests: each benchmark script runs end to end at a minimal size and writes its results."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_end_to_end_minimal(tmp_path):
    e2e = load("end_to_end")
    results = tmp_path / "results"
    assert e2e.main(["--presets", "tiny", "--tasks", "easyvqa", "--seeds", "1", "--steps", "4",
                     "--modes", "none", "classic", "grades", "official", "snr",
                     "--max-samples", "256", "--eval-max-samples", "16", "--batch-size", "8",
                     "--calibration-val-samples", "16", "--threads", "0", "--out", str(tmp_path / "runs"),
                     "--results", str(results), "--tag", "smoke"]) == 0
    data = json.loads((results / "end_to_end-smoke.json").read_text())
    group = data["groups"][0]
    assert {r["mode"] for r in group["runs"]} == {"none", "classic", "grades", "official", "snr"}
    assert next(r for r in group["runs"] if r["mode"] == "snr")["grades"]["metric"] == "grad_snr"
    assert all(r["threads"] >= 1 for r in group["runs"]) and "speedup_wall_median" in group["aggregate"]["grades"]
    assert set(group["official_calibration"]["tau"]) == {"vision", "language"}
    for r in group["runs"]:
        assert 1 <= r["steps"] <= 4 and r["flops"] > 0 and r["score"] is not None
        assert r["loop_wall"] >= r["train_wall"] * 0.99
    classic = next(r for r in group["runs"] if r["mode"] == "classic")
    assert classic["validation_s"] > 0
    assert group["aggregate"]["none"]["speedup_wall"] == pytest.approx(1.0)
    # the table's figures are the run folders' own: steps and score from summary.json, FLOPs from the report's
    # estimate, speedups the ratios of `none` over the mode (one seed: one pair)
    from vlm_grades.report import flops
    from vlm_grades.report.run_data import RunData

    by_mode = {r["mode"]: r for r in group["runs"]}
    for r in group["runs"]:
        summary = json.loads((Path(r["run"]) / "summary.json").read_text())
        assert (r["steps"], r["score"]) == (summary["steps"], summary["eval"]["score"])
        assert r["flops"] == flops.estimate(RunData.load(r["run"]))["total"]["actual"]
    for mode in ("grades", "official", "snr"):
        agg, none, run = group["aggregate"][mode], by_mode["none"], by_mode[mode]
        assert agg["speedup_wall"] == pytest.approx(none["loop_wall"] / run["loop_wall"])
        assert agg["speedup_flops"] == pytest.approx(none["flops"] / run["flops"])
        assert agg["score_delta"] == agg["worst_delta"] == pytest.approx(run["score"] - none["score"])
    assert "| grades |" in (results / "end_to_end-smoke.md").read_text()

    # a second process runs seed 1, official with the first one's thresholds (no calibration run);
    # --report merges both into one table over seeds 0 and 1
    second = ["--presets", "tiny", "--tasks", "easyvqa", "--modes", "none", "grades", "official", "--seeds", "1",
              "--first-seed", "1", "--max-samples", "256", "--eval-max-samples", "16", "--batch-size", "8",
              "--threads", "0", "--out", str(tmp_path / "runs2"), "--results", str(results), "--tag", "smoke2",
              "--official-from", str(results / "end_to_end-smoke.json")]
    with pytest.raises(SystemExit, match="no official calibration for tiny / easyvqa at these sizes"):
        e2e.main(second + ["--steps", "5"])
    assert e2e.main(second + ["--steps", "4"]) == 0
    assert not (tmp_path / "runs2" / "tiny-easyvqa" / "official-calibration").exists()
    first_tau = json.loads((results / "end_to_end-smoke.json").read_text())["groups"][0]["official_calibration"]["tau"]
    official = json.loads((results / "end_to_end-smoke2.json").read_text())["groups"][0]
    assert official["official_calibration"]["tau"] == first_tau
    assert (tmp_path / "runs2" / "tiny-easyvqa" / "official-seed1" / "config.yaml").exists()
    merged = e2e.merge_results([results / "end_to_end-smoke.json", results / "end_to_end-smoke2.json"])
    group = merged["groups"][0]
    assert group["seeds"] == [0, 1] and "official_calibration" in group
    assert sorted((r["mode"], r["seed"]) for r in group["runs"] if r["mode"] in ("none", "grades")) == \
        [("grades", 0), ("grades", 1), ("none", 0), ("none", 1)]
    assert e2e.main(["--report", str(results / "end_to_end-smoke.json"), str(results / "end_to_end-smoke2.json"),
                     "--results", str(results), "--tag", "merged"]) == 0
    assert "| none | 2 |" in (results / "end_to_end-merged.md").read_text()


@pytest.mark.slow
def test_step_cost_minimal(tmp_path):
    sc = load("step_cost")
    results = tmp_path / "results"
    assert sc.main(["--presets", "tiny", "--reps", "1", "--steps", "1", "--batch-size", "4", "--threads", "0",
                    "--scenarios", "vision matrices frozen", "vision finalized", "vision + projector cached",
                    "--results", str(results), "--tag", "smoke"]) == 0
    data = json.loads((results / "step_cost-smoke.json").read_text())
    scen = {s["scenario"]: s for s in data["presets"][0]["scenarios"]}
    assert scen["vision finalized"]["finalized"] == ["vision"]
    assert 0 < scen["vision finalized"]["ideal_ratio"] < scen["vision matrices frozen"]["ideal_ratio"] < 1
    assert scen["vision + projector cached"]["ideal_ratio"] < scen["vision finalized"]["ideal_ratio"]
    assert all(s["ratio"] > 0 for s in scen.values())


@pytest.mark.slow
def test_feature_cache_e2e_minimal(tmp_path):
    bench = load("feature_cache_e2e")
    results = tmp_path / "results"
    assert bench.main(["--scenarios", "freeze", "qwen-lora", "--seeds", "1", "--steps", "12",
                       "--eval-max-samples", "8", "--results", str(results), "--tag", "smoke"]) == 0
    data = json.loads((results / "feature_cache_e2e-smoke.json").read_text())
    runs = {(r["scenario"], r["cache"]): r for r in data["runs"]}
    assert set(runs) == {(s, c) for s in ("freeze", "qwen-lora") for c in ("off", "default")}
    assert runs[("freeze", "off")]["hit_rate"] is None and runs[("freeze", "default")]["hit_rate"] > 0
    assert runs[("freeze", "default")]["cache_events"][0][:2] == (0, "on") or \
        runs[("freeze", "default")]["cache_events"][0][:2] == [0, "on"]
    assert "| freeze | 1 |" in (results / "feature_cache_e2e-smoke.md").read_text()
