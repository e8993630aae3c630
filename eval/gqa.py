"""GQA accuracy as the official eval.py computes it: exact match over balanced questions, split into
binary and open ("open" when the structural type is "query"), and per structural and semantic type.

The official script compares the strings as they are (prediction == answer): the default. `lmms_eval=True`
compares as lmms-eval (every release from 0.3 to 0.7.3) does: its `exact_match` with gqa.yaml's ignore_case
and ignore_punctuation, after its strip of the generated text: the prediction is stripped, then prediction
and answer are lowercased and every `string.punctuation` character is removed from both.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from eval.formats import mean100
from eval.vqav2 import LMMS_EVAL_VERSION
from vlm_grades.errors import UserError

TASK = "gqa"
PROTOCOLS = {"official": "official (prediction == answer)",
             "lmms-eval": f"lmms-eval {LMMS_EVAL_VERSION} (exact_match after stripping the prediction, "
                          f"ignore_case, ignore_punctuation)"}
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def lmms_eval_form(text: str) -> str:
    """lmms-eval's ignore_case and ignore_punctuation: lowercase, then every string.punctuation character gone."""
    return text.lower().translate(_NO_PUNCTUATION)


def lmms_eval_match(prediction: str, answer: str) -> bool:
    """lmms-eval strips the generated text (not the answer) before its exact_match."""
    return lmms_eval_form(prediction.strip()) == lmms_eval_form(answer)


def score(predictions: dict[str, str], references: dict[str, dict[str, Any]],
          lmms_eval: bool = False) -> tuple[dict[str, Any], dict[str, float]]:
    """Over the balanced references (each must have a prediction). Returns (summary x100, {id: 0/1})."""
    per_sample: dict[str, float] = {}
    split: dict[str, list[float]] = {"binary": [], "open": []}
    structural: dict[str, list[float]] = {}
    semantic: dict[str, list[float]] = {}
    for qid, ref in references.items():
        if not ref["is_balanced"]:
            continue
        pred, answer = predictions[qid], ref["answer"]
        correct = 1.0 if (lmms_eval_match(pred, answer) if lmms_eval else pred == answer) else 0.0
        per_sample[qid] = correct
        split["open" if ref["structural"] == "query" else "binary"].append(correct)
        structural.setdefault(ref["structural"] or "unknown", []).append(correct)
        semantic.setdefault(ref["semantic"] or "unknown", []).append(correct)
    summary = {
        "accuracy": mean100(list(per_sample.values())),
        "binary": mean100(split["binary"]),
        "open": mean100(split["open"]),
        "per_structural_type": {k: mean100(v) for k, v in sorted(structural.items())},
        "per_semantic_type": {k: mean100(v) for k, v in sorted(semantic.items())},
        "n": len(per_sample), "n_binary": len(split["binary"]), "n_open": len(split["open"]),
        "unbalanced_skipped": sum(1 for r in references.values() if not r["is_balanced"]),
        "protocol": "lmms-eval" if lmms_eval else "official",
        **({"lmms_eval_version": LMMS_EVAL_VERSION} if lmms_eval else {}),
    }
    return summary, per_sample


def balanced_ids(references: dict[str, dict]) -> set[str]:
    return {k for k, r in references.items() if r["is_balanced"]}


def _reference(row: dict, where: str) -> dict[str, Any]:
    if not isinstance(row, dict) or not isinstance(row.get("answer"), str):
        raise UserError(f"{where}: no 'answer' string")
    types = row.get("types") or {}
    if not isinstance(types, dict):
        raise UserError(f"{where}: 'types' is not an object")
    balanced = row.get("isBalanced", row.get("is_balanced"))
    return {"answer": row["answer"], "is_balanced": True if balanced is None else bool(balanced),
            "structural": types.get("structural"), "semantic": types.get("semantic")}


def _splits_in(folder: Path) -> set[str]:
    """The GQA splits a folder holds: official `<split>_questions.json` files, lmms-lab `<split>_instructions`."""
    names = {p.name[:-len("_instructions")] for p in folder.glob("*_instructions") if p.is_dir()}
    for pattern in ("*_questions.json", "*/*_questions.json", "*_questions"):
        names |= {p.name.split("_questions")[0] for p in folder.glob(pattern)}
    return names


def locate(path: Path, split: str | None) -> tuple[Path, str | None]:
    """Where the questions of `split` are, found as `vlm-grades train --data` finds them: the official questions
    JSON (or its shards folder), else the `<split>_instructions` config of an lmms-lab/GQA folder, else `path`
    itself. Returns (file or folder, the split still to pick inside a Hugging Face layout)."""
    from vlm_grades.data import gqa as data

    if not path.is_dir():
        return path, split
    if split is None:
        splits = _splits_in(path)
        if len(splits) > 1:
            raise UserError(f"{path}: holds several splits; choose one with --split ({', '.join(sorted(splits))})")
        if not splits:
            return path, None           # the instructions folder itself, or parquet files
        split = splits.pop()
    name = data.full_split(split)
    official = data.find_official(path, name)
    if official is not None:
        return official, None
    if (path / f"{name}_instructions").is_dir():
        return path / f"{name}_instructions", None
    return path, split


def read_references(path: str, split: str | None = None) -> dict[str, dict[str, Any]]:
    """The official questions JSON ({question id: {answer, isBalanced, types, ...}}) or a Hugging Face
    layout with the lmms-lab/GQA *_instructions columns (id, answer, isBalanced, types); a folder holding
    either (see `locate`)."""
    from eval.formats import is_table, key_of, read_json, read_table
    from vlm_grades.data.gqa import read_questions

    where, split = locate(Path(path), split)
    refs: dict[str, dict[str, Any]] = {}
    if where.is_dir() and where.name.endswith("_questions"):     # the official shards folder
        data = read_questions(where)
    elif is_table(where):
        for i, row in enumerate(read_table(where, ["id", "answer", "isBalanced", "types"], split=split,
                                           optional=("isBalanced", "types"))):
            qid = key_of(row.get("id"), f"{where}: row {i}")
            if qid in refs:
                raise UserError(f"{where}: duplicate question id {qid}")
            refs[qid] = _reference(row, f"{where}: question {qid}")
        data = {}
    else:
        data = read_json(where)
        if not isinstance(data, dict):
            raise UserError(f"{where}: not a GQA questions file (expected an object keyed by question id)")
    for qid, row in data.items():
        refs[key_of(qid, str(where))] = _reference(row, f"{where}: question {qid}")
    if not refs:
        raise UserError(f"{where}: no questions")
    return refs


def references_from_samples(samples) -> dict[str, dict[str, Any]]:
    refs = {}
    for s in samples:
        if not s.targets:
            raise UserError(f"gqa sample {s.id}: no answer to score against")
        types = s.meta.get("types") or {}
        balanced = s.meta.get("is_balanced")
        refs[s.id] = {"answer": s.targets[0], "is_balanced": True if balanced is None else bool(balanced),
                      "structural": types.get("structural"), "semantic": types.get("semantic")}
    return refs
