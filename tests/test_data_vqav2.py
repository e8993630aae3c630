"""VQAv2 readers: official JSON + COCO image folder, Hugging Face layouts, and every bad-data case."""
import json
import logging

import pytest

from fixtures_data import not_an_image, truncate, write_hf_vqav2, write_vqav2
from vlm_grades.data.registry import load_samples
from vlm_grades.data.schema import load_image
from vlm_grades.errors import UserError


def _ids(samples):
    return sorted(int(s.id) for s in samples)


def test_official_layout(tmp_path):
    d = write_vqav2(tmp_path)
    samples = load_samples("vqav2", d["source"], split="val")
    assert _ids(samples) == sorted(d["question_ids"])
    s = next(x for x in samples if x.id == "25001")
    rec = d["records"][25001]
    assert s.targets == [rec["multiple_choice_answer"]]
    assert s.meta["answers"] == [a["answer"] for a in rec["answers"]] and len(s.meta["answers"]) == 10
    assert s.meta["answer_type"] == rec["answer_type"] and s.meta["question_type"] == rec["question_type"]
    assert s.meta["image_id"] == 25 and s.meta["question"].endswith("25001?")
    assert s.prompt == f"{s.meta['question']}\nAnswer the question using a single word or phrase."
    assert str(s.image).endswith("val2014/COCO_val2014_000000000025.jpg")
    assert load_image(s.image).size == (16, 16)
    assert samples.summary == "vqav2 val: 6 samples" and samples.skipped == 0


def test_flat_image_folder_and_questions_file(tmp_path):
    d = write_vqav2(tmp_path, flat=True, split="train")
    samples = load_samples("vqav2", d["questions"], split="train")   # the questions file itself
    assert len(samples) == 6
    assert all(str(s.image).startswith(str(tmp_path)) for s in samples)


def test_image_dir_override(tmp_path):
    d = write_vqav2(tmp_path / "imgs")
    ann = tmp_path / "ann"
    ann.mkdir()
    for key in ("questions", "annotations"):
        d[key].rename(ann / d[key].name)
    samples = load_samples("vqav2", str(ann), split="val", image_dir=str(d["image_dir"]))
    assert len(samples) == 6


def test_test_dev_without_annotations(tmp_path):
    d = write_vqav2(tmp_path, split="test-dev", annotations=False)
    with pytest.raises(UserError, match="annotations.json not found.*--allow-unanswered"):
        load_samples("vqav2", d["source"], split="test-dev")
    samples = load_samples("vqav2", d["source"], split="test-dev", allow_unanswered=True)
    assert len(samples) == 6 and all(s.targets == [] for s in samples)
    assert str(samples[0].image).endswith("test2015/COCO_test2015_000000000009.jpg")


def test_no_image_folder_is_a_clear_error(tmp_path):
    d = write_vqav2(tmp_path)
    for p in d["images"].values():
        p.unlink()
    with pytest.raises(UserError, match="no image folder found: expected .*val2014/COCO_val2014_<image_id:012d>.jpg"):
        load_samples("vqav2", d["source"], split="val")


def test_max_samples_and_shuffle(tmp_path):
    d = write_vqav2(tmp_path)
    first = load_samples("vqav2", d["source"], split="val", max_samples=2)
    assert [s.id for s in first] == ["9000", "9001"]
    a = load_samples("vqav2", d["source"], split="val", shuffle=True, seed=3)
    b = load_samples("vqav2", d["source"], split="val", shuffle=True, seed=3)
    c = load_samples("vqav2", d["source"], split="val", shuffle=True, seed=4)
    assert [s.id for s in a] == [s.id for s in b] != [s.id for s in c]
    assert _ids(a) == sorted(d["question_ids"])


# ---------------------------------------------------------------- bad data: skip and count, or strict

def _rewrite(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_missing_image_is_skipped_and_counted(tmp_path, caplog):
    d = write_vqav2(tmp_path)
    missing = d["images"][42]
    missing.unlink()
    with caplog.at_level(logging.WARNING, logger="vlm_grades.data"):
        samples = load_samples("vqav2", d["source"], split="val")
    assert _ids(samples) == [9000, 9001, 25000, 25001]      # no good sample lost
    assert samples.summary == (f"vqav2 val: 4 samples, skipped 2 (2 missing images, first: missing image: "
                               f"{missing} (question 42000))")
    assert samples.summary in caplog.text
    with pytest.raises(UserError, match=rf"^{missing}: image file not found \(question 42000\)$"):
        load_samples("vqav2", d["source"], split="val", strict=True)


@pytest.mark.parametrize("damage", [truncate, not_an_image])
def test_unreadable_image_is_skipped(tmp_path, damage):
    d = write_vqav2(tmp_path)
    bad = damage(d["images"][25])
    samples = load_samples("vqav2", d["source"], split="val")
    assert _ids(samples) == [9000, 9001, 42000, 42001]
    assert samples.skipped == 2
    assert f"2 unreadable images, first: unreadable image: {bad} (question 25000: not a readable image" in samples.summary
    with pytest.raises(UserError, match=rf"^{bad}: not a readable image .*\(question 25000\)$"):
        load_samples("vqav2", d["source"], split="val", strict=True)


def test_annotation_missing_field(tmp_path):
    d = write_vqav2(tmp_path)
    _rewrite(d["annotations"], lambda a: a["annotations"][3].pop("answers"))      # question 25001
    samples = load_samples("vqav2", d["source"], split="val")
    assert _ids(samples) == [9000, 9001, 25000, 42000, 42001]
    assert samples.summary == "vqav2 val: 5 samples, skipped 1 (1 missing field 'answers' in annotation 25001)"
    with pytest.raises(UserError, match=rf"^{d['annotations']}: missing field 'answers' in annotation 25001$"):
        load_samples("vqav2", d["source"], split="val", strict=True)


def test_question_without_annotation(tmp_path):
    d = write_vqav2(tmp_path)
    _rewrite(d["annotations"], lambda a: a["annotations"].pop(0))                 # question 9000
    samples = load_samples("vqav2", d["source"], split="val")
    assert _ids(samples) == [9001, 25000, 25001, 42000, 42001]
    assert samples.summary == ("vqav2 val: 5 samples, skipped 1 (1 question 9000 has no annotation in "
                               "v2_mscoco_val2014_annotations.json)")
    with pytest.raises(UserError, match="question 9000 has no annotation"):
        load_samples("vqav2", d["source"], split="val", strict=True)


def test_question_missing_field_and_mixed_summary(tmp_path):
    d = write_vqav2(tmp_path)
    _rewrite(d["questions"], lambda q: q["questions"][1].pop("image_id"))          # question 9001
    d["images"][42].unlink()
    samples = load_samples("vqav2", d["source"], split="val")
    assert _ids(samples) == [9000, 25000, 25001]
    assert samples.summary.startswith("vqav2 val: 3 samples, skipped 3 (1 missing field 'image_id' in question 9001, "
                                      "2 missing images, first: missing image: ")


def test_malformed_json_and_empty_result(tmp_path):
    d = write_vqav2(tmp_path)
    d["questions"].write_text("{not json")
    with pytest.raises(UserError, match="questions.json: not valid JSON"):
        load_samples("vqav2", d["source"], split="val")
    d = write_vqav2(tmp_path / "b")
    _rewrite(d["annotations"], lambda a: a.update(annotations=[]))
    with pytest.raises(UserError, match=r"no usable samples \(vqav2 val: 0 samples, skipped 6"):
        load_samples("vqav2", d["source"], split="val")


# ---------------------------------------------------------------- Hugging Face layouts

@pytest.mark.parametrize("fmt", ["disk", "parquet"])
def test_hf_layouts(tmp_path, fmt):
    d = write_hf_vqav2(tmp_path, fmt=fmt)
    samples = load_samples("vqav2", d["source"], split="val")
    assert _ids(samples) == sorted(d["question_ids"])
    s = next(x for x in samples if x.id == "42000")
    assert s.targets == [d["answers"][42000]] and len(s.meta["answers"]) == 10
    assert s.meta["image_id"] == 42 and s.meta["answer_type"]
    assert isinstance(s.image, bytes) and load_image(s.image).size == (16, 16)


def test_hf_streaming_is_reiterable(tmp_path):
    d = write_hf_vqav2(tmp_path, fmt="parquet")
    stream = load_samples("vqav2", d["source"], split="validation", streaming=True, max_samples=4)
    first = [s.id for s in stream]
    assert len(first) == 4 and [s.id for s in stream] == first
    assert stream.summary == "vqav2 validation: 4 samples"


def test_hf_unanswered_rows(tmp_path):
    d = write_hf_vqav2(tmp_path, split="testdev", answered=False)
    with pytest.raises(UserError, match="no usable samples.*has no answers \\(pass allow_unanswered"):
        load_samples("vqav2", d["source"], split="test-dev")
    samples = load_samples("vqav2", d["source"], split="test-dev", allow_unanswered=True)
    assert len(samples) == 6 and all(s.targets == [] for s in samples)


def test_hf_bad_image_bytes(tmp_path):
    from datasets import load_from_disk

    d = write_hf_vqav2(tmp_path / "src")
    ds = load_from_disk(d["source"]).cast_column("image", __import__("datasets").Image(decode=False))
    ds = ds.map(lambda r: {"image": {"bytes": b"junk" if r["question_id"] == 25000 else r["image"]["bytes"],
                                     "path": None}})
    ds.save_to_disk(str(tmp_path / "bad"))
    samples = load_samples("vqav2", str(tmp_path / "bad"), split="val")
    assert _ids(samples) == [9000, 9001, 25001, 42000, 42001]
    assert "1 unreadable image bytes (question 25000: not a readable image" in samples.summary
    with pytest.raises(UserError, match="unreadable image bytes \\(question 25000"):
        load_samples("vqav2", str(tmp_path / "bad"), split="val", strict=True)


def test_annotations_only_where_the_user_pointed(tmp_path, capsys):
    """A folder of questions and images next to a sibling with a full set: never the sibling's annotations."""
    write_vqav2(tmp_path / "full")
    mine = write_vqav2(tmp_path / "mine", annotations=False)
    with pytest.raises(UserError, match=rf"^{mine['source']}: v2_mscoco_val2014_annotations.json not found"):
        load_samples("vqav2", mine["source"], split="val")
    with pytest.raises(UserError, match="v2_mscoco_val2014_annotations.json not found"):
        load_samples("vqav2", str(mine["questions"]), split="val")


def test_official_subfolders_and_the_files_used_are_printed(tmp_path, capsys):
    d = write_vqav2(tmp_path / "data" / "images")
    for key, sub in (("questions", "Questions"), ("annotations", "Annotations")):
        (tmp_path / "data" / sub).mkdir()
        d[key].rename(tmp_path / "data" / sub / d[key].name)
    samples = load_samples("vqav2", str(tmp_path / "data"), split="val")
    assert len(samples) == 6
    out = capsys.readouterr().out
    assert (f"vqav2 val: questions {tmp_path}/data/Questions/v2_OpenEnded_mscoco_val2014_questions.json, "
            f"annotations {tmp_path}/data/Annotations/v2_mscoco_val2014_annotations.json, "
            f"images {tmp_path}/data/images/val2014\n") in out
