"""`--schedule wsd` in the training loop (issue 23): GradES's "converged" starts the cooldown, the run ends when
the cooldown does, and a run resumed from a checkpoint of any phase (warm-up, stable, cooldown; one of them
after a SIGKILL during the cooldown) ends bit for bit where the uninterrupted run ends."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vlm_grades.training.run_folder import RunFolder
from conftest import ENV, assert_same_run, cli, killed_at

# warm-up steps 1-5, stable from 6; the grace period ends at step 6, and the converge window of 4 checks after
# it fills at step 9, where a tolerance nothing exceeds says "converged": the decay starts after step 9 and
# lasts 9 steps (cooldown 1.0),
# so the run stops at 18 of its 100-step cap. Checkpoints at 4 (warm-up), 8 (stable), 12 and 16 (cooldown).
WSD = ["--max-samples", "64", "--batch-size", "8", "--steps", "100", "--checkpoint-every", "4",
       "--keep-checkpoints", "10", "--eval-split=", "--no-progress", "--seed", "2", "--schedule", "wsd",
       "--warmup", "5", "--cooldown", "1.0", "--alpha", "6", "--converge-window", "4",
       "--converge-tolerance", "100", "--converge-patience", "1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wsd") / "reference"
    done = subprocess.run(cli(*WSD, "--out", str(out)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_convergence_starts_the_cooldown_and_its_end_stops_the_run(reference):
    run = RunFolder(reference)
    events = run.read("events")
    decay = [e for e in events if e["type"] == "decay"]
    assert len(decay) == 1 and decay[0]["step"] == 9 and decay[0]["until"] == 18, decay
    assert "converged at step 9" in decay[0]["reason"]
    assert [e["modality"] for e in events if e["type"] == "converged"][-1] == "model"
    stop = [e for e in events if e["type"] == "stop"][-1]
    assert stop["step"] == 18 and stop["reason"].startswith("cooldown done (9 steps after step 9")
    lr = [r["lr"]["language"] for r in run.read("metrics")]      # logged after each step: the next step's rate
    peak = max(lr)
    assert len(lr) == 18 and lr[4:9] == [peak] * 5                # stable after the warm-up
    assert lr[-2] == pytest.approx(0.1 * peak)                    # the last step (18) ran at min_ratio
    assert all(a > b for a, b in zip(lr[8:17], lr[9:17]))         # steps 10-18: falling through the cooldown


@pytest.mark.slow
@pytest.mark.parametrize("step", [4, 8, 12])
def test_resume_from_each_phase_ends_where_the_uninterrupted_run_ends(reference, tmp_path, step):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "final")
    for p in (run / "checkpoints").iterdir():
        if p.name.startswith("step-") and int(p.name.split("-")[1]) > step:
            shutil.rmtree(p)
    (run / "checkpoints" / "latest").unlink(missing_ok=True)
    again = subprocess.run(cli("--resume", "--out", str(run), "--no-progress"), env=ENV, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"step-{step}" in again.stdout
    assert_same_run(reference, run)


@pytest.mark.slow
def test_killed_during_the_cooldown_resumes_bit_for_bit(reference, tmp_path):
    resumed = tmp_path / "resumed"
    killed_at("checkpoint:16", resumed, WSD)
    again = subprocess.run(cli("--resume", "--out", str(resumed), "--no-progress"), env=ENV, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and ("step-12" in again.stdout or "step-16" in again.stdout)
    assert_same_run(reference, resumed)


def test_the_cap_changes_nothing_before_the_stop(reference, tmp_path):
    """--steps is a cap: the same run capped at 40 instead of 100 steps converges, cools down and stops at the
    same steps with the same weights, bit for bit (its only cap-dependent decision, the latest decay start, is
    at step 33 here, after the convergence at 9)."""
    capped = tmp_path / "capped"
    i = WSD.index("--steps")
    args = [*WSD[:i + 1], "40", *WSD[i + 2:]]
    done = subprocess.run(cli(*args, "--out", str(capped)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(reference, capped)


def test_replay_says_where_the_cooldown_would_end(reference):
    from vlm_grades.report.replay import replay

    result = replay(reference)
    assert result["converged_step"] == 9 and result["cooldown_end"] == 18
