r"""VQAv2 accuracy, exactly as the official evaluator (GT-Vision-Lab/VQA, vqaEval.py) computes it.

Per question: the mean over the ten leave-one-out subsets of the human answers of
min(1, matches among the other nine / 3). Answers and prediction are stripped (newlines and tabs
become spaces); only when the ten answers are not all identical do both go through the official
normalization (punctuation, periods, lowercase, number words, articles, contractions).
`lmms_eval=True` follows `vqav2_process_results` of lmms-eval 0.7.3 (its rule since 0.5.0): the
prediction and every one of the ten answers always go through its process_punctuation and
process_digit_article (so "Yes" matches ten "yes" and "two" matches ten "two"), with EvalAI's comma
rule `(?<=\d)(,)+(?=\d)` in place of the official `(\d)(,)(\d)` ("1,,000" becomes "1000").
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from eval.formats import mean100
from vlm_grades.errors import UserError

TASK = "vqav2"
LMMS_EVAL_VERSION = "0.7.3"   # the rule of every release from 0.5.0 on
PROTOCOLS = {"official": "official (answers and prediction normalized only when the ten answers differ)",
             "lmms-eval": f"lmms-eval {LMMS_EVAL_VERSION} (prediction and all ten answers always normalized, "
                          f"EvalAI's comma rule)"}
PRED_FIELDS = ("question_id", "answer")

# --- the official normalization -------------------------------------------------------------------

PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
# The official pattern: "(?!<=\d)" is a (vacuous) lookahead, not a lookbehind, so every period not
# followed by a digit goes; re.UNICODE was passed in the count position, so at most 32 of them.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
PERIOD_STRIP_COUNT = int(re.UNICODE)  # 32
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(,)+(?=\d)")   # lmms-eval's (EvalAI's): also "1,,000"
_ANY_PUNCT = re.compile("[" + re.escape("".join(PUNCT)) + ".]")


def _load_contractions() -> dict[str, str]:
    table = {}
    for line in (Path(__file__).parent / "vqa_contractions.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            src, dst = line.split("\t")
            table[src] = dst
    return table


CONTRACTIONS = _load_contractions()


def process_punctuation(text: str, comma: re.Pattern = COMMA_STRIP) -> str:
    """Each punctuation mark is deleted if it touches a space anywhere in the text (or the text has a
    digit-comma-digit, as `comma` finds it), else replaced by a space; then periods not followed by a
    digit are deleted."""
    if not _ANY_PUNCT.search(text):
        return text
    out = text
    has_digit_comma = comma.search(text) is not None
    for p in PUNCT:
        if p not in out:
            continue
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """Lowercase, split on whitespace, number words -> digits, drop articles, map contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


@functools.lru_cache(maxsize=1 << 16)  # answers repeat a lot across questions
def normalize(text: str) -> str:
    return process_digit_article(process_punctuation(text))


@functools.lru_cache(maxsize=1 << 16)
def normalize_lmms_eval(text: str) -> str:
    """lmms-eval's EvalAIAnswerProcessor.process_punctuation then process_digit_article."""
    return process_digit_article(process_punctuation(text, EVALAI_COMMA_STRIP))


def _strip(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


# --- accuracy -------------------------------------------------------------------------------------

def question_accuracy(prediction: str, answers: list[str], lmms_eval: bool = False) -> float:
    """The per-question accuracy in [0, 1] (ten human answers, leave-one-out), official or lmms-eval's."""
    answers = [_strip(a) for a in answers]
    pred = _strip(prediction)
    if lmms_eval:
        answers = [normalize_lmms_eval(a) for a in answers]
        pred = normalize_lmms_eval(pred)
    elif len(set(answers)) > 1:
        answers = [normalize(a) for a in answers]
        pred = normalize(pred)
    matches = sum(a == pred for a in answers)
    if not answers:
        return 0.0
    # leave answer i out: the other answers match `matches - 1` times if answer i matched, else `matches`
    accs = [min(1, float(matches - (a == pred)) / 3) for a in answers]
    return float(sum(accs)) / len(accs)


def score(predictions: dict[str, str], references: dict[str, dict[str, Any]],
          lmms_eval: bool = False) -> tuple[dict[str, Any], dict[str, float]]:
    """Accuracy (x100) overall, per answer type and per question type, over the references' ids
    (every one must have a prediction). Returns (summary, per-question accuracy in [0, 1])."""
    per_sample: dict[str, float] = {}
    by_answer: dict[str, list[float]] = {}
    by_question: dict[str, list[float]] = {}
    for qid, ref in references.items():
        acc = question_accuracy(predictions[qid], ref["answers"], lmms_eval=lmms_eval)
        per_sample[qid] = acc
        by_answer.setdefault(ref.get("answer_type") or "unknown", []).append(acc)
        by_question.setdefault(ref.get("question_type") or "unknown", []).append(acc)
    summary = {
        "accuracy": mean100(list(per_sample.values())) if per_sample else 0.0,
        "per_answer_type": {k: mean100(v) for k, v in sorted(by_answer.items())},
        "per_question_type": {k: mean100(v) for k, v in sorted(by_question.items())},
        "n": len(per_sample),
        "protocol": "lmms-eval" if lmms_eval else "official",
        **({"lmms_eval_version": LMMS_EVAL_VERSION} if lmms_eval else {}),
    }
    return summary, per_sample


# --- references -----------------------------------------------------------------------------------

def _answer_strings(answers: Any, where: str) -> list[str]:
    if not isinstance(answers, (list, tuple)) or not answers:
        raise UserError(f"{where}: 'answers' must be a non-empty list, got {str(answers)[:80]!r}")
    out = []
    for a in answers:
        if isinstance(a, dict):
            a = a.get("answer")
        if not isinstance(a, str):
            raise UserError(f"{where}: an answer is not a string: {str(a)[:80]!r}")
        out.append(a)
    return out


def references_from_rows(rows: list[dict], name: str) -> dict[str, dict[str, Any]]:
    """Rows with question_id, answers (dicts with 'answer', or strings), answer_type, question_type:
    the official annotations or the lmms-lab/VQAv2 columns."""
    from eval.formats import key_of

    refs: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "question_id" not in row or "answers" not in row:
            raise UserError(f"{name}: annotation {i} has no question_id/answers")
        qid = key_of(row["question_id"], f"{name}: annotation {i}")
        if qid in refs:
            raise UserError(f"{name}: duplicate question_id {row['question_id']!r}")
        refs[qid] = {"answers": _answer_strings(row["answers"], f"{name}: question {qid}"),
                     "answer_type": row.get("answer_type"), "question_type": row.get("question_type")}
    if not refs:
        raise UserError(f"{name}: no annotations")
    return refs


def locate(path: Path, split: str | None) -> tuple[Path, str | None]:
    """The annotations JSON of `split` in an official folder (found as `vlm-grades train --data` finds it; without
    a split, the folder's only one), else `path` itself. Returns (file or folder, the split still to pick)."""
    from eval.formats import one_split
    from vlm_grades.data.files import find_file, official_files
    from vlm_grades.data.vqav2 import annotations_name

    if not path.is_dir():
        return path, split
    if split:
        found = find_file(path, [annotations_name(split)], deep=False)
        return (found, None) if found else (path, split)
    found = one_split(path, official_files(path, "v2_mscoco_*_annotations.json"), "v2_mscoco_", "_annotations.json")
    return found or path, None


def read_references(path: str, questions: str | None = None, split: str | None = None) -> dict[str, dict]:
    """Official annotations JSON ({"annotations": [...]}) or a Hugging Face layout (lmms-lab/VQAv2
    columns), or a folder holding either. `questions`: the official questions JSON, checked against the
    annotations' ids."""
    from eval.formats import is_table, read_json, read_table

    path, split = locate(Path(path), split)
    if is_table(path):
        rows = read_table(path, ["question_id", "answers", "answer_type", "question_type"], split=split)
    else:
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise UserError(f"{path}: not a VQAv2 annotations file (expected an object with an "
                            f"'annotations' list)")
        rows = data["annotations"]
    refs = references_from_rows(rows, str(path))
    if questions:
        qdata = read_json(questions)
        if not isinstance(qdata, dict) or not isinstance(qdata.get("questions"), list):
            raise UserError(f"{questions}: not a VQAv2 questions file (expected an object with a "
                            f"'questions' list)")
        from eval.formats import key_of
        qids = {key_of(q.get("question_id") if isinstance(q, dict) else None, f"{questions}: question")
                for q in qdata["questions"]}
        if qids != set(refs):
            raise UserError(f"{questions}: its {len(qids)} question ids do not match the {len(refs)} "
                            f"of {path} ({len(qids - set(refs))} only in questions, "
                            f"{len(set(refs) - qids)} only in annotations)")
    return refs


def references_from_samples(samples) -> dict[str, dict[str, Any]]:
    refs = {}
    for s in samples:
        answers = s.meta.get("answers") or s.targets
        refs[s.id] = {"answers": _answer_strings(answers, f"sample {s.id}"),
                      "answer_type": s.meta.get("answer_type"), "question_type": s.meta.get("question_type")}
    return refs
