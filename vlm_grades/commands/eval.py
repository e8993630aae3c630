"""`vlm-grades eval`: greedy generation with a trained model over a benchmark split, predictions in the
official format plus a per-sample JSONL, then scoring (the same metrics as `vlm-grades score`)."""
from __future__ import annotations

from pathlib import Path

from vlm_grades.commands.score import add_scoring_flags, check_scoring_flags
from vlm_grades.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="generate answers with a model and score them", description=__doc__)
    p.add_argument("--task", required=True, choices=["vqav2", "gqa", "coco", "easyvqa", "easyvqa-caption"],
                   help="benchmark (easyvqa-caption: exact-match and colour/shape accuracy of the captions)")
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
    add_scoring_flags(p)
    p.set_defaults(func=run)


def default_out(model: str, task: str) -> Path:
    path = Path(model)
    if (path / "config.yaml").exists() and (path / "components.json").exists():
        return path / "eval"
    return Path(f"eval-{task}")


def run(args) -> int:
    from eval.runner import evaluate, format_table
    from vlm_grades.data import load_samples
    from vlm_grades.models import load_for_eval

    check_scoring_flags(args)
    for flag in ("batch_size", "max_new_tokens", "max_samples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be at least 1, not {value}")
    if args.num_workers < 0:
        raise UserError(f"--num-workers: must be 0 or more, not {args.num_workers}")
    easy = args.task.startswith("easyvqa")
    if not easy and not args.data:
        raise UserError(f"--data: task {args.task} needs a data source (folder, file or Hugging Face id)")
    split = args.split or ("test" if easy else "validation")
    kwargs = {"max_samples": args.max_samples}
    if args.prompt:
        kwargs["prompt"] = args.prompt
    samples = load_samples(args.task, args.data, split=split, **kwargs)
    if not samples:
        raise UserError(f"--data: no {args.task} samples in split {split!r}")
    adapter = load_for_eval(args.model)
    out = Path(args.out) if args.out else default_out(args.model, args.task)
    result = evaluate(adapter, list(samples), args.task, out, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, num_workers=args.num_workers,
                      progress=not args.no_progress, lmms_eval=args.lmms_eval, raw=args.raw,
                      spice=args.spice, spice_corenlp=args.spice_corenlp)
    print(format_table(result))
    gen = result["generation"]
    print(f"{gen['samples']} samples in {gen['seconds']:.1f} s ({gen['samples_per_s']} samples/s); "
          f"files in {out}")
    return 0
