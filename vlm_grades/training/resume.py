"""Where `vlm-grades train --resume` starts: an unfinished run from its newest complete checkpoint, or afresh
when it never wrote one; a finished run is refused, so its model, scores and logs are never overwritten."""
from __future__ import annotations

import shutil
from pathlib import Path

from vlm_grades.training.checkpoint import latest_checkpoint
from vlm_grades.errors import UserError
from vlm_grades.training.run_folder import LOGS, RunFolder

# what a run writes after its settings; config.yaml and components.json are rewritten by the new attempt
OUTPUTS = [f"{kind}.jsonl" for kind in LOGS] + ["summary.json", "final", "eval", "report", "checkpoints"]


def resume_point(path: Path, main_process: bool = True) -> tuple[RunFolder, Path | None]:
    """(the run folder, the checkpoint to resume from, or None to start afresh)."""
    if not (path / "config.yaml").exists():
        raise UserError(f"--resume: {path} is not a run folder (no config.yaml)")
    run = RunFolder(path)
    end = run.finished()
    if end is not None:
        raise UserError(f"--resume: {path} is finished (ended at step {end.get('step')}: {end.get('stop_reason')}); "
                        f"train into a new --out, or delete {run.final} to train it again from its last checkpoint")
    checkpoint = latest_checkpoint(run.checkpoints)
    if checkpoint is None and main_process:
        start_afresh(run)
        print(f"--resume: {path} has no complete checkpoint: starting it afresh with its settings")
    return run, checkpoint


def start_afresh(run: RunFolder) -> None:
    """Removes what the earlier attempt wrote, so the new one's logs do not continue the old ones."""
    for name in OUTPUTS:
        target = run.path / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    for rank_state in run.path.glob("rank-*.json"):
        rank_state.unlink()
