"""Checkpoints and `--resume`: a run killed while writing a checkpoint resumes from the previous complete one and
ends exactly where an uninterrupted run ends (weights bit for bit, the same freezes at the same steps); torn
checkpoint folders are never picked; `--resume` refuses a finished run and starts afresh a run that never wrote a
checkpoint; an early stop leaves a checkpoint at its step."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ENV, assert_same_run, assert_same_weights, cli, history, killed_at, one_line_error
from vlm_grades.training.checkpoint import STATE_FILE, latest_checkpoint
from vlm_grades.cli import main
from vlm_grades.training.run_folder import RunFolder

# 256 samples / batch 8 = 32 steps per epoch, so the 40 steps cross an epoch boundary; GradES (auto thresholds,
# grace 12 steps) freezes matrices both before and after step 20
RUN = ["--max-samples", "256", "--batch-size", "8", "--steps", "40", "--checkpoint-every", "10", "--eval-split=",
       "--no-progress", "--seed", "3", "--mix-fraction", "0",
       "--alpha", "0.3", "--rho", "0.3", "--smoothing", "0", "--auto-window", "5"]
SMALL = ["--max-samples", "64", "--batch-size", "8", "--steps", "12", "--checkpoint-every", "4", "--eval-split=",
         "--no-progress", "--seed", "1", "--alpha", "4", "--patience", "1"]


@pytest.mark.slow
def test_killed_while_checkpointing_resumes_to_the_same_end(tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    done = subprocess.run(cli(*RUN, "--out", str(reference)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    freezes = [e for e in RunFolder(reference).read("events") if e["type"] == "freeze"]
    assert any(e["step"] <= 20 for e in freezes) and any(e["step"] > 20 for e in freezes), \
        f"the test needs freezes before and after the resume point; got steps {[e['step'] for e in freezes]}"

    killed_at("checkpoint:30", resumed, RUN)            # inside the write of checkpoint 30
    checkpoints = resumed / "checkpoints"
    torn = [p for p in checkpoints.iterdir() if p.name.startswith(".tmp-step-30-")]
    complete = latest_checkpoint(checkpoints)
    assert complete is not None and (complete / STATE_FILE).exists()
    assert torn and not (torn[0] / STATE_FILE).exists() and complete.name == "step-20"
    assert not (checkpoints / "step-30").exists() and not (resumed / "final").exists()

    # only --out and --resume: every other setting comes from the run's config.yaml
    again = subprocess.run(cli("--resume", "--out", str(resumed), "--no-progress"), env=ENV, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {complete}" in again.stdout
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".tmp")]   # the torn folder is cleaned up
    starts = [e for e in RunFolder(resumed).read("events") if e["type"] == "start"]
    assert [s["resumed_from"] for s in starts] == [None, int(complete.name.split("-")[1])]
    assert_same_run(reference, resumed)


def test_torn_checkpoints_are_never_picked(tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(["train", *SMALL, "--out", str(reference)]) == 0
    assert main(["train", *SMALL, "--out", str(run)]) == 0
    root = run / "checkpoints"
    assert latest_checkpoint(root) == root / "step-12"          # the end of every run is checkpointed
    shutil.rmtree(root / "step-12")                             # as if killed while writing it
    assert latest_checkpoint(root) == root / "step-8"

    # a checkpoint folder without its state file (renamed by hand, or copied half-way), a torn temporary folder
    # of a killed process, and `latest` naming the torn one
    (root / "step-11").mkdir()
    shutil.copy(root / "step-8" / "model.pt", root / "step-11" / "model.pt")
    tmp = root / ".tmp-step-12-999999"
    tmp.mkdir()
    (tmp / "model.pt").write_bytes(b"\0" * 10)
    (root / "latest").write_text("step-11")
    assert latest_checkpoint(root) == root / "step-8"
    (root / "latest").write_text("")                      # a torn pointer
    assert latest_checkpoint(root) == root / "step-8"
    (root / "latest").write_text("step-99")               # a pointer to nothing
    assert latest_checkpoint(root) == root / "step-8"
    (root / "latest").unlink()
    assert latest_checkpoint(root) == root / "step-8"

    # resuming the finished run from step 8 replays steps 9-12 and ends exactly as the uninterrupted run
    shutil.rmtree(run / "final")
    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0
    assert_same_run(reference, run)


def files(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


@pytest.mark.parametrize("checkpoint_every", ["4", "500"])
def test_resume_refuses_a_finished_run(tmp_path, capsys, checkpoint_every):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--checkpoint-every", checkpoint_every, "--out", str(run)]) == 0
    before = files(run)
    capsys.readouterr()

    assert main(["train", "--resume", "--out", str(run), "--steps", "20"]) == 2
    captured = capsys.readouterr()
    assert "finished" in one_line_error(captured.err, str(run)).replace(str(run), "")
    assert "resumed" not in captured.out
    assert files(run) == before                       # final/, eval, logs and checkpoints untouched


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    """A run killed before its first checkpoint: `--resume` starts it again from step 0, says so, and ends
    exactly as an uninterrupted run."""
    reference, run = tmp_path / "reference", tmp_path / "run"
    args = [*SMALL, "--checkpoint-every", "500"]
    done = subprocess.run(cli(*args, "--out", str(reference)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    killed_at("step:1", run, args)
    assert not (run / "final").exists() and latest_checkpoint(run / "checkpoints") is None

    again = subprocess.run(cli("--resume", "--out", str(run), "--no-progress"), env=ENV, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "no complete checkpoint" in again.stdout and "afresh" in again.stdout, again.stdout
    starts = [e for e in RunFolder(run).read("events") if e["type"] == "start"]
    assert [s["resumed_from"] for s in starts] == [None]   # the killed attempt's logs are gone
    assert_same_run(reference, run)


def test_resume_errors_are_one_line(tmp_path, capsys):
    # not a run folder at all
    missing = tmp_path / "nothing-here"
    assert main(["train", "--resume", "--out", str(missing)]) == 2
    one_line_error(capsys.readouterr().err, str(missing))
    assert not missing.exists()

    # --resume needs --out
    assert main(["train", "--resume"]) == 2
    one_line_error(capsys.readouterr().err, "--resume", "--out")


# GradES stops at step 9 of 30 (60% of the matrices frozen); periodic checkpoints at 4 and 8
EARLY = ["--max-samples", "64", "--batch-size", "8", "--steps", "30", "--checkpoint-every", "4", "--eval-split=",
         "--no-progress", "--seed", "1", "--mix-fraction", "0", "--alpha", "6", "--patience", "1", "--smoothing", "0",
         "--auto-window", "3", "--rho", "0.5", "--stop-fraction", "0.6"]


def test_an_early_stop_writes_a_checkpoint_at_the_stop_step_that_resumes(tmp_path, capsys):
    run, reference = tmp_path / "run", tmp_path / "reference"
    assert main(["train", *EARLY, "--out", str(run)]) == 0
    (stop,) = [e for e in RunFolder(run).read("events") if e["type"] == "stop"]
    assert 4 < stop["step"] < 30 and "frozen" in stop["reason"], stop
    checkpoint = latest_checkpoint(run / "checkpoints")
    assert checkpoint == run / "checkpoints" / f"step-{stop['step']}"
    assert ("checkpoint", stop["step"], None, None, None) in history(run)
    loop = json.loads((checkpoint / STATE_FILE).read_text())["loop"]
    assert loop["step"] == stop["step"] and loop["stop_reason"] == stop["reason"]

    # resumed from it (final/ deleted: a finished run is not resumed), the run ends at the same step, same model
    (reference / "final").mkdir(parents=True)
    shutil.copy(run / "final" / "model.safetensors", reference / "final")
    shutil.rmtree(run / "final")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {checkpoint} at step {stop['step']}" in out
    assert f"{stop['step']}/30 steps" in out
    assert_same_weights(reference, run)
    events = RunFolder(run).read("events")
    assert [e["type"] for e in events].count("stop") == 1 and [e["type"] for e in events].count("end") == 1


def test_every_run_ends_with_a_checkpoint_and_extend_continues_from_it(tmp_path, capsys):
    """b49fe67 wrote no checkpoint at the last planned step: extending a finished run restarted from the last
    periodic one (its later steps discarded) and the schedule was silently rebuilt for the new total."""
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--schedule", "cosine", "--warmup", "0.05", "--checkpoint-every", "5", "--out",
                 str(run)]) == 0
    assert latest_checkpoint(run / "checkpoints") == run / "checkpoints" / "step-12"
    assert ("checkpoint", 12, None, None, None) in history(run)
    before = RunFolder(run).read("metrics")
    capsys.readouterr()

    assert main(["train", "--resume", "--out", str(run), "--steps", "16", "--no-progress"]) == 2
    assert "is finished" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(run), "--steps", "16", "--extend", "--no-progress"]) == 0
    out = capsys.readouterr().out
    from vlm_grades.training.schedule import lr_lambda

    new = lr_lambda(16, 0.05, "cosine", 0.1)
    assert f"the learning rate factor at step 13 is {new(12):.3g}" in out, out
    assert "final/, eval/ and summary are replaced" in out
    assert f"resumed from {run / 'checkpoints' / 'step-12'} at step 12" in out and "16/16 steps" in out
    after = RunFolder(run).read("metrics")
    assert [m["step"] for m in after] == list(range(1, 17))
    assert after[:12] == before                                   # steps 1-12 kept, none trained again
    assert after[12]["lr"]["language"] == pytest.approx(3e-4 * new(13), rel=1e-6)   # the re-planned schedule
    assert json.loads((run / "summary.json").read_text())["steps"] == 16
    assert "steps: 16" in (run / "config.yaml").read_text()


def test_a_run_killed_during_its_final_evaluation_keeps_its_model_and_evaluates_it(tmp_path):
    """b49fe67 retrained from the last periodic checkpoint (or from step 0 after deleting final/)."""
    run = tmp_path / "run"
    args = [a for a in SMALL if a != "--eval-split="] + ["--eval-split", "test", "--eval-max-samples", "64"]
    killed_at("eval:0", run, args)
    assert RunFolder(run).finished() is None and (run / "final" / "model.safetensors").is_file()
    model = run / "final" / "model.safetensors"
    saved = (model.read_bytes(), model.stat().st_mtime_ns)
    trained = RunFolder(run).read("metrics")

    again = subprocess.run(cli("--resume", "--out", str(run), "--no-progress"), env=ENV, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"kept {run / 'final'}" in again.stdout and "at step 12" in again.stdout, again.stdout
    assert (model.read_bytes(), model.stat().st_mtime_ns) == saved          # the model was kept as it was
    assert RunFolder(run).read("metrics") == trained                          # no step trained again
    events = RunFolder(run).read("events")
    assert [e["type"] for e in events].count("eval") == 1 and events[-1]["type"] == "end"
    assert RunFolder(run).finished() is not None
