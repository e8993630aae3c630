"""easy-VQA accuracy: exact match overall and per answer kind (shape, color, yes/no).

Question ids are the question's index in the easy-vqa package's list for its split (as the data
reader numbers them). Predictions are stripped, lowercased and lose a trailing period unless `raw`.
"""
from __future__ import annotations

import json
from typing import Any

from eval.formats import mean100
from vlm_grades.data.easyvqa import COLORS, SHAPES, answer_kind  # the data set's vocabulary, one place
from vlm_grades.errors import UserError

TASK = "easyvqa"
SPLITS = ("test", "train")


def preprocess(prediction: str) -> str:
    return prediction.strip().rstrip(".").strip().lower()


def score(predictions: dict[str, str], references: dict[str, dict[str, Any]],
          raw: bool = False) -> tuple[dict[str, Any], dict[str, float]]:
    per_sample: dict[str, float] = {}
    kinds: dict[str, list[float]] = {}
    for qid, ref in references.items():
        pred = predictions[qid] if raw else preprocess(predictions[qid])
        correct = 1.0 if pred == ref["answer"] else 0.0
        per_sample[qid] = correct
        kinds.setdefault(ref.get("kind") or answer_kind(ref["answer"]), []).append(correct)
    summary = {"accuracy": mean100(list(per_sample.values())),
               "per_kind": {k: mean100(v) for k, v in sorted(kinds.items())},
               "n": len(per_sample),
               "preprocessing": "raw" if raw else "strip trailing period, lowercase"}
    return summary, per_sample


def score_captions(predictions: dict[str, str], references: dict[str, dict[str, Any]],
                   raw: bool = False) -> tuple[dict[str, Any], dict[str, float]]:
    """The easy-VQA caption task ("a red triangle"): exact match, and how often the caption names the
    right colour and the right shape."""
    per_sample: dict[str, float] = {}
    color, shape = [], []
    for k, ref in references.items():
        pred = predictions[k] if raw else preprocess(predictions[k])
        per_sample[k] = 1.0 if pred == ref["caption"] else 0.0
        words, ref_words = set(pred.split()), ref["caption"].split()
        color.extend(float(w in words) for w in ref_words if w in COLORS)
        shape.extend(float(w in words) for w in ref_words if w in SHAPES)
    summary = {"accuracy": mean100(list(per_sample.values())), "color": mean100(color),
               "shape": mean100(shape), "n": len(per_sample),
               "preprocessing": "raw" if raw else "strip trailing period, lowercase"}
    return summary, per_sample


def caption_references_from_samples(samples) -> dict[str, dict[str, Any]]:
    refs = {}
    for s in samples:
        if not s.targets:
            raise UserError(f"easyvqa-caption sample {s.id}: no caption to score against")
        refs[s.id] = {"caption": s.targets[0]}
    return refs


def _from_rows(rows: list, name: str) -> dict[str, dict[str, Any]]:
    refs = {}
    for n, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) < 2 or not isinstance(row[1], str):
            raise UserError(f"{name}: question {n} is not a [question, answer, image_id] list: "
                            f"{json.dumps(row)[:80]}")
        refs[str(n)] = {"answer": row[1], "kind": answer_kind(row[1])}
    if not refs:
        raise UserError(f"{name}: no questions")
    return refs


def read_references(path: str | None = None, split: str = "test") -> dict[str, dict[str, Any]]:
    """The easy-vqa package's questions for `split` (default), or a questions JSON file in the
    package's format: a list of [question, answer, image_id]."""
    if path:
        from eval.formats import read_json

        data = read_json(path)
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of [question, answer, image_id]")
        return _from_rows(data, str(path))
    if split not in SPLITS:
        raise UserError(f"--split: the easy-vqa package has splits {', '.join(SPLITS)}, not {split!r}")
    try:
        import easy_vqa
    except ImportError:
        raise UserError("the easy-vqa package is not installed (pip install easy-vqa==1.0)") from None
    questions, answers, image_ids = (easy_vqa.get_test_questions() if split == "test"
                                     else easy_vqa.get_train_questions())
    return _from_rows(list(zip(questions, answers, image_ids)), f"easy-vqa {split} split")


def references_from_samples(samples) -> dict[str, dict[str, Any]]:
    refs = {}
    for s in samples:
        if not s.targets:
            raise UserError(f"easyvqa sample {s.id}: no answer to score against")
        refs[s.id] = {"answer": s.targets[0], "kind": s.meta.get("answer_kind") or answer_kind(s.targets[0])}
    return refs
