"""VQAv2: the official questions + annotations JSON with the COCO image folder, or a Hugging Face
data set with the lmms-lab/VQAv2 columns (question_type, multiple_choice_answer, answers, image_id,
answer_type, question_id, question, image).

Training target: multiple_choice_answer (targets[0]); the ten human answers go to meta["answers"]
for the official accuracy. Questions without annotations (test-dev) load with empty targets, for
prediction only, when allow_unanswered is set.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

from vlm_grades.data import hf
from vlm_grades.data.files import announce, find_file, pick_image_dir, read_json, require_key
from vlm_grades.data.issues import Issues
from vlm_grades.data.prompts import render
from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError

RECORD = "question"
HUB_ID = "lmms-lab/VQAv2"
# user split -> (questions/annotations infix, image folder)
SPLITS = {
    "train": ("train2014", "train2014"), "val": ("val2014", "val2014"), "validation": ("val2014", "val2014"),
    "test-dev": ("test-dev2015", "test2015"), "testdev": ("test-dev2015", "test2015"),
    "test": ("test2015", "test2015"),
}
HUB_SPLITS = {"val": "validation", "val2014": "validation", "test-dev": "testdev", "test-dev2015": "testdev",
              "test2015": "test", "train2014": "train"}
EXPECTED = ("v2_OpenEnded_mscoco_{q}_questions.json (+ v2_mscoco_{q}_annotations.json) and an image folder "
            "{img}/COCO_{img}_<image_id:012d>.jpg, or a Hugging Face save_to_disk folder / parquet files "
            "with the lmms-lab/VQAv2 columns")


def _infixes(split: str) -> tuple[str, str]:
    if split in SPLITS:
        return SPLITS[split]
    return split, split.replace("test-dev", "test")   # e.g. "val2014", "test-dev2015"


def annotations_name(split: str) -> str:
    return f"v2_mscoco_{_infixes(split)[0]}_annotations.json"


def expected(split: str) -> str:
    q, img = _infixes(split)
    return EXPECTED.format(q=q, img=img)


def _answers(value) -> list[str] | None:
    """The ten answers as strings (from [{answer, ...}] or [str]); None if malformed."""
    if not isinstance(value, list):
        return None
    out = []
    for a in value:
        if isinstance(a, dict) and isinstance(a.get("answer"), str):
            out.append(a["answer"])
        elif isinstance(a, str):
            out.append(a)
        else:
            return None
    return out


def _sample(qid, image, question: str, ann: dict | None, template: str) -> Sample:
    meta = {"question_id": qid, "image_id": None, "question": question, "answers": [],
            "answer_type": None, "question_type": None}
    targets: list[str] = []
    if ann is not None:
        targets = [ann["multiple_choice_answer"]]
        meta.update(answers=ann["answers"], answer_type=ann.get("answer_type"),
                    question_type=ann.get("question_type"))
    return Sample(id=str(qid), image=image, prompt=render(template, question), targets=targets,
                  task="vqav2", meta=meta)


# ---------------------------------------------------------------- official JSON

def _index_annotations(path: Path, issues: Issues) -> dict:
    """question_id -> raw annotation (checked when its question is reached: --max-samples stays cheap)."""
    anns = require_key(read_json(path), "annotations", path)
    index = {}
    for i, a in enumerate(anns):
        qid = a.get("question_id") if isinstance(a, dict) else None
        if qid is None:
            issues.skip("missing field", f"missing field 'question_id' in annotation #{i}", path)
            continue
        index[qid] = a
    return index


def _clean_annotation(a: dict, qid) -> tuple[dict | None, tuple[str, str] | None]:
    """(annotation with answers as strings, None) or (None, (issue kind, text))."""
    missing = next((k for k in ("multiple_choice_answer", "answers") if a.get(k) is None), None)
    if missing:
        return None, ("missing field", f"missing field {missing!r} in annotation {qid}")
    answers = _answers(a["answers"])
    if answers is None or not isinstance(a["multiple_choice_answer"], str):
        return None, ("bad record", f"malformed answers in annotation {qid}")
    return {**a, "answers": answers}, None


def _image_name(img_folder: str, image_id: int) -> list[str]:
    return [f"COCO_{img_folder}_{image_id:012d}.jpg", f"{image_id:012d}.jpg"]


def _searched(questions_path: Path, data_root: Path | None) -> list[Path]:
    """The folders the user pointed at: the questions file's folder, then the --data folder above it."""
    folders = [questions_path.parent]
    if data_root is not None:
        data_root = data_root if data_root.is_dir() else data_root.parent
        if data_root.resolve() != folders[0].resolve():
            folders.append(data_root)
    return folders


def load_official(questions_path: Path, split: str, issues: Issues, template: str, *, shuffle: bool, seed: int,
                  allow_unanswered: bool, image_dir: str | None, data_root: Path | None = None) -> Iterator[Sample]:
    """data_root: the folder (or file) the user named; annotations and images are looked for there and in
    the questions file's folder, never above it (a sibling folder's annotations would score silently)."""
    q_infix, img_folder = _infixes(split)
    root = questions_path.parent
    searched = _searched(questions_path, data_root)
    ann_name = annotations_name(split)
    ann_path = find_file(root, [ann_name]) or next(
        (p for folder in searched[1:] if (p := find_file(folder, [ann_name], deep=False))), None)
    if ann_path is None and not allow_unanswered:
        where = f"next to {questions_path.name}" if len(searched) == 1 else f"there or next to {questions_path}"
        raise UserError(f"{searched[-1]}: {ann_name} not found {where}; "
                        f"`vlm-grades eval --allow-unanswered` predicts without answers (no score)")
    questions = require_key(read_json(questions_path), "questions", questions_path)
    anns = _index_annotations(ann_path, issues) if ann_path else {}

    def path_in(folder: Path, q) -> Path | None:
        image_id = q.get("image_id") if isinstance(q, dict) else None
        if not isinstance(image_id, int):
            return None
        for name in _image_name(img_folder, image_id):
            if (folder / name).is_file():
                return folder / name
        return None

    if image_dir:
        folders = [Path(image_dir), Path(image_dir) / img_folder]
    else:
        folders = [b / sub for b in searched for sub in
                   (img_folder, f"images/{img_folder}", f"Images/{img_folder}", "images", "")]
    folder = pick_image_dir(folders, questions[:20], path_in,
                            f"{root}/{img_folder}/COCO_{img_folder}_<image_id:012d>.jpg")
    announce(f"vqav2 {split}: questions {questions_path}, annotations "
             f"{ann_path or 'none (questions only, for prediction)'}, images {folder}")

    order = list(range(len(questions)))
    if shuffle:
        random.Random(seed).shuffle(order)
    image_of: dict = {}    # image id -> path (about five questions share an image)
    for i in order:
        q = questions[i]
        qid = q.get("question_id") if isinstance(q, dict) else None
        if qid is None:
            issues.skip("missing field", f"missing field 'question_id' in question #{i}", questions_path)
            continue
        missing = next((k for k in ("image_id", "question") if q.get(k) is None), None)
        if missing:
            issues.skip("missing field", f"missing field {missing!r} in question {qid}", questions_path)
            continue
        if not isinstance(q["image_id"], int):
            issues.skip("bad record", f"image_id {q['image_id']!r} is not a number in question {qid}", questions_path)
            continue
        ann = None
        if ann_path is not None:
            if qid not in anns:
                issues.skip("no annotation", f"question {qid} has no annotation in {ann_path.name}", ann_path)
                continue
            ann, problem = _clean_annotation(anns[qid], qid)
            if problem:
                issues.skip(*problem, ann_path)
                continue
        image_id = q["image_id"]
        if image_id not in image_of:
            image_of[image_id] = path_in(folder, q) or folder / _image_name(img_folder, image_id)[0]
        image = image_of[image_id]
        sample = _sample(qid, image, q["question"], ann, template)
        sample.meta["image_id"] = q["image_id"]
        yield sample


# ---------------------------------------------------------------- Hugging Face

def load_hf(source: str, split: str, issues: Issues, template: str, *, shuffle: bool, seed: int,
            streaming: bool, allow_unanswered: bool, config: str | None = None) -> Iterator[Sample]:
    ds = hf.open_source(source, hf.split_names(split, HUB_SPLITS.get(split)),
                        config, streaming)
    columns = set(getattr(ds, "column_names", None) or [])
    if columns and not ({"question_id", "question", "image"} <= columns
                        and columns & {"multiple_choice_answer", "answers"}):
        raise UserError(f"{source}: not a VQAv2 data set: expected the lmms-lab/VQAv2 columns "
                        f"(question_id, question, image, multiple_choice_answer, answers, ...), found "
                        f"{', '.join(sorted(columns))}")
    if shuffle:
        ds = hf.shuffled(ds, seed)
    for n, row in enumerate(ds):
        qid = row.get("question_id")
        if qid is None:
            issues.skip("missing field", f"missing field 'question_id' in row {n}", source)
            continue
        if not row.get("question"):
            issues.skip("missing field", f"missing field 'question' in question {qid}", source)
            continue
        image = hf.image_ref(row.get("image"))
        if image is None:
            issues.skip("missing image", f"missing image: no image in row of question {qid}", source)
            continue
        ann = None
        mca, answers = row.get("multiple_choice_answer"), row.get("answers")
        if mca or answers:
            answers = _answers(answers)
            if not mca or answers is None:
                issues.skip("bad record", f"malformed answers in question {qid}", source)
                continue
            ann = {"multiple_choice_answer": mca, "answers": answers, "answer_type": row.get("answer_type"),
                   "question_type": row.get("question_type")}
        elif not allow_unanswered:
            issues.skip("unanswered", f"question {qid} has no answers (pass allow_unanswered to load "
                                          f"for prediction only)", source)
            continue
        sample = _sample(qid, image, row["question"], ann, template)
        sample.meta["image_id"] = row.get("image_id")
        yield sample


# ---------------------------------------------------------------- dispatch

def find_official(path: Path, split: str) -> Path | None:
    if path.is_file():
        return path if path.suffix == ".json" else None
    q_infix, _ = _infixes(split)
    return find_file(path, [f"v2_OpenEnded_mscoco_{q_infix}_questions.json"])


# ---------------------------------------------------------------- submissions

TEST_QUESTIONS = "v2_OpenEnded_mscoco_test2015_questions.json"


def submission_question_ids(source: str, split: str) -> tuple[list[str], Path] | None:
    """For test-dev and test: the question ids EvalAI's VQAv2 server wants answered (every question of
    v2_OpenEnded_mscoco_test2015_questions.json, test-dev being part of it) and that file, looked for only
    where the user pointed; None for another split or when the file is not there."""
    if _infixes(split)[0] not in ("test-dev2015", "test2015"):
        return None
    path = Path(source).expanduser()
    if not path.exists():
        return None
    found = find_file(path if path.is_dir() else path.parent, [TEST_QUESTIONS])
    if found is None:
        return None
    ids = []
    for i, q in enumerate(require_key(read_json(found), "questions", found)):
        if not isinstance(q, dict) or q.get("question_id") is None:
            raise UserError(f"{found}: question #{i} has no question_id")
        ids.append(str(q["question_id"]))
    return ids, found
