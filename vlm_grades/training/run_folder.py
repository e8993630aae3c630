"""The run folder: the contract between `train`, `report` and `eval` (layout in docs/RUN_FOLDER.md)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from vlm_grades.errors import UserError

LOGS = ("convergence", "events", "metrics")


def json_safe(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as strings so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_text_atomic(path: Path, text: str) -> None:
    """Write a temporary file beside `path`, fsync it, rename it over `path`: a process killed at any moment
    leaves either the old file or the new one, never an empty or cut one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run folders are shared artefacts
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a power cut
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(json_safe(obj), indent=2))


def check_can_create(path: Path, flag: str = "--out") -> None:
    """`path` can become a folder we write into: tried for real (a file in the way, /proc or /sys, a
    read-only mount, permissions), then everything the try created is removed again."""
    path = Path(path)
    blocking = next((f for f in [path, *path.parents] if f.exists() and not f.is_dir()), None)
    if blocking is not None:
        raise UserError(f"{flag} {path}: {'it' if blocking == path else blocking} is a file, not a folder")
    created: list[Path] = []
    try:
        for folder in [*reversed(path.parents), path]:
            if not folder.is_dir():
                folder.mkdir()
                created.append(folder)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create a folder and write there "
                        f"({e.strerror or e}{f': {e.filename}' if e.filename else ''})") from None
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):   # another process may have started writing there meanwhile
                folder.rmdir()


def read_jsonl(path: Path) -> Iterator[dict]:
    """Yields records; a torn last line (a run killed mid-write) is skipped, not fatal."""
    if not Path(path).exists():
        return
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


class RunFolder:
    def __init__(self, path: str | os.PathLike, create: bool = False):
        """create=True: a new run; the folder appears with the first write, so a run that fails while
        setting up leaves nothing behind."""
        self.path = Path(path)
        if not create and not self.path.is_dir():
            raise UserError(f"{self.path}: run folder does not exist")

    @classmethod
    def open_existing(cls, path: str | os.PathLike) -> "RunFolder":
        """Open a folder written by `vlm-grades train`; anything else is a clear error."""
        run = cls(path)
        if not (run.path / "config.yaml").exists() or not (run.path / "components.json").exists():
            raise UserError(f"{run.path}: not a vlm-grades run folder (no config.yaml / components.json)")
        return run

    # paths
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    def log_path(self, kind: str) -> Path:
        assert kind in LOGS, kind
        return self.path / f"{kind}.jsonl"

    # writing
    def append(self, kind: str, record: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(kind), "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")

    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.path / name, obj)

    # reading
    def read(self, kind: str) -> list[dict]:
        return list(read_jsonl(self.log_path(kind)))

    def read_json(self, name: str) -> Any:
        with open(self.path / name) as f:
            return json.load(f)

    def write_text(self, name: str, text: str) -> None:
        write_text_atomic(self.path / name, text)

    def finished(self) -> dict | None:
        """The end event of a finished run (final/ written, an end event after the last start); None otherwise."""
        if not self.final.is_dir():
            return None
        last = None
        for event in read_jsonl(self.log_path("events")):
            if event.get("type") in ("start", "end"):
                last = event
        return last if last is not None and last["type"] == "end" else None

    def truncate_after(self, step: int) -> None:
        """On resume, put the logs back as they were when the checkpoint of `step` was written, so they match
        the state: later records go, start events stay (the run's history of attempts). Each log is rewritten
        atomically; a torn last line goes too, so the next append starts on a line of its own."""
        for kind in LOGS:
            path = self.log_path(kind)
            for stale in path.parent.glob(f".{path.name}.*.tmp"):   # left by a process killed in a rewrite
                stale.unlink(missing_ok=True)
            if not path.exists():
                continue
            records = list(read_jsonl(path))
            keep = _at_checkpoint(records, step) if kind == "events" else \
                [r for r in records if r.get("step", -1) <= step]
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


def _at_checkpoint(events: list[dict], step: int) -> list[dict]:
    """Events up to the checkpoint event of `step`: what a run logged at that step after its checkpoint
    (the stop, evaluation and end of a run that stopped early there) is rolled back with the rest."""
    marks = [i for i, e in enumerate(events) if e.get("type") == "checkpoint" and e.get("step") == step]
    cut = marks[-1] if marks else len(events)
    return [e for i, e in enumerate(events)
            if e.get("type") == "start" or e.get("step", -1) < step or (e.get("step") == step and i <= cut)]
