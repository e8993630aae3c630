"""The feature cache's disk tier: a bounded ring in a memory-mapped file that gives back the bits it was given;
a memory tier smaller than the data plus a disk tier gives the tower's losses and serves hits from disk; in
training it gives the losses and weights of a memory-only cache, per-tier hits are logged and the file is gone
at the end; a resumed run deletes leftover files and ends as an uninterrupted one; bad --feature-cache-disk/
--feature-cache-dir values fail in one line."""
from __future__ import annotations

import pytest
import torch

from vlm_grades.cli import main
from vlm_grades.config import TrainConfig
from vlm_grades.errors import UserError
from vlm_grades.feature_cache.memory import FeatureCache
from vlm_grades.feature_cache.disk import DiskTier
from vlm_grades.training.run_folder import RunFolder
from test_feature_cache import TOL, cached_losses_equal_the_tower, nano_batches, per_image_bytes
from test_feature_cache import nano  # noqa: F401  (a pytest fixture, used by name)


def test_ring_is_bounded_exact_and_drops_the_oldest(tmp_path):
    path = tmp_path / "ring.bin"
    disk = DiskTier(path, max_bytes=1000)
    values = {f"k{i}": torch.randn(3, 10 + i).to(torch.bfloat16 if i % 2 else torch.float32) for i in range(12)}
    for key, value in values.items():
        disk.put(key, value)
        assert disk.bytes <= 1000 and key in disk
    kept = list(disk.index)
    assert kept == [f"k{i}" for i in range(12 - len(kept), 12)] and 0 < len(kept) < 12   # the newest survive
    assert disk.evictions == 12 - len(kept)
    for key in kept:
        got = disk.get(key)
        assert got.dtype == values[key].dtype and torch.equal(got, values[key])
    assert disk.get("k0") is None
    disk.discard(kept[-1])
    assert kept[-1] not in disk
    disk.put("big", torch.zeros(1001, dtype=torch.uint8))    # larger than the whole tier: not kept
    assert "big" not in disk
    disk.close()
    assert not path.exists()


def test_two_tiers_move_features_between_memory_and_disk(tmp_path):
    cache = FeatureCache(max_bytes=2 * 16, disk=DiskTier(tmp_path / "d.bin", 10 ** 4))   # two 4-float entries
    calls = []

    def encode(i):
        calls.append(i)
        return torch.full((4,), float(i))

    cache.lookup(["a", "b", "c"], encode)                  # a goes to disk
    assert list(cache.entries) == ["b", "c"] and "a" in cache.disk
    out = cache.lookup(["a"], encode)                       # from disk back to memory; b goes to disk
    assert torch.equal(out[0], torch.zeros(4)) and calls == [0, 1, 2]
    assert list(cache.entries) == ["c", "a"] and "a" not in cache.disk and "b" in cache.disk
    stats = cache.stats()
    assert (stats["hits"], stats["disk_hits"], stats["memory_hits"], stats["misses"]) == (1, 1, 0, 3)
    assert stats["disk"]["entries"] == 1 and stats["disk"]["bytes"] == 16


def test_small_memory_plus_disk_gives_the_tower_losses_and_disk_hits(nano, tmp_path):
    adapter, samples = nano
    batches = nano_batches(adapter, samples)
    images = len({k for b in batches for k in b["image_keys"]})
    per_image = per_image_bytes(adapter)
    stats = cached_losses_equal_the_tower(adapter, batches, FeatureCache(2 * per_image,
                                                                          DiskTier(tmp_path / "d.bin", 10 ** 8)))
    assert images > 2 and stats["entries"] <= 2 and stats["evictions"] > 0
    assert stats["misses"] == images                     # every image through the tower once: the rest was kept
    assert stats["disk_hits"] > 0 and stats["memory_hits"] + stats["disk_hits"] == stats["hits"]


RUN = ["train", "--model", "nanovlm", "--from-scratch", "--max-samples", "64", "--batch-size", "8", "--steps", "8",
       "--checkpoint-every", "100", "--eval-split=", "--no-progress", "--seed", "2", "--mix-fraction", "0",
       "--stopping", "none", "--freeze", "vision,projector"]


def test_training_with_a_disk_tier_matches_memory_only_and_logs_hits_per_tier(nano, tmp_path):
    from safetensors.torch import load_file

    small = str(2 * per_image_bytes(nano[0]))
    assert main(RUN + ["--out", str(tmp_path / "disk"), "--feature-cache", small, "--feature-cache-disk", "1MB"]) == 0
    assert main(RUN + ["--out", str(tmp_path / "memory")]) == 0
    assert main(RUN + ["--out", str(tmp_path / "plain"), "--feature-cache", "0"]) == 0
    disk, memory, plain = (RunFolder(tmp_path / r).read("metrics") for r in ("disk", "memory", "plain"))
    assert [m["loss"] for m in disk] == [m["loss"] for m in memory]   # the disk gives back the same bits
    assert abs(disk[0]["loss"] - plain[0]["loss"]) < TOL * abs(plain[0]["loss"])
    last = disk[-1]["feature_cache"]
    assert last["disk_hits"] > 0 and last["memory_hits"] + last["disk_hits"] == last["hits"]
    assert last["entries"] <= 2 and 0 < last["disk"]["bytes"] <= last["disk"]["max_bytes"] == 10 ** 6
    a, b = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("disk", "memory"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not list((tmp_path / "disk").glob("feature-cache*"))          # deleted at the end of training
    event = [e for e in RunFolder(tmp_path / "disk").read("events") if e["type"] == "feature_cache"][0]
    assert event["disk_bytes"] == 10 ** 6


def test_disk_tier_in_a_named_folder(nano, tmp_path):
    small = str(2 * per_image_bytes(nano[0]))
    folder = tmp_path / "scratch"
    argv = RUN + ["--steps", "2", "--out", str(tmp_path / "run"), "--feature-cache", small,
                  "--feature-cache-disk", "1MB", "--feature-cache-dir", str(folder)]
    assert main(argv) == 0
    assert folder.is_dir() and not list(folder.iterdir())                # its file was there, and is gone


def test_bad_disk_flags_fail_in_one_line(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for settings, message in (({"feature_cache_disk": "lots"}, r"^--feature-cache-disk: expected a size"),
                              ({"feature_cache_disk": "-1GB"}, r"^--feature-cache-disk: expected a size"),
                              ({"feature_cache": "0", "feature_cache_disk": "1GB"},
                               r"^--feature-cache-disk 1GB: needs the memory tier on"),
                              ({"feature_cache_dir": str(tmp_path)}, r"^--feature-cache-dir: needs --feature"),
                              ({"feature_cache_disk": "1GB", "feature_cache_dir": str(a_file)},
                               r"^--feature-cache-dir .*: not a folder$")):
        with pytest.raises(UserError, match=message) as info:
            TrainConfig.build(settings)
        assert "\n" not in str(info.value)
    assert main(RUN + ["--out", str(tmp_path / "run"), "--feature-cache-disk", "2 parsecs"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--feature-cache-disk: expected a size" in err
    assert not (tmp_path / "run").exists()


def test_resumed_run_drops_leftover_disk_files_and_ends_as_the_uninterrupted_one(nano, tmp_path):
    import shutil

    from safetensors.torch import load_file

    run = tmp_path / "run"
    argv = RUN + ["--out", str(run), "--checkpoint-every", "4", "--feature-cache", str(2 * per_image_bytes(nano[0])),
                  "--feature-cache-disk", "1MB"]
    assert main(argv) == 0
    whole = load_file(str(run / "final" / "model.safetensors"))
    shutil.rmtree(run / "final")                       # as if killed after step 4, leaving its disk files behind
    for rank in (0, 1):
        (run / f"feature-cache-rank-{rank}.bin").write_bytes(b"stale")
    assert main(argv + ["--resume"]) == 0
    again = load_file(str(run / "final" / "model.safetensors"))
    assert all(torch.equal(again[k], whole[k]) for k in whole)
    assert not list(run.glob("feature-cache-rank-*"))
