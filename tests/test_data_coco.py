"""COCO Captions readers: official captions JSON (2014/2017), Karpathy split, lmms-lab layout, bad data."""
import json

import pytest

from fixtures_data import not_an_image, write_coco, write_coco_karpathy, write_hf_coco
from vlm_grades.data.registry import load_samples
from vlm_grades.data.schema import load_image
from vlm_grades.errors import UserError

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."


@pytest.mark.parametrize("year", [2017, 2014])
def test_official_layout(tmp_path, year):
    d = write_coco(tmp_path, year=year)
    samples = load_samples("coco", d["source"], split="val")
    assert [s.id for s in samples] == [str(i) for i in d["image_ids"]]     # one sample per image
    s = samples[1]
    assert s.targets == d["captions"][285] and len(s.targets) == 5
    assert s.meta["image_id"] == 285 and s.prompt == CAPTION_PROMPT and s.task == "coco"
    assert s.image == d["images"][285] and load_image(s.image).size == (16, 16)
    # the year-qualified split and the annotation file itself work too
    assert len(load_samples("coco", d["source"], split=f"val{year}")) == 3
    assert len(load_samples("coco", str(d["annotations"]), split="val")) == 3


def test_karpathy_splits(tmp_path):
    d = write_coco_karpathy(tmp_path)
    train = load_samples("coco", d["source"], split="train")
    assert sorted(int(s.id) for s in train) == d["splits"]["train"] + d["splits"]["restval"]
    test = load_samples("coco", d["source"], split="test")
    assert [int(s.id) for s in test] == d["splits"]["test"]
    assert test[0].targets == d["captions"][301] and test[0].image == d["images"][301]
    assert test[0].meta["image_id"] == 301
    assert len(load_samples("coco", str(d["file"]), split="val")) == 1


def test_official_preferred_over_karpathy_when_both(tmp_path):
    write_coco(tmp_path, year=2014)
    write_coco_karpathy(tmp_path)
    assert [s.id for s in load_samples("coco", str(tmp_path), split="val")] == ["139", "285", "632"]
    assert [s.id for s in load_samples("coco", str(tmp_path), split="test")] == ["301", "302"]


def test_bad_records(tmp_path):
    d = write_coco(tmp_path)
    data = json.loads(d["annotations"].read_text())
    del data["annotations"][0]["caption"]                         # one of image 139's five captions
    data["annotations"] = [a for a in data["annotations"] if a.get("image_id") != 632]   # 632 has none left
    d["annotations"].write_text(json.dumps(data))
    bad = not_an_image(d["images"][285])
    samples = load_samples("coco", d["source"], split="val")
    assert [s.id for s in samples] == ["139"] and len(samples[0].targets) == 4
    assert samples.summary == (f"coco val: 1 samples, skipped 3 (1 missing field 'caption' in annotation 1, "
                               f"1 unreadable image: {bad} (image 285: not a readable image (cannot identify "
                               f"image file '{bad}')), 1 image 632 has no caption in captions_val2017.json)")
    with pytest.raises(UserError, match="captions_val2017.json: missing field 'caption' in annotation 1$"):
        load_samples("coco", d["source"], split="val", strict=True)


def test_missing_image_keeps_good_ones(tmp_path):
    d = write_coco_karpathy(tmp_path)
    d["images"][301].unlink()
    samples = load_samples("coco", d["source"], split="test")
    assert [s.id for s in samples] == ["302"]
    assert samples.summary == f"coco test: 1 samples, skipped 1 (1 missing image: {d['images'][301]} (image 301))"
    with pytest.raises(UserError, match=rf"^{d['images'][301]}: image file not found \(image 301\)$"):
        load_samples("coco", d["source"], split="test", strict=True)


@pytest.mark.parametrize("fmt", ["disk", "parquet"])
def test_hf_layout(tmp_path, fmt):
    d = write_hf_coco(tmp_path, fmt=fmt)
    samples = load_samples("coco", d["source"], split="val")
    assert [s.id for s in samples] == [str(i) for i in d["image_ids"]]
    assert samples[2].targets == d["captions"][632] and samples[2].meta["image_id"] == 632
    assert samples[2].meta["file_name"] == "000000000632.jpg"
    assert isinstance(samples[2].image, bytes) and load_image(samples[2].image).size == (16, 16)


def test_karpathy_record_missing_field(tmp_path):
    d = write_coco_karpathy(tmp_path)
    data = json.loads(d["file"].read_text())
    del data["images"][3]["sentences"]                  # test image 301
    d["file"].write_text(json.dumps(data))
    samples = load_samples("coco", d["source"], split="test")
    assert [s.id for s in samples] == ["302"]
    assert samples.summary == "coco test: 1 samples, skipped 1 (1 missing field 'sentences' in image 301)"
    with pytest.raises(UserError, match=r"dataset_coco.json: missing field 'sentences' in image 301$"):
        load_samples("coco", d["source"], split="test", strict=True)
