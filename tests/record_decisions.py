"""`python tests/record_decisions.py train-args...` (also under torchrun): `vlm-grades train` with every process
appending, at each GradES check, its own statistics and its own freeze decisions, taken before rank 0's are
broadcast, to OUT/decisions-rank-<rank>.jsonl: what each rank would have decided alone."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from vlm_grades.cli import main
from vlm_grades.grades import engine

args = sys.argv[1:]
log = Path(args[args.index("--out") + 1]) / f"decisions-rank-{os.environ.get('RANK', '0')}.jsonl"
live_decide, live_agree = engine.GradES._decide, engine.broadcast_from_rank0
checking: dict = {}


def decide(self, step: int, values) -> None:
    checking.update(step=step, values=[None if v is None else float(v) for v in values])
    live_decide(self, step, values)


def agree(flags: list[bool], device) -> list[bool]:
    with open(log, "a") as f:
        f.write(json.dumps({**checking, "flags": [bool(x) for x in flags]}) + "\n")
    return live_agree(flags, device)


engine.GradES._decide, engine.broadcast_from_rank0 = decide, agree
sys.exit(main(["train", *args]))
