"""`python tests/killed_at.py POINT train-args...` (also under torchrun): `vlm-grades train` whose processes
SIGKILL themselves at a named point instead of a test racing the clock to kill them:
- `checkpoint:N`: every process, inside the write of checkpoint N, once its own share is on disk and before
  the checkpoint is complete (its .tmp-step-N-* folder is left torn: the last part, or the state file, missing);
- `step:N`: the main process, once the metrics line of step N is written;
- `eval:0`: the main process, when the held-out evaluation starts (final/ saved, no end event)."""
from __future__ import annotations

import os
import signal
import sys

from vlm_grades.cli import main
from vlm_grades.training import checkpoint
from vlm_grades.training.run_folder import RunFolder

point, at = sys.argv[1].split(":")
at = int(at)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def inside(path) -> bool:
    return f".tmp-step-{at}-" in str(path)


if point == "checkpoint":
    live_write = checkpoint.write_parts

    def write_parts(tmp, parts):
        items = list(parts.items())
        live_write(tmp, dict(items[:-1]))      # every part but the last
        if inside(tmp):
            die()
        live_write(tmp, dict(items[-1:]))

    checkpoint.write_parts = write_parts
    if "fsdp" in sys.argv:                      # torch.distributed.checkpoint takes seconds to import
        import torch.distributed.checkpoint as dcp

        from vlm_grades.parallel import sharded_checkpoint

        live_save = dcp.save

        def save(state, *args, checkpoint_id=None, **kwargs):   # each rank's shards
            result = live_save(state, *args, checkpoint_id=checkpoint_id, **kwargs)
            if inside(checkpoint_id):
                die()
            return result

        sharded_checkpoint.write_parts, dcp.save = write_parts, save
elif point == "eval":
    from vlm_grades.training import run

    def evaluate_held_out(*args, **kwargs):
        die()

    run.evaluate_held_out = evaluate_held_out
elif point == "step":
    live_append = RunFolder.append

    def append(self, kind: str, record: dict) -> None:
        live_append(self, kind, record)
        if kind == "metrics" and record.get("step") == at:
            die()

    RunFolder.append = append
else:
    sys.exit(f"killed_at.py: unknown point {point!r} (checkpoint:N, step:N or eval:0)")
sys.exit(main(["train", *sys.argv[2:]]))
