"""`report --live`: the summary table, refreshed while a run is in progress, until its end event."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from vlm_grades.errors import UserError
from vlm_grades.report import summary
from vlm_grades.report.build import summary_text
from vlm_grades.report.run_data import RunData

CLEAR = "\033[H\033[2J"


def watch(path: str | Path, interval: float = 5.0, stream: TextIO | None = None,
          sleep: Callable[[float], None] = time.sleep, max_refreshes: int | None = None) -> int:
    """Print the table every `interval` seconds; returns 0 when the run ends (or on Ctrl-C)."""
    stream = stream or sys.stdout
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: run folder does not exist")
    if interval <= 0:
        raise UserError("--interval: must be a positive number of seconds")
    clear = stream.isatty() if hasattr(stream, "isatty") else False
    refreshes = 0
    try:
        while True:
            refreshes += 1
            if (path / "config.yaml").exists() and (path / "components.json").exists():
                run = RunData.load(path)
                text = summary_text(summary.build(run))
                done = run.ended
            else:
                text, done = f"{path}: waiting for the run to start (no config.yaml / components.json yet)", False
            stamp = time.strftime("%H:%M:%S")
            tail = "run ended." if done else f"refreshing every {interval:g} s; Ctrl-C to stop."
            stream.write((CLEAR if clear else "") + f"[{stamp}] {text}\n{tail}\n\n")
            stream.flush()
            if done or (max_refreshes is not None and refreshes >= max_refreshes):
                return 0
            sleep(interval)
    except KeyboardInterrupt:
        stream.write("stopped.\n")
        return 0
