"""Logs rewritten on resume (`RunFolder.truncate_after`) survive a kill at any moment of the rewrite: a process
SIGKILLed while it rewrites large logs leaves each log whole, either as it was or as it should become, never
empty or cut; the next rewrite completes and cleans up what the killed one left."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from vlm_grades.training.run_folder import LOGS, RunFolder

STEPS = 1500
KEEP = 600
REWRITE = ("import sys; from vlm_grades.training.run_folder import RunFolder; "
           "RunFolder(sys.argv[1]).truncate_after(int(sys.argv[2]))")


def write_big_run(path: Path) -> None:
    """A run folder whose logs take long enough to rewrite for a kill to land inside (tens of megabytes)."""
    path.mkdir(parents=True)
    names = [f"decoder.blocks.{i // 7}.mlp.proj_{i % 7}" for i in range(120)]
    with open(path / "convergence.jsonl", "w") as f:
        for step in range(1, STEPS + 1):
            f.write(json.dumps({"step": step, "metric": "grad_change", "values": {n: 1e-3 / step for n in names},
                                "tau": {n: 1e-4 for n in names}, "frozen": names[:step // 10]}) + "\n")
    with open(path / "metrics.jsonl", "w") as f:
        for step in range(1, STEPS + 1):
            f.write(json.dumps({"step": step, "loss": 3.0 / step, "lr": {"language": 1e-4}}) + "\n")
    with open(path / "events.jsonl", "w") as f:
        f.write(json.dumps({"type": "start", "step": 0, "resumed_from": None}) + "\n")
        for step in range(50, STEPS + 1, 50):
            f.write(json.dumps({"type": "checkpoint", "step": step, "path": f"checkpoints/step-{step}"}) + "\n")


def contents(path: Path) -> dict[str, bytes]:
    return {kind: (path / f"{kind}.jsonl").read_bytes() for kind in LOGS}


def rewrite_begun(path: Path, before: os.stat_result) -> bool:
    """The rewrite touched the folder: a temporary file appeared or a log changed."""
    if any(name.startswith(".") for name in os.listdir(path)):
        return True
    now = os.stat(path / "convergence.jsonl")
    return (now.st_size, now.st_mtime_ns, now.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino)


def kill_inside_rewrite(path: Path, delay: float) -> int:
    """Runs truncate_after in a process and SIGKILLs it `delay` seconds after the rewrite began."""
    before = os.stat(path / "convergence.jsonl")
    proc = subprocess.Popen([sys.executable, "-c", REWRITE, str(path), str(KEEP)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not rewrite_begun(path, before) and time.monotonic() < deadline:
        pass
    if delay:
        time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
    return proc.returncode


def test_a_kill_inside_the_log_rewrite_leaves_every_log_old_or_new(tmp_path):
    original = tmp_path / "original"
    write_big_run(original)
    old = contents(original)
    expected = tmp_path / "expected"
    shutil.copytree(original, expected)
    RunFolder(expected).truncate_after(KEEP)
    new = contents(expected)
    assert all(new[k] != old[k] for k in LOGS)
    assert [r["step"] for r in RunFolder(expected).read("metrics")] == list(range(1, KEEP + 1))

    killed = 0
    for attempt, delay in enumerate((0.0, 0.0, 0.002, 0.01, 0.03, 0.1, 0.3)):
        run = tmp_path / f"run-{attempt}"
        shutil.copytree(original, run)
        killed += kill_inside_rewrite(run, delay) == -signal.SIGKILL
        now = contents(run)
        for kind in LOGS:
            assert now[kind] in (old[kind], new[kind]), \
                f"kill {delay} s into the rewrite: {kind}.jsonl is neither the old nor the new log " \
                f"({len(now[kind])} bytes; old {len(old[kind])}, new {len(new[kind])})"
        # the next resume rewrites again: it completes and leaves no temporary file behind
        RunFolder(run).truncate_after(KEEP)
        assert contents(run) == new
        assert not [n for n in os.listdir(run) if n.startswith(".")]
    assert killed >= 2, "no kill landed inside the rewrite; the test did not test anything"


def test_rewrite_keeps_the_logs_as_they_were_at_the_checkpoint(tmp_path):
    """Events logged at the checkpoint's step after the checkpoint (the stop and end of a run that stopped
    early there) belong to the attempt being rolled back; the start events stay as the run's history."""
    run = RunFolder(tmp_path / "run", create=True)
    for record in ({"type": "start", "step": 0, "resumed_from": None}, {"type": "freeze", "step": 8},
                   {"type": "checkpoint", "step": 8}, {"type": "stop", "step": 8, "reason": "all components frozen"},
                   {"type": "eval", "step": 8}, {"type": "end", "step": 8},
                   {"type": "start", "step": 8, "resumed_from": 8}, {"type": "stop", "step": 9}):
        run.append("events", record)
    with open(run.log_path("events"), "a") as f:
        f.write('{"type": "checkpoint", "st')        # a torn last line of a killed process
    run.truncate_after(8)
    assert [(e["type"], e["step"]) for e in run.read("events")] == \
        [("start", 0), ("freeze", 8), ("checkpoint", 8), ("start", 8)]
    assert run.log_path("events").read_text().endswith("}\n")
