"""Two-process DDP training on the CPU (gloo): GradES freezes mid-run, the model is re-wrapped over the parameters
that still train, and both processes end with the same frozen set and bit-identical weights; a DDP run resumed from
a checkpoint ends as the uninterrupted one. Each process writes rank-<i>.json (VLM_GRADES_RANK_STATE)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RANK_ENV as ENV, check_ok, free_port, rank_states, torchrun
from vlm_grades.training.run_folder import RunFolder

# 256 samples over 2 processes, 4 per micro-batch, 2 micro-batches per step: 16 steps per epoch
RUN = ["--max-samples", "256", "--batch-size", "4", "--grad-accum", "2", "--steps", "40", "--checkpoint-every",
       "10", "--no-progress", "--seed", "5", "--mix-fraction", "0",
       "--alpha", "0.3", "--rho", "0.3", "--smoothing", "0", "--auto-window", "5", "--schedule", "cosine",
       "--warmup", "0.05"]


def accelerate_launch(*argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "vlm_grades", "train", *argv]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


def freezes(run: Path) -> list[tuple]:
    return [(e["type"], e["step"], e.get("component") or e.get("modality"))
            for e in RunFolder(run).read("events") if e["type"] in ("freeze", "finalize")]


@pytest.mark.slow
def test_two_processes_freeze_alike_and_end_identical(tmp_path):
    out = tmp_path / "run"
    done = torchrun(*RUN, "--eval-split", "test", "--eval-max-samples", "16", "--out", str(out),
                    script="record_decisions.py")
    check_ok(done)
    # each rank's own statistics and decisions, before rank 0's are broadcast, are the same
    alone = [[json.loads(line) for line in (out / f"decisions-rank-{r}.jsonl").read_text().splitlines()]
             for r in range(2)]
    assert len(alone[0]) >= 30 and alone[0] == alone[1] and any(any(d["flags"]) for d in alone[0])
    r0, r1 = rank_states(out)
    assert (r0["rank"], r1["rank"], r0["processes"]) == (0, 1, 2)
    assert r0["step"] == r1["step"] == 40
    assert r0["frozen"], "GradES froze nothing: the test does not exercise the re-wrap"
    assert r0["frozen"] == r1["frozen"]                      # same matrices, same steps
    assert r0["trainable"] == r1["trainable"]
    assert r0["weights_sha256"] == r1["weights_sha256"]

    run = RunFolder.open_existing(out)
    logged = {(e["component"], e["step"]) for e in run.read("events") if e["type"] == "freeze"}
    assert logged == set(r0["frozen"].items())
    assert min(r0["frozen"].values()) < 40                   # froze mid-run and kept training after it
    metrics = run.read("metrics")
    assert [m["step"] for m in metrics] == list(range(1, 41))  # one writer: no line twice
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    types = [e["type"] for e in run.read("events")]
    assert types.count("start") == 1 and types.count("end") == 1 and types.count("eval") == 1
    # every 10 steps and at the end of the run (step 40, where a resume with --extend continues), the newest two kept
    assert sorted(p.name for p in run.checkpoints.glob("step-*")) == ["step-30", "step-40"]


@pytest.mark.slow
def test_resumed_ddp_run_ends_as_the_uninterrupted_one(tmp_path):
    out = tmp_path / "run"
    check_ok(accelerate_launch(*RUN, "--checkpoint-every", "4", "--keep-checkpoints", "20", "--eval-split=",
                               "--out", str(out)))
    reference, history = rank_states(out), freezes(out)
    assert reference[0]["weights_sha256"] == reference[1]["weights_sha256"]
    # resume from a checkpoint with matrices frozen before it and more freezing after it
    steps = sorted({step for _, step, _ in history})
    between = [s for s in range(4, 40, 4) if steps[0] <= s < steps[-1]]
    assert between, f"freezes at steps {steps} leave no checkpoint between the first and the last"
    point = between[-1]

    # back to that step: drop the newer checkpoints and the results, resume with the saved configuration
    for path in (out / "checkpoints").glob("step-*"):
        if int(path.name.split("-")[1]) > point:
            shutil.rmtree(path)
    (out / "checkpoints" / "latest").unlink()
    shutil.rmtree(out / "final")
    for name in ("rank-0.json", "rank-1.json", "summary.json"):
        (out / name).unlink()
    done = torchrun("--resume", "--out", str(out), "--no-progress")
    check_ok(done)
    assert f"step-{point} at step {point}" in done.stdout
    resumed = rank_states(out)
    assert resumed[0]["weights_sha256"] == resumed[1]["weights_sha256"] == reference[0]["weights_sha256"]
    assert resumed[0]["frozen"] == resumed[1]["frozen"] == reference[0]["frozen"]
    assert freezes(out) == history


@pytest.mark.slow
def test_wsd_under_ddp_every_process_starts_the_cooldown_and_stops_at_the_same_step(tmp_path):
    """Each process decides "converged" from the all-reduced statistics (nothing is broadcast): both start the
    decay after step 9 (grace period 6, a window of 4 checks after it) and stop at 18, with the same weights."""
    out = tmp_path / "run"
    done = torchrun("--max-samples", "64", "--batch-size", "4", "--steps", "100", "--eval-split=", "--no-progress",
                    "--seed", "3", "--schedule", "wsd", "--warmup", "5", "--cooldown", "1.0", "--alpha", "6",
                    "--converge-window", "4", "--converge-tolerance", "100", "--converge-patience", "1",
                    "--out", str(out))
    check_ok(done)
    r0, r1 = rank_states(out)
    assert r0["decay_start"] == r1["decay_start"] == 9
    assert r0["step"] == r1["step"] == 18 and r0["weights_sha256"] == r1["weights_sha256"]
    decay = [e for e in RunFolder(out).read("events") if e["type"] == "decay"]
    assert [(e["step"], e["until"]) for e in decay] == [(9, 18)]


@pytest.mark.slow
def test_everything_frozen_stops_cleanly_under_ddp(tmp_path):
    """Every matrix frozen and every modality finalized at once: nothing left for DDP to wrap."""
    out = tmp_path / "run"
    done = torchrun("--max-samples", "64", "--batch-size", "4", "--steps", "20", "--eval-split=", "--no-progress",
                    "--tau", "1e9", "--alpha", "3", "--patience", "1", "--out", str(out))
    check_ok(done)
    r0, r1 = rank_states(out)
    assert r0["step"] == r1["step"] == 3 and r0["trainable"] == r1["trainable"] == []
    assert r0["frozen"] == r1["frozen"] and r0["weights_sha256"] == r1["weights_sha256"]
    assert "all components frozen" in done.stdout


@pytest.mark.slow
def test_qwen_lora_under_ddp(tmp_path, tiny_qwen_dir):
    """The PEFT-wrapped Qwen2.5-VL under DDP: GradES freezes adapters mid-run, ranks stay identical."""
    from fixtures_data import write_vqav2

    model = tiny_qwen_dir
    data = write_vqav2(tmp_path / "vqa", split="val", image_ids=(1, 2, 3, 4, 5, 6, 7, 8))
    out = tmp_path / "run"
    done = torchrun("--model", "qwen2.5-vl", "--model-path", str(model), "--task", "vqav2", "--data", data["source"],
                    "--split", "val", "--batch-size", "2", "--steps", "12", "--lr", "1e-2", "--eval-split=",
                    "--no-progress", "--lora", "--lora-targets", "both", "--smoothing", "0", "--auto-window", "5",
                    "--alpha", "0.3", "--out", str(out))
    check_ok(done)
    r0, r1 = rank_states(out)
    assert r0["frozen"] and r0["trainable"], (r0["frozen"], r0["trainable"])   # some adapters frozen, some not
    assert r0["frozen"] == r1["frozen"] and r0["trainable"] == r1["trainable"]
    assert r0["weights_sha256"] == r1["weights_sha256"]
