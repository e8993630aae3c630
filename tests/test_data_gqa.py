"""GQA readers: official questions JSON + images/, lmms-lab instruction/image configs, bad data."""
import json

import pytest

from fixtures_data import truncate, write_gqa, write_hf_gqa
from vlm_grades.data.registry import load_samples
from vlm_grades.data.schema import load_image
from vlm_grades.errors import UserError


def test_official_layout(tmp_path):
    d = write_gqa(tmp_path)
    samples = load_samples("gqa", d["source"], split="testdev_balanced")
    assert sorted(s.id for s in samples) == sorted(d["question_ids"])
    s = samples[1]
    rec = d["records"][s.id]
    assert s.targets == [rec["answer"]]
    assert s.meta == {"question_id": s.id, "image_id": rec["imageId"], "question": rec["question"],
                      "full_answer": rec["fullAnswer"], "is_balanced": rec["isBalanced"], "types": rec["types"]}
    assert s.prompt == rec["question"] + "\nAnswer the question using a single word or phrase."
    assert str(s.image).endswith(f"images/{rec['imageId']}.jpg") and load_image(s.image).size == (16, 16)


def test_short_split_name_and_questions_subfolder(tmp_path):
    d = write_gqa(tmp_path, split="val_balanced")
    (tmp_path / "questions").mkdir()
    d["questions"].rename(tmp_path / "questions" / d["questions"].name)
    assert len(load_samples("gqa", str(tmp_path), split="val")) == 6
    assert len(load_samples("gqa", str(tmp_path), split="validation")) == 6


def test_bad_records(tmp_path):
    d = write_gqa(tmp_path)
    data = json.loads(d["questions"].read_text())
    first = d["question_ids"][0]
    del data[first]["answer"]
    d["questions"].write_text(json.dumps(data))
    truncate(d["images"]["n53578"], keep=0.3)
    samples = load_samples("gqa", d["source"], split="testdev_balanced")
    assert sorted(s.id for s in samples) == sorted(d["question_ids"][1:4])
    assert samples.summary.startswith(f"gqa testdev_balanced: 3 samples, skipped 3 (1 missing field 'answer' in "
                                      f"question {first}, 2 unreadable images, first: unreadable image: ")
    with pytest.raises(UserError, match=rf"testdev_balanced_questions.json: missing field 'answer' in question {first}$"):
        load_samples("gqa", d["source"], split="testdev_balanced", strict=True)
    # prediction-only loading keeps the unanswered question
    samples = load_samples("gqa", d["source"], split="testdev_balanced", allow_unanswered=True)
    assert len(samples) == 4 and next(s for s in samples if s.id == first).targets == []


@pytest.mark.parametrize("fmt", ["disk", "parquet"])
def test_hf_instructions_joined_to_images(tmp_path, fmt):
    d = write_hf_gqa(tmp_path, fmt=fmt)
    samples = load_samples("gqa", d["source"], split="testdev")
    assert sorted(s.id for s in samples) == sorted(d["question_ids"])
    s = next(x for x in samples if x.id == d["question_ids"][2])
    assert s.targets == [d["answers"][s.id]] and s.meta["image_id"] == "n235859"
    assert s.meta["types"]["structural"] == "verify" and s.meta["is_balanced"] is True
    assert isinstance(s.image, bytes) and load_image(s.image).size == (16, 16)


def test_hf_question_whose_image_is_absent(tmp_path):
    d = write_hf_gqa(tmp_path, drop_image="n161313")
    samples = load_samples("gqa", d["source"], split="testdev_balanced")
    assert sorted(s.id for s in samples) == sorted(d["question_ids"][2:])
    assert samples.summary == (f"gqa testdev_balanced: 4 samples, skipped 2 (2 missing images, first: missing image: "
                               f"image n161313 not in testdev_balanced_images (question {d['question_ids'][0]}))")


def test_hf_streaming_shuffled(tmp_path, monkeypatch):
    import datasets

    # datasets sleeps 5 s after each shuffled pass over parquet shards (a pyarrow workaround)
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    d = write_hf_gqa(tmp_path, fmt="parquet")
    stream = load_samples("gqa", d["source"], split="testdev", streaming=True, shuffle=True, seed=1)
    ids = [s.id for s in stream]
    assert sorted(ids) == sorted(d["question_ids"]) and ids == [s.id for s in stream]
    plain = [s.id for s in load_samples("gqa", d["source"], split="testdev", streaming=True)]
    other = [s.id for s in load_samples("gqa", d["source"], split="testdev", streaming=True, shuffle=True, seed=3)]
    assert plain == sorted(plain) and ids != plain and other != ids      # shuffled, and by the seed
    stream.set_epoch(1)
    epoch1 = [s.id for s in stream]
    assert sorted(epoch1) == sorted(ids) and epoch1 != ids and epoch1 == [s.id for s in stream]   # a new epoch


def test_hf_folder_without_the_images_config(tmp_path):
    import shutil

    d = write_hf_gqa(tmp_path)
    shutil.rmtree(tmp_path / "testdev_balanced_images")
    with pytest.raises(UserError, match="no testdev_balanced_images folder; expected testdev_balanced_questions.json"):
        load_samples("gqa", d["source"], split="testdev")
