"""`python tests/imposed_freezes.py SCHEDULE_JSON train-args...` (also under torchrun): `vlm-grades train` with
GradES freezing the matrices named in SCHEDULE_JSON ({"step": [component, ...]}) at those steps through its
public `freeze` call, on top of the live rule (give --tau 1e-30 so the rule itself freezes nothing)."""
from __future__ import annotations

import json
import sys

from vlm_grades.cli import main
from vlm_grades.grades import GradES

schedule = {int(k): v for k, v in json.loads(sys.argv[1]).items()}
live_update = GradES.update


def update(self, step: int) -> None:
    live_update(self, step)
    if step in schedule:
        self.freeze(schedule[step], step=step)


GradES.update = update
sys.exit(main(["train", *sys.argv[2:]]))
