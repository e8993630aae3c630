"""`vlm-grades replay RUN`: what another GradES setting would have frozen, and when, on a run's logged statistics."""
from __future__ import annotations

import argparse
import json

from vlm_grades.commands.setting_names import blame
from vlm_grades.commands.train import add_rule_flags, flags_to_settings
from vlm_grades.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay the GradES rule with other settings on a run's logged statistics",
                       description="Feeds the statistics in RUN/convergence.jsonl to the GradES engine with the "
                                   "run's settings, changed by the flags given (thresholds, rho, grace period, "
                                   "smoothing, patience), and prints per modality what it would have frozen and "
                                   "when, and where it would have stopped, beside what the run did. No training: "
                                   "it assumes the statistics the run logged. Most informative on a run that "
                                   "froze nothing (e.g. trained with --tau 1e-30).")
    p.add_argument("run", metavar="RUN", help="run folder written by `vlm-grades train` with GradES on")
    add_rule_flags(p.add_argument_group("rule (defaults: the run's own settings)"))
    p.add_argument("--steps", type=int, default=None,
                   help="replay as a run capped at this many steps (default: the run's --steps); a rule that does "
                        "not depend on the cap decides the same up to the smaller of two caps")
    p.add_argument("--json", action="store_true", help="print the result as JSON (freeze step of every matrix)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlm_grades.report.replay import replay, replay_table

    settings = flags_to_settings(argparse.Namespace(**{k: v for k, v in vars(args).items()
                                                       if k not in ("run", "json", "steps")}))
    try:
        result = replay(args.run, settings.get("grades", {}), steps=args.steps)
    except UserError as e:
        raise blame(e, settings) from None
    print(json.dumps(result, indent=2) if args.json else replay_table(result))
    return 0
