"""Where `vlm-grades train --resume` starts, and with which settings.

Only a folder `vlm-grades train` wrote is resumed (config.yaml, components.json and a start event: `check_run`);
anything else is refused before a file is touched. An unfinished run continues from its newest complete
checkpoint, or starts afresh when it never wrote one (removing only the files the run itself writes); a finished
run is refused, so its model, scores and logs are never overwritten. A resumed run keeps the settings it ran with
(`check_changes`): changing one that shapes the training is refused in one line naming it, so config.yaml always
describes what ran; only settings that leave the trained weights alone (logging, checkpoints kept, the final
evaluation, the feature cache) may change.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from vlm_grades.errors import UserError
from vlm_grades.training.checkpoint import complete_checkpoints, latest_checkpoint
from vlm_grades.training.run_folder import LOGS, RunFolder, read_jsonl

# what a run writes after its settings and removes when it starts afresh; config.yaml and components.json are
# rewritten by the new attempt. final/, eval/ and report/ stay: the new attempt writes its own files over
# the run's, and a user's files there are not the run's to delete
OUTPUTS = [f"{kind}.jsonl" for kind in LOGS] + ["summary.json"]

# settings a resumed run may change: they leave the trained weights alone
FREE_ON_RESUME = {"progress", "report_to", "log_every", "eval_batch_size", "max_new_tokens", "eval_split",
                  "eval_data", "eval_max_samples", "num_workers", "keep_checkpoints", "checkpoint_every",
                  "feature_cache", "feature_cache_disk", "feature_cache_dir", "out"}


def check_run(path: Path) -> None:
    """`path` holds a run `vlm-grades train` wrote: config.yaml, components.json and a start event in
    events.jsonl (files only a run writes); otherwise one line, before anything is read or touched."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--resume: {path} is not a run folder (it does not exist)")
    missing = [n for n in ("config.yaml", "components.json") if not (path / n).is_file()]
    if not missing and not any(e.get("type") == "start" for e in read_jsonl(path / "events.jsonl")):
        raise UserError(f"--resume: {path} has no start event in events.jsonl: if a run wrote it, it was stopped "
                        f"before its first step and there is nothing to resume; train into a new --out")
    if missing:
        raise UserError(f"--resume: {path} is not a vlm-grades run folder (no {', '.join(missing)}); "
                        f"nothing there was changed")


def check_unfinished(run: RunFolder) -> None:
    end = run.finished()
    if end is not None:
        raise UserError(f"--resume: {run.path} is finished (ended at step {end.get('step')}: "
                        f"{end.get('stop_reason')}); train into a new --out, or give a larger --steps with "
                        f"--extend to continue it")


def saved_settings(path: Path, extend: bool = False) -> dict[str, Any]:
    """The settings in the run's config.yaml, checked as a --config file is (one line naming the file)."""
    from vlm_grades.config import TrainConfig

    check_run(path)
    if not extend:   # an --extend may continue a finished run from its last checkpoint (check_changes)
        check_unfinished(RunFolder(path))
    return TrainConfig.from_yaml(Path(path) / "config.yaml", flag="--resume")


def check_changes(ran: Any, now: Any, path: Path, extend: bool = False,
                  flag_of: Callable[[str], str] = lambda name: name) -> list[str]:
    """`ran`: the TrainConfig of config.yaml; `now`: with this command's flags. Refuses (one line) a changed
    setting that shapes the training, and --steps below the newest checkpoint's step or changed without --extend;
    returns what a valid change means, to be said (an --extend). flag_of: a setting's name as the user types it."""
    import dataclasses

    changed = [(name, getattr(ran, name), getattr(now, name)) for name in (f.name for f in dataclasses.fields(ran))
               if name not in FREE_ON_RESUME | {"steps", "grades"} and getattr(ran, name) != getattr(now, name)]
    before, after = _flat(_resolved_grades(ran)), _flat(_resolved_grades(now))
    changed += [(f"grades.{k}", before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
                if before.get(k) != after.get(k)]
    if changed:
        name, before, after = changed[0]
        more = f" (and {', '.join(flag_of(n) for n, _, _ in changed[1:])})" if len(changed) > 1 else ""
        raise UserError(f"--resume: {flag_of(name)} {_show(after)}{more} differs from the run's {_show(before)} "
                        f"({Path(path) / 'config.yaml'}); a resumed run keeps the settings it trained with: train "
                        f"into a new --out to change it")
    newest = next(iter(complete_checkpoints(Path(path) / "checkpoints")), None)
    at = int(newest.name[5:]) if newest is not None else 0
    if now.steps < at:
        raise UserError(f"--steps {now.steps}: below step {at} of the run's newest checkpoint ({newest}); a run "
                        f"cannot be shortened past what it trained")
    if now.steps == ran.steps and not extend:
        return []
    if extend and now.steps <= ran.steps:
        raise UserError(f"--extend: give a --steps above the run's {ran.steps} planned steps")
    if not extend or now.steps < ran.steps:
        raise UserError(f"--steps {now.steps}: the run planned {ran.steps}; changing the plan changes the learning "
                        f"rate schedule{' and the GradES grace period' if ran.stopping == 'grades' else ''} from "
                        f"step {at + 1} on: add --extend to extend it to {now.steps} steps"
                        if now.steps > ran.steps else
                        f"--steps {now.steps}: the run planned {ran.steps}; a resumed run cannot be shortened "
                        f"(its schedule was planned for {ran.steps} steps): train into a new --out")
    end = RunFolder(path).finished()
    if end is not None and end.get("step", 0) < ran.steps:
        raise UserError(f"--extend: the run stopped at step {end.get('step')} of {ran.steps} "
                        f"({end.get('stop_reason')}): there is no plan left to extend; train into a new --out")
    if end is not None and at < end.get("step", 0):
        raise UserError(f"--extend: the run ended at step {end.get('step')} but its newest checkpoint is step {at} "
                        f"(written before runs checkpointed their last step): steps {at + 1}-{end.get('step')} would "
                        f"be trained again under another schedule; train into a new --out")
    if end is not None and ran.schedule == "wsd":
        raise UserError(f"--extend: the run ended at step {end.get('step')} when its wsd cooldown did "
                        f"({end.get('stop_reason')}); a finished warmup-stable-decay run has no schedule left to "
                        f"extend (its rate is at the cooldown's floor): train into a new --out")
    said = extension(ran, now, at)
    if end is not None:
        said += "; its final/, eval/ and summary are replaced when the extended run ends"
    return [said]


def extension(ran: Any, now: Any, at: int) -> str:
    """What --extend changes: the schedule from the next step on, and the grace period of GradES."""
    from vlm_grades.training.schedule import latest_decay_start, lr_lambda

    if ran.schedule == "wsd":   # only the cap moves: the cooldown, if not begun, may start later
        return (f"--extend: the cap goes from {ran.steps} to {now.steps} steps; under --schedule wsd the rate does "
                f"not follow the cap: a cooldown not begun by then starts at step {latest_decay_start(now.steps, now.cooldown)} "
                f"at the latest (was {latest_decay_start(ran.steps, ran.cooldown)})")

    old = lr_lambda(ran.steps, ran.warmup, ran.schedule, ran.min_lr_ratio)
    new = lr_lambda(now.steps, now.warmup, now.schedule, now.min_lr_ratio)
    line = (f"--extend: {ran.steps} -> {now.steps} planned steps; the {ran.schedule} schedule is re-planned over "
            f"{now.steps} steps: the learning rate factor at step {at + 1} is {new(at):.3g} (was {old(at):.3g})")
    if ran.stopping == "grades":
        from vlm_grades.grades.config import GradESConfig

        grades = GradESConfig.from_dict(ran.grades)
        before, after = grades.validate(ran.steps), grades.validate(now.steps)
        if before != after:
            line += f"; the GradES grace period ends at step {after} (was {before})"
    return line


def _resolved_grades(cfg: Any) -> dict[str, Any]:
    """Every GradES setting as the engine reads it (config.yaml holds them resolved; flags give some)."""
    from vlm_grades.grades.config import GradESConfig

    return GradESConfig.from_dict(cfg.grades).to_dict() if cfg.stopping == "grades" else dict(cfg.grades)


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    """Per-modality thresholds as keys of their own (`tau.language`), so a change names its modality."""
    flat = {k: v for k, v in settings.items() if not isinstance(v, dict)}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{m}": v for m, v in value.items()})
    return flat


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_show(v)}" for k, v in value.items())
    return "(unset)" if value is None else ",".join(value) if isinstance(value, list) else str(value)


def resume_point(path: Path, main_process: bool = True, processes: int = 1,
                 extend: bool = False) -> tuple[RunFolder, Path | None]:
    """(the run folder, the checkpoint to resume from, or None to start afresh). `processes`: this run's world
    size, which must be the checkpoint's; `extend`: a finished run may continue (checked by check_changes)."""
    check_run(path)
    run = RunFolder(path)
    if not extend:
        check_unfinished(run)
    checkpoint = latest_checkpoint(run.checkpoints)
    if checkpoint is not None:
        check_processes(checkpoint, processes)
    if checkpoint is None and main_process:
        start_afresh(run)
        print(f"--resume: {path} has no complete checkpoint: starting it afresh with its settings")
    return run, checkpoint


def check_processes(checkpoint: Path, processes: int) -> None:
    """A checkpoint's data position and global batch are those of the world size that wrote it: another is
    refused in one line (checkpoints of earlier versions: counted by their per-process RNG states)."""
    import json

    from vlm_grades.training.checkpoint import STATE_FILE, load_checkpoint

    written = json.loads((checkpoint / STATE_FILE).read_text()).get("loop", {}).get("processes")
    if written is None:
        rng = load_checkpoint(checkpoint, names=("rng",))[0].get("rng")
        written = len(rng) if isinstance(rng, list) else 1
    if written != processes:
        raise UserError(f"--resume: {checkpoint} was written by {written} process(es), this run has {processes}; "
                        f"resume it with {written} (torchrun --nproc-per-node {written} ...): its data position "
                        f"and global batch are those of {written}")


def start_afresh(run: RunFolder) -> None:
    """Removes what the earlier attempt wrote (its logs, summary and torn checkpoints), so the new one's logs do
    not continue the old ones; nothing else."""
    for name in OUTPUTS:
        (run.path / name).unlink(missing_ok=True)
    for rank_state in run.path.glob("rank-*.json"):
        rank_state.unlink()
    if run.checkpoints.is_dir():   # no complete checkpoint is there: only torn ones and the pointer
        for torn in run.checkpoints.glob(".tmp-step-*"):
            shutil.rmtree(torn, ignore_errors=True)
        (run.checkpoints / "latest").unlink(missing_ok=True)
