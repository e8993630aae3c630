"""`--resume` never deletes, changes or loses a user's work silently: a folder that is not a run is refused before
anything is touched; starting afresh keeps files the run did not write; a foreign config.yaml is one line; a
changed training setting is refused naming it (config.yaml keeps describing what ran); --steps below the checkpoint
is refused, a larger one needs --extend; a second writer of a run folder is refused while the first lives."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlm_grades.cli import main
from vlm_grades.training.run_folder import LOCK, RunFolder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SMALL = ["--max-samples", "64", "--batch-size", "8", "--steps", "12", "--checkpoint-every", "4", "--eval-split=",
         "--no-progress", "--seed", "1", "--alpha", "4", "--patience", "1"]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory) -> Path:
    """A run of 12 steps with checkpoints at 4 and 8 whose final/ is gone: resumable from step 8."""
    run = tmp_path_factory.mktemp("guards") / "run"
    assert main(["train", *SMALL, "--schedule", "cosine", "--out", str(run)]) == 0   # --extend re-plans a cosine
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints" / "step-12", ignore_errors=True)   # as if killed after step 8's checkpoint
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_a_folder_that_is_not_a_run_is_refused_untouched(tmp_path, capsys):
    """b49fe67 checked only for config.yaml and then deleted final/, eval/, report/ as a run's own."""
    folder = tmp_path / "mine"
    (folder / "eval").mkdir(parents=True)
    (folder / "report").mkdir()
    (folder / "final").mkdir()
    (folder / "config.yaml").write_text("max_samples: 64\nbatch_size: 8\nsteps: 4\neval_split: null\n")
    (folder / "eval" / "mine.csv").write_text("id,score\n1,0.5\n")
    (folder / "report" / "index.html").write_text("<p>mine</p>")
    (folder / "final" / "weights.bin").write_bytes(b"\1\2\3")
    before = files(folder)
    assert main(["train", "--resume", "--out", str(folder), "--no-progress"]) == 2
    err = one_line(capsys)
    assert "not a vlm-grades run folder" in err and "components.json" in err, err
    assert files(folder) == before and sorted(p.name for p in folder.iterdir()) == \
        ["config.yaml", "eval", "final", "report"]
    (folder / "components.json").write_text("{}")                 # still no start event: no run trained there
    before = files(folder)
    assert main(["train", "--resume", "--out", str(folder), "--no-progress"]) == 2
    assert "has no start event" in one_line(capsys)
    assert files(folder) == before


def test_a_foreign_config_yaml_is_one_line(unfinished, tmp_path, capsys):
    run = copy_of(unfinished, tmp_path)
    (run / "config.yaml").write_text("epochs: 90\nlr: 0.1\n")
    assert main(["train", "--resume", "--out", str(run)]) == 2
    err = one_line(capsys)
    assert f"--resume {run / 'config.yaml'}: unknown setting(s) epochs" in err, err
    (run / "config.yaml").write_text("- just\n- a list\n")
    assert main(["train", "--resume", "--out", str(run)]) == 2
    assert "expected a mapping of settings" in one_line(capsys)


@pytest.mark.parametrize("flags, named", [
    (["--lr", "1e-3"], "--lr 0.001"),
    (["--rho", "0.9"], "--rho 0.9 differs from the run's 0.4"),
    (["--tau", "0.5"], "--tau-language 0.5 (and --tau-projector, --tau-vision) differs from the run's auto"),
    (["--tau-vision", "auto", "--tau-projector", "0.5"], "--tau-projector 0.5 differs from the run's auto"),
    (["--metric", "grad"], "--metric grad differs from the run's grad_change"),
    (["--stopping", "none"], "--stopping none differs from the run's grades"),
    (["--seed", "2"], "--seed 2 differs from the run's 1"),
    (["--steps", "6"], "--steps 6: below step 8 of the run's newest checkpoint"),
    (["--steps", "10"], "--steps 10: the run planned 12; a resumed run cannot be shortened"),
    (["--steps", "20"], "add --extend"),
])
def test_a_changed_training_setting_is_refused_naming_it(unfinished, capsys, flags, named):
    """b49fe67: --lr and --rho were ignored while config.yaml recorded them, --tau applied, --metric refused,
    --stopping none thawed every frozen matrix, --steps below the checkpoint ran "50/40 steps"."""
    before = files(unfinished)
    assert main(["train", "--resume", "--out", str(unfinished), "--no-progress", *flags]) == 2
    err = one_line(capsys)
    assert named in err, err
    assert files(unfinished) == before                        # config.yaml still says what ran


def test_settings_that_leave_the_weights_alone_may_change_and_extend_is_said(unfinished, tmp_path, capsys):
    run = copy_of(unfinished, tmp_path)
    assert main(["train", "--resume", "--out", str(run), "--no-progress", "--keep-checkpoints", "5",
                 "--steps", "16", "--extend"]) == 0
    out = capsys.readouterr().out
    assert "--extend: 12 -> 16 planned steps; the cosine schedule is re-planned over 16 steps" in out, out
    assert "resumed from" in out and "16/16 steps" in out
    saved = (run / "config.yaml").read_text()
    assert "steps: 16" in saved and "keep_checkpoints: 5" in saved       # what ran
    assert main(["train", "--extend", "--out", str(tmp_path / "new")]) == 2
    assert "--extend: only with --resume" in one_line(capsys)


def test_starting_afresh_keeps_what_the_run_did_not_write(tmp_path, capsys):
    """A run without a checkpoint starts afresh: its own logs go; a user's files in eval/ and report/ stay."""
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--checkpoint-every", "500", "--steps", "4", "--out", str(run)]) == 0
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints")                         # as if killed before its only (end) checkpoint
    (run / "eval").mkdir()
    (run / "eval" / "mine.csv").write_text("mine")
    (run / "report").mkdir()
    (run / "report" / "notes.md").write_text("my notes")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0
    assert "starting it afresh" in capsys.readouterr().out
    assert (run / "eval" / "mine.csv").read_text() == "mine"
    assert (run / "report" / "notes.md").read_text() == "my notes"
    starts = [e for e in RunFolder(run).read("events") if e["type"] == "start"]
    assert [s["resumed_from"] for s in starts] == [None]       # the earlier attempt's logs went


def test_a_second_writer_is_refused_while_the_first_lives(tmp_path, capsys):
    """Two concurrent writers: a run in progress holds the folder's lock; a `--resume` (or a new run) into it is
    refused with its pid; once it is killed (a stale lock file of a dead pid), the resume goes ahead."""
    run = tmp_path / "run"
    args = [*SMALL, "--steps", "400", "--checkpoint-every", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "vlm_grades", "train", *args, "--out", str(run)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and \
                not (run / "checkpoints" / "step-2").is_dir():
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert (run / LOCK).read_text().split() == [str(proc.pid)]
        before = sorted(p.name for p in run.iterdir())
        assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 2
        assert f"run in progress (pid {proc.pid})" in one_line(capsys)
        assert sorted(p.name for p in run.iterdir()) == before      # nothing deleted or started afresh
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert (run / LOCK).read_text().split() == [str(proc.pid)]       # left by the dead process
    from vlm_grades.training.run_folder import lock_run, unlock_run

    lock_run(run)                                                    # a dead holder's lock is free
    assert (run / LOCK).read_text().split() == [str(os.getpid())]
    unlock_run(run)
    assert not (run / LOCK).exists()


@pytest.mark.parametrize("recorded", [True, False])
def test_a_checkpoint_of_another_world_size_is_refused(unfinished, tmp_path, capsys, recorded):
    """b49fe67 resumed a 2-process DDP checkpoint with 1 process at half the global batch (and a 2-process FSDP
    one with 3 processes ended in IndexError). A 2-process checkpoint stands in here: its recorded world size
    (or, for checkpoints without it, its per-process RNG states) says 2."""
    import json

    import torch

    from vlm_grades.training.checkpoint import STATE_FILE

    run = copy_of(unfinished, tmp_path)
    checkpoint = run / "checkpoints" / "step-8"
    state = json.loads((checkpoint / STATE_FILE).read_text())
    if recorded:
        state["loop"]["processes"] = 2
    else:
        state["loop"].pop("processes", None)
        rng = torch.load(checkpoint / "rng.pt", weights_only=False)
        torch.save(rng * 2, checkpoint / "rng.pt")
    (checkpoint / STATE_FILE).write_text(json.dumps(state))
    before = files(run)
    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 2
    err = one_line(capsys)
    assert f"{checkpoint} was written by 2 process(es), this run has 1; resume it with 2" in err, err
    assert files(run) == before


@pytest.mark.slow
def test_two_processes_refuse_a_one_process_checkpoint(unfinished, tmp_path):
    """The real launcher: a checkpoint written by one process, resumed by `torchrun --nproc-per-node 2`, is refused
    by every process before any work, the run folder untouched."""
    import socket

    run = copy_of(unfinished, tmp_path)
    before = files(run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), "-m", "vlm_grades", "train", "--resume",
                           "--out", str(run), "--no-progress"], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    refusals = [line for line in done.stderr.splitlines() if "was written by 1 process(es), this run has 2" in line]
    assert refusals and all(line.startswith("vlm-grades train: error: --resume: ") for line in refusals), \
        done.stderr[-3000:]
    assert files(run) == before


def test_extend_moves_the_cap_of_an_unfinished_wsd_run_and_refuses_a_finished_one(tmp_path, capsys):
    """Under wsd --steps is a cap: an --extend of an interrupted run says that only the cap moves; a run whose
    cooldown ended has no schedule left, and an --extend of it is one line (it used to resume and stop at once)."""
    run = tmp_path / "run"
    wsd = [*SMALL, "--schedule", "wsd", "--warmup", "2", "--cooldown", "0.5", "--out", str(run)]
    assert main(["train", *wsd]) == 0                     # nothing converges: the cap starts the decay at 8
    end = RunFolder(run).finished()
    assert end["step"] == 12 and end["stop_reason"].startswith("cooldown done"), end
    before = files(run)
    assert main(["train", "--resume", "--out", str(run), "--no-progress", "--steps", "20", "--extend"]) == 2
    err = one_line(capsys)
    assert "--extend: the run ended at step 12 when its wsd cooldown did" in err, err
    assert files(run) == before
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints" / "step-12")
    shutil.rmtree(run / "checkpoints" / "step-8")        # back to step 4: the stable phase, the decay not begun
    (run / "events.jsonl").write_text("".join(line + "\n" for line in (run / "events.jsonl").read_text().splitlines()
                                              if '"type": "end"' not in line))
    assert main(["train", "--resume", "--out", str(run), "--no-progress", "--steps", "20", "--extend"]) == 0
    out = capsys.readouterr().out
    assert "--extend: the cap goes from 12 to 20 steps; under --schedule wsd the rate does not follow the cap: a " \
           "cooldown not begun by then starts at step 13 at the latest (was 8)" in out, out
    assert RunFolder(run).finished()["step"] == 20
