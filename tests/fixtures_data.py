"""Tiny data sets in the official file layouts (and the lmms-lab Hugging Face layouts), for tests.

Every writer takes a root folder, writes real JPEG/PNG images and the official JSON (or a
save_to_disk folder / parquet files), and returns a dict of what it wrote: the `source` to pass to
`load_samples`, the `split`, file paths, the image paths by image id, and the expected ids/answers.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

COLORS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (240, 200, 20), (120, 120, 120), (0, 128, 128)]


def write_image(path: Path, index: int = 0, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (size, size), COLORS[index % len(COLORS)])
    im.paste((255, 255, 255), (index % size, 0, index % size + 4, 4))  # images differ beyond colour
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    im.save(path, fmt)
    return path


def image_bytes(index: int = 0, fmt: str = "PNG", size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), COLORS[index % len(COLORS)]).save(buf, fmt)
    return buf.getvalue()


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut an image file short, as an interrupted download would."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def not_an_image(path: Path) -> Path:
    Path(path).write_text("<html>404 Not Found</html>")
    return path


def _dump(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------- VQAv2

VQA_ANSWERS = [("yes", "yes/no", "is the"), ("2", "number", "how many"), ("red", "other", "what color is the")]


def _vqa_records(image_ids, per_image):
    questions, annotations = [], []
    for n, image_id in enumerate(image_ids):
        for k in range(per_image):
            answer, answer_type, qtype = VQA_ANSWERS[(n + k) % len(VQA_ANSWERS)]
            qid = image_id * 1000 + k
            questions.append({"question_id": qid, "image_id": image_id, "question": f"{qtype} thing {qid}?"})
            answers = [answer] * 8 + ["no" if answer != "no" else "yes", answer.upper()]
            annotations.append({
                "question_id": qid, "image_id": image_id, "question_type": qtype, "answer_type": answer_type,
                "multiple_choice_answer": answer,
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                            for i, a in enumerate(answers)],
            })
    return questions, annotations


def write_vqav2(root, split: str = "val", image_ids=(9, 25, 42), per_image: int = 2, flat: bool = False,
                annotations: bool = True) -> dict:
    """v2_OpenEnded_mscoco_{split}2014_questions.json, v2_mscoco_{split}2014_annotations.json and
    {split}2014/COCO_{split}2014_{id:012d}.jpg (or the images directly in root with flat=True)."""
    root = Path(root)
    infix = {"test-dev": "test-dev2015", "test": "test2015"}.get(split, f"{split}2014")
    folder = infix.replace("test-dev", "test")
    questions, anns = _vqa_records(list(image_ids), per_image)
    info = {"info": {"description": "tiny VQAv2"}, "data_subtype": infix, "license": {}}
    qpath = _dump(root / f"v2_OpenEnded_mscoco_{infix}_questions.json", {**info, "questions": questions})
    apath = None
    if annotations:
        apath = _dump(root / f"v2_mscoco_{infix}_annotations.json", {**info, "annotations": anns})
    image_dir = root if flat else root / folder
    images = {i: write_image(image_dir / f"COCO_{folder}_{i:012d}.jpg", n) for n, i in enumerate(image_ids)}
    return {"source": str(root), "split": split, "questions": qpath, "annotations": apath, "image_dir": image_dir,
            "images": images, "question_ids": [q["question_id"] for q in questions],
            "answers": {a["question_id"]: a["multiple_choice_answer"] for a in anns},
            "records": {a["question_id"]: a for a in anns}}


def _hf_save(ds, root: Path, fmt: str, split: str, config: str | None = None) -> Path:
    base = root / config if config else root
    if fmt == "disk":
        ds.save_to_disk(str(base))
    elif fmt == "parquet":
        sub = base if config else base / "data"          # hub repo layouts
        sub.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(sub / f"{split}-00000-of-00001.parquet"))
    else:
        raise ValueError(fmt)
    return base


def write_hf_vqav2(root, fmt: str = "disk", split: str = "validation", image_ids=(9, 25, 42), per_image: int = 2,
                   answered: bool = True) -> dict:
    """lmms-lab/VQAv2 columns, as a save_to_disk folder (fmt="disk") or data/{split}-*.parquet."""
    from datasets import Dataset, Features, Image as HFImage, List, Value

    questions, anns = _vqa_records(list(image_ids), per_image)
    rows = {k: [] for k in ("question_type", "multiple_choice_answer", "answers", "image_id", "answer_type",
                            "question_id", "question", "image")}
    for q, a in zip(questions, anns):
        rows["question_type"].append(a["question_type"])
        rows["multiple_choice_answer"].append(a["multiple_choice_answer"] if answered else None)
        rows["answers"].append(a["answers"] if answered else None)
        rows["image_id"].append(q["image_id"])
        rows["answer_type"].append(a["answer_type"])
        rows["question_id"].append(q["question_id"])
        rows["question"].append(q["question"])
        rows["image"].append({"bytes": image_bytes(list(image_ids).index(q["image_id"]), "JPEG"), "path": None})
    features = Features({
        "question_type": Value("string"), "multiple_choice_answer": Value("string"),
        "answers": List({"answer": Value("string"), "answer_confidence": Value("string"),
                         "answer_id": Value("int64")}),
        "image_id": Value("int64"), "answer_type": Value("string"), "question_id": Value("int64"),
        "question": Value("string"), "image": HFImage(),
    })
    ds = Dataset.from_dict(rows, features=features)
    _hf_save(ds, Path(root), fmt, split)
    return {"source": str(root), "split": split, "question_ids": rows["question_id"],
            "answers": {a["question_id"]: a["multiple_choice_answer"] for a in anns}, "dataset": ds}


# ---------------------------------------------------------------- GQA

def _gqa_records(image_ids, per_image):
    records = {}
    for n, image_id in enumerate(image_ids):
        for k in range(per_image):
            qid = f"{20000000 + n * 10 + k}"
            answer = ["yes", "left", "table"][(n + k) % 3]
            records[qid] = {
                "imageId": image_id, "question": f"Is the object {qid} on the left?", "answer": answer,
                "fullAnswer": f"The answer is {answer}.", "isBalanced": k % 2 == 0,
                "types": {"structural": "verify", "semantic": "rel", "detailed": "relS"},
                "annotations": {"question": {}, "answer": {}, "fullAnswer": {}}, "equivalent": [qid],
                "semantic": [], "semanticStr": "", "groups": {"global": None, "local": "10c-table"},
                "entailed": [],
            }
    return records


def write_gqa(root, split: str = "testdev_balanced", image_ids=("n161313", "n235859", "n53578"),
              per_image: int = 2) -> dict:
    """{split}_questions.json (keyed by question id) and images/{imageId}.jpg."""
    root = Path(root)
    records = _gqa_records(list(image_ids), per_image)
    qpath = _dump(root / f"{split}_questions.json", records)
    images = {i: write_image(root / "images" / f"{i}.jpg", n) for n, i in enumerate(image_ids)}
    return {"source": str(root), "split": split, "questions": qpath, "image_dir": root / "images", "images": images,
            "question_ids": list(records), "answers": {q: r["answer"] for q, r in records.items()},
            "records": records}


def write_hf_gqa(root, fmt: str = "disk", split: str = "testdev_balanced",
                 image_ids=("n161313", "n235859", "n53578"), per_image: int = 2, drop_image: str | None = None) -> dict:
    """lmms-lab/GQA configs {split}_instructions and {split}_images as sub-folders of root."""
    from datasets import Dataset, Features, Image as HFImage, Value

    root = Path(root)
    records = _gqa_records(list(image_ids), per_image)
    hub_split = split.split("_")[0]
    instructions = Dataset.from_dict({
        "id": list(records), "imageId": [r["imageId"] for r in records.values()],
        "question": [r["question"] for r in records.values()], "answer": [r["answer"] for r in records.values()],
        "fullAnswer": [r["fullAnswer"] for r in records.values()],
        "isBalanced": [r["isBalanced"] for r in records.values()],
        "types": [r["types"] for r in records.values()],
    })
    kept = [i for i in image_ids if i != drop_image]
    images = Dataset.from_dict(
        {"id": kept, "image": [{"bytes": image_bytes(list(image_ids).index(i), "JPEG"), "path": None} for i in kept]},
        features=Features({"id": Value("string"), "image": HFImage()}))
    _hf_save(instructions, root, fmt, hub_split, f"{split}_instructions")
    _hf_save(images, root, fmt, hub_split, f"{split}_images")
    return {"source": str(root), "split": split, "question_ids": list(records),
            "answers": {q: r["answer"] for q, r in records.items()}, "records": records}


# ---------------------------------------------------------------- COCO Captions

def _captions(image_id, n=5):
    return [f"A photo number {image_id} showing thing {k}." for k in range(n)]


def write_coco(root, split: str = "val", year: int = 2017, image_ids=(139, 285, 632), captions_per_image: int = 5) -> dict:
    """annotations/captions_{split}{year}.json and {split}{year}/<file_name> (2014 names: COCO_val2014_...)."""
    root = Path(root)
    name = f"{split}{year}"
    images, annotations, paths, refs = [], [], {}, {}
    for n, image_id in enumerate(image_ids):
        file_name = f"{image_id:012d}.jpg" if year >= 2017 else f"COCO_{name}_{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": file_name, "width": 16, "height": 16, "license": 1,
                       "coco_url": "", "flickr_url": "", "date_captured": ""})
        paths[image_id] = write_image(root / name / file_name, n)
        refs[image_id] = _captions(image_id, captions_per_image)
        for caption in refs[image_id]:
            annotations.append({"image_id": image_id, "id": len(annotations) + 1, "caption": caption})
    apath = _dump(root / "annotations" / f"captions_{name}.json",
                  {"info": {}, "licenses": [], "images": images, "annotations": annotations})
    return {"source": str(root), "split": split, "annotations": apath, "image_dir": root / name, "images": paths,
            "image_ids": list(image_ids), "captions": refs}


def write_coco_karpathy(root, splits=(("train", 101), ("restval", 102), ("val", 201), ("test", 301), ("test", 302)),
                        captions_per_image: int = 5) -> dict:
    """dataset_coco.json with images under {filepath}/{filename} (train2014/, val2014/)."""
    root = Path(root)
    images, paths, refs = [], {}, {}
    for n, (split, cocoid) in enumerate(splits):
        filepath = "train2014" if split == "train" else "val2014"
        filename = f"COCO_{filepath}_{cocoid:012d}.jpg"
        paths[cocoid] = write_image(root / filepath / filename, n)
        refs[cocoid] = _captions(cocoid, captions_per_image)
        images.append({"filepath": filepath, "filename": filename, "imgid": n, "split": split, "cocoid": cocoid,
                       "sentids": list(range(n * 5, n * 5 + captions_per_image)),
                       "sentences": [{"tokens": c.lower().strip(".").split(), "raw": c, "imgid": n, "sentid": n * 5 + k}
                                     for k, c in enumerate(refs[cocoid])]})
    kpath = _dump(root / "dataset_coco.json", {"images": images, "dataset": "coco"})
    by_split: dict = {}
    for split, cocoid in splits:
        by_split.setdefault(split, []).append(cocoid)
    return {"source": str(root), "file": kpath, "images": paths, "captions": refs, "splits": by_split}


def write_hf_coco(root, fmt: str = "disk", split: str = "val", image_ids=(139, 285, 632),
                  captions_per_image: int = 5) -> dict:
    """lmms-lab/COCO-Caption2017 columns (question_id, image, question, answer, id, file_name)."""
    from datasets import Dataset, Features, Image as HFImage, List, Value

    rows = {"question_id": [], "image": [], "question": [], "answer": [], "id": [], "license": [], "file_name": [],
            "coco_url": [], "height": [], "width": [], "date_captured": []}
    for n, image_id in enumerate(image_ids):
        rows["question_id"].append(f"{image_id:012d}.jpg")
        rows["image"].append({"bytes": image_bytes(n, "JPEG"), "path": None})
        rows["question"].append("Provide a one-sentence caption for the provided image.")
        rows["answer"].append(_captions(image_id, captions_per_image))
        rows["id"].append(n)                     # a row counter in lmms-lab, not the COCO image id
        rows["license"].append(1)
        rows["file_name"].append(f"{image_id:012d}.jpg")
        rows["coco_url"].append("")
        rows["height"].append(16)
        rows["width"].append(16)
        rows["date_captured"].append("")
    features = Features({"question_id": Value("string"), "image": HFImage(), "question": Value("string"),
                         "answer": List(Value("string")), "id": Value("int64"), "license": Value("int8"),
                         "file_name": Value("string"), "coco_url": Value("string"), "height": Value("int32"),
                         "width": Value("int32"), "date_captured": Value("string")})
    ds = Dataset.from_dict(rows, features=features)
    _hf_save(ds, Path(root), fmt, split)
    return {"source": str(root), "split": split, "image_ids": list(image_ids),
            "captions": {i: _captions(i, captions_per_image) for i in image_ids}, "dataset": ds}
