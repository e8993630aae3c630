"""`vlm-grades eval`: greedy generation with a trained model over a benchmark split, predictions in the
official format plus a per-sample JSONL, then scoring (the same metrics as `vlm-grades score`). With
--allow-unanswered (test-dev, test): predictions only, and the file the benchmark's submission server takes."""
from __future__ import annotations

import sys
from pathlib import Path

from vlm_grades.commands.score import add_scoring_flags, check_scoring_flags
from vlm_grades.errors import UserError
from vlm_grades.feature_cache.memory import DEFAULT_SIZE, parse_size


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="generate answers with a model and score them", description=__doc__)
    p.add_argument("--task", required=True,
                   choices=["vqav2", "gqa", "coco", "easyvqa", "easyvqa-caption", "scenes"],
                   help="benchmark (easyvqa-caption: exact-match and colour/shape accuracy of the captions; "
                        "scenes: the stage-1 corpus of the shipped nanoVLM base)")
    p.add_argument("--model", required=True, metavar="RUN_OR_CHECKPOINT",
                   help="a run folder (its final/ model) or a model checkpoint folder")
    p.add_argument("--data", metavar="SOURCE",
                   help="data folder, file or Hugging Face id (not needed for easyvqa*: the easy-vqa package)")
    p.add_argument("--split", help="split to evaluate (default: test for easyvqa*, validation otherwise)")
    p.add_argument("--max-samples", type=int, help="evaluate at most this many samples (default all)")
    p.add_argument("--batch-size", type=int, default=16, help="generation batch size (default 16)")
    p.add_argument("--max-new-tokens", type=int,
                   help="generated tokens per answer (default 16 for VQA tasks, 64 for coco, 8 for easyvqa)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--prompt", help="prompt template containing {question} (default: the task's)")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: RUN/eval for a run folder, else ./eval-<task>)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--feature-cache", default=DEFAULT_SIZE, metavar="SIZE",
                   help="memory for the features of repeated images (each image through the vision encoder "
                        "once), e.g. 2GB, 512MB, 0 = off (default %(default)s)")
    p.add_argument("--allow-unanswered", action="store_true",
                   help="vqav2/gqa splits without public answers (test-dev, test): predict without scoring and "
                        "write <task>_submission.json for the submission server (vqav2 test-dev/test: every "
                        "question of v2_OpenEnded_mscoco_test2015_questions.json when it is beside the data, "
                        "unanswered ones empty)")
    add_scoring_flags(p)
    p.set_defaults(func=run)


def default_out(model: str, task: str) -> Path:
    path = Path(model)
    if (path / "config.yaml").exists() and (path / "components.json").exists():
        return path / "eval"
    return Path(f"eval-{task}")


def check_flags(args) -> None:
    check_scoring_flags(args)
    if args.allow_unanswered:
        if args.task not in ("vqav2", "gqa"):
            raise UserError(f"--allow-unanswered: only for vqav2 and gqa (splits without public answers), "
                            f"not {args.task}")
        if args.lmms_eval or args.raw:
            raise UserError("--allow-unanswered: predictions are not scored; drop --lmms-eval/--raw")
    for flag in ("batch_size", "max_new_tokens", "max_samples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be at least 1, not {value}")
    if args.num_workers < 0:
        raise UserError(f"--num-workers: must be 0 or more, not {args.num_workers}")
    try:
        args.feature_cache_bytes = parse_size(args.feature_cache)
    except ValueError as e:
        raise UserError(f"--feature-cache: {e}") from None


def run(args) -> int:
    from eval.runner import evaluate, format_table, predict
    from vlm_grades.data import load_samples
    from vlm_grades.models import load_for_eval

    check_flags(args)
    easy = args.task.startswith("easyvqa") or args.task == "scenes"   # generated or packaged: no --data
    if not easy and not args.data:
        raise UserError(f"--data: task {args.task} needs a data source (folder, file or Hugging Face id)")
    split = args.split or ("test" if easy else "validation")
    kwargs = {"max_samples": args.max_samples, "allow_unanswered": args.allow_unanswered}
    if args.prompt:
        kwargs["prompt"] = args.prompt
    samples = load_samples(args.task, args.data, split=split, **kwargs)
    if not samples:
        raise UserError(f"--data: no {args.task} samples in split {split!r}")
    expected = submission_ids(args.task, args.data, split) if args.allow_unanswered else None
    adapter = load_for_eval(args.model)
    out = Path(args.out) if args.out else default_out(args.model, args.task)
    options = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_workers=args.num_workers,
                   progress=not args.no_progress, feature_cache=args.feature_cache_bytes)
    if args.allow_unanswered:
        result = predict(adapter, list(samples), args.task, out, submission_ids=expected[0] if expected else None,
                         **options)
        sub = result["submission"]
        print(f"predictions only (--allow-unanswered): {result['n']} questions answered, not scored")
        print(f"submission file {result['files']['submission']}: {sub['questions']} questions ({sub['answered']} "
              f"answered, {sub['empty']} empty)" + (f", the questions of {expected[1]}" if expected else ""))
    else:
        result = evaluate(adapter, list(samples), args.task, out, lmms_eval=args.lmms_eval, raw=args.raw,
                          spice=args.spice, spice_corenlp=args.spice_corenlp, **options)
        print(format_table(result))
    gen = result["generation"]
    print(f"{gen['samples']} samples in {gen['seconds']:.1f} s ({gen['samples_per_s']} samples/s); "
          f"files in {out}")
    return 0


def submission_ids(task: str, data: str, split: str) -> tuple[list[str], Path] | None:
    """The ids a submission must answer when they differ from the split's own (VQAv2 test-dev: all of test2015)."""
    if task != "vqav2":
        return None
    from vlm_grades.data.vqav2 import TEST_QUESTIONS, submission_question_ids

    found = submission_question_ids(data, split)
    if found is None and split.replace("-", "").startswith("testdev"):
        print(f"note: EvalAI's VQAv2 server wants every test2015 question answered, even for test-dev; "
              f"{TEST_QUESTIONS} is not in {data}, so the submission lists the test-dev questions only",
              file=sys.stderr)
    return found
