"""Time `vlm-grades score` work on a synthetic VQAv2-format prediction file (default 1,000 questions):
reading the files, checking ids, and the official accuracy with its normalization.

    python benchmarks/scoring_speed.py [--questions 1000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from eval import formats, vqav2
from eval.runner import score_predictions

WORDS = ["yes", "no", "2", "two", "red", "a dog", "the cat", "t-shirt", "3.5", "1,000", "dont", "left",
         "Yes", "blue.", "black and white", "none", "(left)", "frisbee!", "tennis racket", "10"]


def make_files(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    anns, preds = [], []
    for qid in range(n):
        base = rng.choice(WORDS)
        answers = [base if rng.random() < 0.7 else rng.choice(WORDS) for _ in range(10)]
        anns.append({"question_id": qid, "image_id": qid // 3, "question_type": rng.choice(["what", "how many", "is the"]),
                     "answer_type": rng.choice(["yes/no", "number", "other"]), "multiple_choice_answer": base,
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]})
        preds.append({"question_id": qid, "answer": rng.choice(WORDS)})
    ann_path, pred_path = folder / "annotations.json", folder / "results.json"
    ann_path.write_text(json.dumps({"annotations": anns}))
    pred_path.write_text(json.dumps(preds))
    return ann_path, pred_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=1000, help="questions in the synthetic file")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (the median is reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ann_path, pred_path = make_files(Path(tmp), args.questions)
        total, metric = [], []
        for _ in range(args.repeats):
            vqav2.normalize.cache_clear()  # time a cold start, as a fresh `vlm-grades score` process has
            t0 = time.perf_counter()
            preds = formats.read_predictions("vqav2", pred_path)
            refs = vqav2.read_references(str(ann_path))
            t1 = time.perf_counter()
            result, _ = score_predictions("vqav2", preds, refs, pred_name=str(pred_path), ref_name=str(ann_path))
            t2 = time.perf_counter()
            total.append(t2 - t0)
            metric.append(t2 - t1)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"VQAv2 scoring of {args.questions:,} questions (median of {args.repeats}): "
          f"{1000 * median(total):.1f} ms in all (read + check + score), {1000 * median(metric):.1f} ms "
          f"for the metric; accuracy {result['score']:.2f}")


if __name__ == "__main__":
    main()
