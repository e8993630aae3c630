"""torch Dataset wrappers: per-epoch caption choice, lazy decoding in workers, streaming shards; image checks."""
import io

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from fixtures_data import image_bytes, truncate, write_coco, write_hf_coco, write_image
from vlm_grades.data.dataset import CaptionTargetDataset, SampleDataset, StreamingSampleDataset, pick_target
from vlm_grades.data.issues import Issues, check_image_bytes, check_image_file
from vlm_grades.data.registry import load_samples
from vlm_grades.data.schema import Sample, load_image
from vlm_grades.errors import UserError


def _keep(item):
    return item


def _id(sample):
    return sample.id


def _caption_samples(n=20, refs=5):
    return [Sample(id=str(i), image=b"", prompt="p", targets=[f"c{i}-{k}" for k in range(refs)], task="coco")
            for i in range(n)]


def test_caption_target_is_deterministic_and_epoch_dependent():
    samples = _caption_samples()
    ds = CaptionTargetDataset(samples, seed=7)
    epoch0 = [ds[i].meta["train_target"] for i in range(len(ds))]
    assert epoch0 == [CaptionTargetDataset(samples, seed=7)[i].meta["train_target"] for i in range(len(ds))]
    ds.set_epoch(1)
    epoch1 = [ds[i].meta["train_target"] for i in range(len(ds))]
    assert epoch0 != epoch1
    assert all(t in s.targets for t, s in zip(epoch1, samples))
    other_seed = CaptionTargetDataset(samples, seed=8)
    assert [other_seed[i].meta["train_target"] for i in range(len(ds))] != epoch0
    assert samples[0].meta == {} and ds[0].targets == samples[0].targets   # the originals are untouched
    # over many epochs every reference gets its turn
    assert {pick_target(samples[0], 7, e).meta["train_target"] for e in range(50)} == set(samples[0].targets)


def test_single_target_samples_pass_through():
    s = Sample(id="1", image=b"", prompt="p", targets=["yes"], task="vqav2")
    assert SampleDataset([s], pick_target=True)[0] is s


def test_dataloader_workers_decode_lazily(tmp_path):
    d = write_coco(tmp_path)
    samples = load_samples("coco", d["source"], split="val")
    assert all(not isinstance(s.image, Image.Image) for s in samples)
    ds = CaptionTargetDataset(samples, transform=lambda s: (s.id, load_image(s.image).size, s.meta["train_target"]))
    loader = DataLoader(ds, batch_size=None, num_workers=1, collate_fn=_keep)
    out = list(loader)
    assert [o[0] for o in out] == ["139", "285", "632"] and all(o[1] == (16, 16) for o in out)
    assert [o[2] for o in out] == [ds[i][2] for i in range(3)]    # same choice in the worker as here


def test_streaming_dataset_shards_over_workers(tmp_path):
    d = write_hf_coco(tmp_path, fmt="disk", image_ids=(1, 2, 3, 4, 5))
    stream = load_samples("coco", d["source"], split="val", streaming=True)
    ds = StreamingSampleDataset(stream, transform=lambda s: (s.id, load_image(s.image).size), pick_target=True)
    assert [x[0] for x in ds] == ["1", "2", "3", "4", "5"]
    out = list(DataLoader(ds, batch_size=None, num_workers=2, collate_fn=_keep))   # datasets shards by file
    assert sorted(x[0] for x in out) == ["1", "2", "3", "4", "5"] and all(x[1] == (16, 16) for x in out)
    d = write_coco(tmp_path / "official")                                         # we shard by position
    ds = StreamingSampleDataset(load_samples("coco", d["source"], split="val", streaming=True), transform=_id)
    assert sorted(DataLoader(ds, batch_size=None, num_workers=2, collate_fn=_keep)) == ["139", "285", "632"]


# ---------------------------------------------------------------- image checks and summaries

def test_image_checks(tmp_path):
    good_png = write_image(tmp_path / "a.png")
    good_jpg = write_image(tmp_path / "b.jpg")
    assert check_image_file(good_png) is None and check_image_file(good_jpg) is None
    junk_tail = tmp_path / "c.jpg"
    junk_tail.write_bytes(good_jpg.read_bytes() + b"trailing bytes")     # legal: decodes fine
    assert check_image_file(junk_tail) is None
    assert check_image_file(tmp_path / "none.jpg") == "image file not found"
    assert "not a readable image" in check_image_file(truncate(write_image(tmp_path / "d.png"), 0.6))
    assert "not a readable image" in check_image_file(truncate(write_image(tmp_path / "e.jpg", size=64), 0.7))
    (tmp_path / "f.jpg").write_bytes(b"")
    assert check_image_file(tmp_path / "f.jpg") == "not a readable image (empty file)"
    assert check_image_bytes(image_bytes()) is None
    assert "not a readable image" in check_image_bytes(image_bytes(fmt="JPEG")[:40])
    with pytest.raises(UserError):      # what the workers would hit otherwise
        load_image(io.BytesIO(b"x").getvalue())


def test_issues_summary_and_strict():
    issues = Issues("vqav2 train")
    issues.skip("missing image", "missing image: /d/x.jpg (question 1)", "/d/x.jpg")
    issues.skip("missing field", "missing field 'answers' in annotation 17", "ann.json")
    issues.skip("missing image", "missing image: /d/y.jpg (question 2)", "/d/y.jpg")
    assert issues.summary(1998) == ("vqav2 train: 1,998 samples, skipped 3 (2 missing images, first: missing image: "
                                    "/d/x.jpg (question 1), 1 missing field 'answers' in annotation 17)")
    with pytest.raises(UserError, match=r"^src: no usable samples \(vqav2 train: 0 samples, skipped 3"):
        issues.finish(0, "src")
    with pytest.raises(UserError, match="^ann.json: missing field 'answers' in annotation 17$"):
        Issues("x", strict=True).skip("missing field", "missing field 'answers' in annotation 17", "ann.json")


def test_sample_stream_pickles_for_spawned_workers(tmp_path):
    import pickle

    d = write_coco(tmp_path)
    stream = load_samples("coco", d["source"], split="val", streaming=True, shuffle=True, seed=2)
    copy = pickle.loads(pickle.dumps(stream))
    assert [s.id for s in copy] == [s.id for s in stream]
    stream.set_epoch(1)
    assert sorted(s.id for s in stream) == ["139", "285", "632"]
