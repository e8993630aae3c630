"""GQA: the official questions JSON keyed by question id ({imageId, question, answer, fullAnswer,
isBalanced, types}) with `images/{imageId}.jpg`, or the lmms-lab/GQA configs `<split>_instructions`
(id, imageId, question, answer, fullAnswer, ...) joined by imageId to `<split>_images` (id, image).

Splits are named like the files: "testdev_balanced", "val_balanced", "train_all", ...; a bare "val"
(or "validation") means "val_balanced", "test-dev" means "testdev_balanced".
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

from vlm_grades.data import hf
from vlm_grades.data.files import find_file, pick_image_dir, read_json
from vlm_grades.data.issues import Issues
from vlm_grades.data.prompts import render
from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError

RECORD = "question"
HUB_ID = "lmms-lab/GQA"
EXPECTED = ("{s}_questions.json (a JSON object keyed by question id) and images/<imageId>.jpg, or Hugging Face "
            "folders {s}_instructions and {s}_images (lmms-lab/GQA configs, save_to_disk or parquet)")


def full_split(split: str) -> str:
    split = split.replace("-", "")            # "test-dev" -> "testdev"
    split = "val" + split[len("validation"):] if split.startswith("validation") else split
    return split if split.endswith(("_balanced", "_all")) else f"{split}_balanced"


def expected(split: str) -> str:
    return EXPECTED.format(s=full_split(split))


def _sample(qid, image, rec: dict, template: str) -> Sample:
    answer = rec.get("answer")
    return Sample(
        id=str(qid), image=image, prompt=render(template, rec["question"]),
        targets=[answer] if answer is not None else [], task="gqa",
        meta={"question_id": str(qid), "image_id": rec["imageId"], "question": rec["question"],
              "full_answer": rec.get("fullAnswer"), "is_balanced": rec.get("isBalanced"),
              "types": rec.get("types")})


def _missing(rec, allow_unanswered: bool) -> str | None:
    if not isinstance(rec, dict):
        return "imageId"
    required = ("imageId", "question") if allow_unanswered else ("imageId", "question", "answer")
    return next((k for k in required if rec.get(k) is None), None)


def _kind(missing: str) -> str:
    """A question without its answer is what a test split looks like: Issues points to --allow-unanswered."""
    return "unanswered" if missing == "answer" else "missing field"


# ---------------------------------------------------------------- official JSON

def read_questions(path: Path) -> dict:
    """The questions JSON, or a folder of its shards (train_all_questions/), as one dict keyed by question id."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]   # train_all_questions/ is sharded
    questions: dict = {}
    for f in files:
        data = read_json(f)
        if not isinstance(data, dict):
            raise UserError(f"{f}: expected a JSON object keyed by question id")
        questions.update(data)
    return questions


def load_official(questions_path: Path, split: str, issues: Issues, template: str, *, shuffle: bool, seed: int,
                  allow_unanswered: bool, image_dir: str | None) -> Iterator[Sample]:
    questions = read_questions(questions_path)
    qids = list(questions)
    root = questions_path.parent

    def path_in(folder: Path, rec) -> Path | None:
        image_id = rec.get("imageId") if isinstance(rec, dict) else None
        if image_id is None:
            return None
        for ext in (".jpg", ".png", ".jpeg"):
            if (folder / f"{image_id}{ext}").is_file():
                return folder / f"{image_id}{ext}"
        return None

    if image_dir:
        folders = [Path(image_dir), Path(image_dir) / "images"]
    else:
        folders = [b / sub for b in (root, root.parent) for sub in ("images", "allImages/images", "")]
    folder = pick_image_dir(folders, [questions[q] for q in qids[:20]], path_in, f"{root}/images/<imageId>.jpg")

    if shuffle:
        random.Random(seed).shuffle(qids)
    for qid in qids:
        rec = questions[qid]
        missing = _missing(rec, allow_unanswered)
        if missing:
            issues.skip(_kind(missing), f"missing field {missing!r} in question {qid}", questions_path)
            continue
        image = path_in(folder, rec) or folder / f"{rec['imageId']}.jpg"
        yield _sample(qid, image, rec, template)


# ---------------------------------------------------------------- Hugging Face

def load_hf(source: str, split: str, issues: Issues, template: str, *, shuffle: bool, seed: int,
            streaming: bool, allow_unanswered: bool) -> Iterator[Sample]:
    name = full_split(split)
    hub_split = name.split("_")[0]
    names = hf.split_names(hub_split)
    local = Path(source).expanduser()
    if local.is_dir():
        absent = [c for c in (f"{name}_instructions", f"{name}_images") if not (local / c).is_dir()]
        if absent:
            raise UserError(f"{source}: no {' or '.join(absent)} folder; expected {expected(split)}")
    questions = hf.open_source(source, names, f"{name}_instructions", streaming)
    # images are looked up by id: always a random-access (memory-mapped) data set
    images = hf.open_source(source, names, f"{name}_images", streaming=False)
    for ds, cols, config in ((questions, {"imageId", "question"}, "instructions"), (images, {"id", "image"}, "images")):
        have = set(getattr(ds, "column_names", None) or [])
        if have and not cols <= have:
            raise UserError(f"{source}: the {name}_{config} data has columns {', '.join(sorted(have))}; "
                            f"expected {', '.join(sorted(cols))} (lmms-lab/GQA layout)")
    row_of = {image_id: i for i, image_id in enumerate(images["id"])}
    if shuffle:
        questions = hf.shuffled(questions, seed)
    for n, rec in enumerate(questions):
        qid = rec.get("id")
        if qid is None:
            issues.skip("missing field", f"missing field 'id' in row {n}", source)
            continue
        missing = _missing(rec, allow_unanswered)
        if missing:
            issues.skip(_kind(missing), f"missing field {missing!r} in question {qid}", source)
            continue
        row = row_of.get(rec["imageId"])
        image = hf.image_ref(images[row]["image"]) if row is not None else None
        if image is None:
            issues.skip("missing image", f"missing image: image {rec['imageId']} not in {name}_images "
                                         f"(question {qid})", source)
            continue
        yield _sample(qid, image, rec, template)


# ---------------------------------------------------------------- dispatch

def find_official(path: Path, split: str) -> Path | None:
    if path.is_file():
        return path if path.suffix == ".json" else None
    name = f"{full_split(split)}_questions"
    return find_file(path, [f"{name}.json", name])
