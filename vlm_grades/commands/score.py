"""`vlm-grades score`: score a prediction file (official result format, from any model) against the
official annotation files or a Hugging Face layout."""
from __future__ import annotations

import argparse
from pathlib import Path

from vlm_grades.errors import UserError

REFERENCE_HELP = (
    "vqav2: annotations JSON (or --annotations), or a Hugging Face layout with the lmms-lab/VQAv2 columns; "
    "gqa: questions JSON keyed by question id (or --questions), or lmms-lab/GQA *_instructions parquet/folder; "
    "coco: captions_*.json, Karpathy dataset_coco.json, or lmms-lab/COCO-Caption2017 parquet/folder; "
    "or a folder holding one of them: the folders `train --data` takes; "
    "easyvqa: optional questions JSON ([question, answer, image_id] lists), default the easy-vqa package")


def add_scoring_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by `score` and `eval`."""
    protocol = p.add_mutually_exclusive_group()
    protocol.add_argument("--lmms-eval", action="store_true",
                          help="score as lmms-eval does (default: the official metric). vqav2: the prediction always "
                               "goes through its answer processor (lowercase, punctuation, number words, articles), "
                               "the ten answers only when they differ (officially neither is normalized when the "
                               "ten agree); gqa: the prediction is stripped, trailing periods dropped, lowercased "
                               "(officially prediction == answer)")
    protocol.add_argument("--raw", action="store_true",
                          help="easyvqa: compare predictions verbatim (default: strip a trailing period and "
                               "lowercase); gqa: the official comparison, already the default")
    spice = p.add_mutually_exclusive_group()
    spice.add_argument("--spice", dest="spice", action="store_true", default=None,
                       help="coco: require SPICE (error if its CoreNLP jars are missing); default: run it when present")
    spice.add_argument("--no-spice", dest="spice", action="store_false", help="coco: skip SPICE")
    p.add_argument("--spice-corenlp", metavar="DIR",
                   help="coco: folder holding stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar "
                        "for SPICE (also read from $VLM_GRADES_SPICE_CORENLP)")


def check_scoring_flags(args) -> None:
    if args.lmms_eval and args.task not in ("vqav2", "gqa"):
        raise UserError(f"--lmms-eval: only for vqav2 and gqa, not {args.task}")


def register(subparsers) -> None:
    p = subparsers.add_parser("score", help="score a prediction file against reference annotations",
                              description=__doc__)
    p.add_argument("--task", required=True, choices=["vqav2", "gqa", "coco", "easyvqa"], help="benchmark")
    p.add_argument("--predictions", required=True, metavar="FILE",
                   help="results JSON: vqav2/easyvqa [{question_id, answer}], gqa [{questionId, prediction}], "
                        "coco [{image_id, caption}]")
    p.add_argument("--references", metavar="PATH", help=REFERENCE_HELP)
    p.add_argument("--annotations", metavar="FILE", help="vqav2: the official annotations JSON (same as --references)")
    p.add_argument("--questions", metavar="FILE",
                   help="vqav2: the official questions JSON, checked against the annotations; "
                        "gqa: the questions JSON (same as --references)")
    p.add_argument("--split", help="split to read from a folder, Hugging Face layout or Karpathy file (default: "
                                   "the folder's only split; coco Karpathy: test; easyvqa package: test or train, "
                                   "default test)")
    p.add_argument("--partial", action="store_true",
                   help="score only the ids present in both files and report how many were missing "
                        "(default: mismatched id sets are an error)")
    p.add_argument("--out", metavar="FILE", help="write the scores as JSON to FILE")
    add_scoring_flags(p)
    p.set_defaults(func=run)


def load_references(args) -> tuple[dict, str]:
    """The references of args.task from the flags, and the file or folder they came from."""
    task = args.task
    if task == "easyvqa":
        from eval import easyvqa
        split = args.split or "test"
        return (easyvqa.read_references(args.references, split=split),
                str(args.references) if args.references else f"the easy-vqa {split} split")
    from eval import coco, gqa, vqav2

    if task == "vqav2":
        if args.references and args.annotations:
            raise UserError("--references/--annotations: give one of them")
        path = args.references or args.annotations
        if not path:
            raise UserError("--annotations: vqav2 needs the annotations JSON or --references PATH")
    elif task == "gqa":
        path = args.references or args.questions
        if not path:
            raise UserError("--references: gqa needs the questions JSON (or a Hugging Face layout)")
    else:
        path = args.references
        if not path:
            raise UserError("--references: coco needs captions_*.json, dataset_coco.json or a Hugging Face layout")
    module = {"vqav2": vqav2, "gqa": gqa, "coco": coco}[task]
    where, split = module.locate(Path(path), args.split)   # a folder: the file in it, named in the output
    if task == "vqav2":
        return vqav2.read_references(str(where), questions=args.questions, split=split), str(where)
    return module.read_references(str(where), split=split), str(where)


def run(args) -> int:
    from eval import formats
    from eval.runner import format_table, score_predictions

    check_scoring_flags(args)
    predictions = formats.read_predictions(args.task, args.predictions)
    references, ref_name = load_references(args)
    result, _ = score_predictions(args.task, predictions, references, partial=args.partial,
                                  pred_name=str(args.predictions), ref_name=ref_name, lmms_eval=args.lmms_eval,
                                  raw=args.raw, spice=args.spice, spice_corenlp=args.spice_corenlp)
    result["predictions"] = str(args.predictions)
    result["references"] = ref_name
    print(f"references: {ref_name}")
    print(format_table(result))
    if args.out:
        from vlm_grades.training.run_folder import write_json_atomic
        write_json_atomic(args.out, result)
        print(f"scores written to {args.out}")
    return 0
