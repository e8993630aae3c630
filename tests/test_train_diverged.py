"""A diverged run (`--lr 1e4` on the tiny nanoVLM: non-finite weights after step 2, a NaN loss at step 3) exits 3
with the reason on stderr in one line; no checkpoint holds non-finite weights; final/ is the last finite
checkpoint's model, not scored; a run that diverges before its first checkpoint has no final/."""
from __future__ import annotations

import math

import torch
from safetensors.torch import load_file

from vlm_grades.training.checkpoint import latest_checkpoint
from vlm_grades.cli import main
from vlm_grades.training.run_folder import RunFolder

DIVERGING = ["--max-samples", "64", "--batch-size", "8", "--steps", "12", "--lr", "1e4", "--eval-split", "test",
             "--eval-max-samples", "8", "--no-progress", "--seed", "1"]


def all_finite(tensors) -> bool:
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def test_a_diverged_run_fails_and_keeps_its_last_finite_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *DIVERGING, "--checkpoint-every", "1", "--out", str(run)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "diverged" in err and "non-finite" in err, err

    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert checkpoints
    for path in checkpoints:
        assert all_finite(torch.load(path / "model.pt", weights_only=False).values()), path
    last = latest_checkpoint(run / "checkpoints")
    assert last.name in err

    final = load_file(str(run / "final" / "model.safetensors"))
    assert all_finite(final.values())
    saved = torch.load(last / "model.pt", weights_only=False)
    assert final.keys() <= saved.keys() and all(torch.equal(final[k], saved[k]) for k in final)
    assert not (run / "eval").exists()                       # a diverged run is not scored

    events = RunFolder(run).read("events")
    (diverged,) = [e for e in events if e["type"] == "diverged"]
    assert diverged["result"] == f"checkpoints/{last.name}" and diverged["step"] > int(last.name.split("-")[1])
    assert events[-1]["type"] == "end" and "non-finite" in events[-1]["stop_reason"]
    assert not [e for e in events if e["type"] == "eval"]
    summary = RunFolder(run).read_json("summary.json")
    assert summary["diverged"] and summary["result"] == f"checkpoints/{last.name}" and "eval" not in summary
    assert not any(isinstance(m["loss"], float) and not math.isfinite(m["loss"])
                   for m in RunFolder(run).read("metrics")[:-1])


def test_a_run_diverged_before_its_first_checkpoint_saves_no_model(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *DIVERGING, "--checkpoint-every", "500", "--out", str(run)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "diverged" in err and "no checkpoint" in err, err
    assert not (run / "final").exists() and not (run / "eval").exists()
    summary = RunFolder(run).read_json("summary.json")
    assert summary["diverged"] and summary["result"] is None
