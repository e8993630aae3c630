"""The frozen-tower feature cache: cached features give the losses and logits of the tower (nanoVLM and a tiny
random Qwen2.5-VL, full and LoRA); a cache smaller than the data evicts and stays exact; random augmentation keeps
it off; training turns it on with the frozen tower, a resumed run ends where an uninterrupted one does; eval
writes the same predictions with and without it; --feature-cache validation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TOL, cached_losses_equal_the_tower, final_weights, nano_batches, per_image_bytes, rel
from vlm_grades.cli import main
from vlm_grades.config import TrainConfig
from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError
from vlm_grades.feature_cache.memory import FeatureCache, parse_size
from vlm_grades.training.run_folder import RunFolder


# ---------------------------------------------------------------- the store
def test_parse_size_and_flag_errors(capsys):
    assert parse_size("2GB") == 2_000_000_000 and parse_size("0") == 0 and parse_size("64MiB") == 64 * 2 ** 20
    assert parse_size(1024) == 1024 and parse_size("1.5k") == 1500
    for bad in ("abc", "-1GB", "2 parsecs", ""):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(UserError, match=r"^--feature-cache: .*'abc'"):
        TrainConfig.build({"feature_cache": "abc"})
    assert main(["eval", "--task", "easyvqa", "--model", "nowhere", "--feature-cache", "lots"]) == 2
    assert "--feature-cache: expected a size" in capsys.readouterr().err


def test_lru_eviction_keeps_the_most_recent_within_the_bound():
    cache = FeatureCache(max_bytes=3 * 16, chunk=1)                    # three 4-float entries
    calls = []

    def encode(indices):
        calls.extend(indices)
        return [torch.full((4,), float(i)) for i in indices]

    cache.lookup(["a", "b", "c"], encode)
    cache.lookup(["a"], encode)                                  # a is now the most recent
    cache.lookup(["d"], encode)                                  # evicts b, the least recent
    assert list(cache.entries) == ["c", "a", "d"] and cache.bytes == 48 and cache.evictions == 1
    out = cache.lookup(["b", "b", "a"], encode)                  # b again: one tower run for both
    assert calls == [0, 1, 2, 0, 0] and torch.equal(out[0], out[1])
    assert cache.stats()["hits"] == 3 and cache.stats()["misses"] == 5


def test_a_size_below_one_byte_is_an_error_not_off(capsys):
    for text in ("0.5", ".3", "0.9B"):
        with pytest.raises(ValueError, match="less than one byte"):
            parse_size(text)
    assert parse_size("0.5MB") == 500_000 and parse_size("0.0") == 0
    with pytest.raises(UserError, match=r"^--feature-cache: '0.5' is less than one byte"):
        TrainConfig.build({"feature_cache": "0.5"})
    assert main(["train", "--feature-cache", "0.5", "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--feature-cache: '0.5' is less than one byte" in err


def test_a_batch_of_misses_goes_through_the_tower_in_fixed_size_chunks():
    calls = []

    def encode(indices):
        calls.append(list(indices))
        return [torch.full((2,), float(i)) for i in indices]

    cache = FeatureCache(max_bytes=10 ** 6)
    out = cache.lookup([f"k{i}" for i in range(12)], encode)    # chunk from the first batch: 6 of 12
    assert cache.chunk == 6 and calls == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    assert [float(o[0]) for o in out] == list(range(12))
    calls.clear()
    out = cache.lookup(["k0", "new1", "k3", "new2", "new1"], encode)   # two misses: one call, filled up
    assert calls == [[1, 3, 3, 3, 3, 3]] and [float(o[0]) for o in out] == [0, 1, 3, 3, 1]
    calls.clear()
    groups = cache.lookup(["a", "b", "c"], encode, group=lambda i: i % 2)   # a call per group
    assert calls == [[0, 2, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1]] and [float(g[0]) for g in groups] == [0, 1, 2]
    from vlm_grades.feature_cache.memory import chunk_size
    assert [chunk_size(b) for b in (1, 4, 8, 12, 64, 13, 9)] == [1, 4, 8, 6, 8, 13, 3]


def test_a_cache_that_mostly_misses_switches_itself_off(tmp_path):
    from vlm_grades.feature_cache.memory import WINDOW

    cache = FeatureCache(max_bytes=4 * 8, chunk=4)                   # four 2-float entries
    encode = lambda indices: [torch.full((2,), float(i)) for i in indices]   # noqa: E731
    step = 0
    while cache.cannot_pay() is None:                                # every image new: nothing is ever found
        cache.lookup([f"k{step}-{i}" for i in range(4)], encode)
        step += 1
        assert step * 4 <= WINDOW + 8
    assert cache.full() and step * 4 >= WINDOW
    cache.switch_off()
    assert cache.entries == {} and cache.bytes == 0
    out = cache.lookup(["k0-0", "k0-0"], encode)                     # still answers, keeps nothing
    assert [float(o[0]) for o in out] == [0, 0] and not cache.entries

    paying = FeatureCache(max_bytes=4 * 8, chunk=4)                  # a cache that hits half the time
    for step in range(WINDOW):
        paying.lookup(["r0", "r1"] + [f"n{step}-{i}" for i in range(2)], encode)
        assert paying.cannot_pay() is None


# ---------------------------------------------------------------- nanoVLM
def test_nanovlm_cached_loss_and_logits_equal_the_tower(nano):
    adapter, samples = nano
    batch = nano_batches(adapter, samples)[0]
    model = adapter.model
    with torch.no_grad():
        logits, loss = model(batch["input_ids"], batch["images"], batch["attention_mask"], batch["labels"])
        adapter.feature_cache = FeatureCache(10 ** 9)
        try:
            for _ in range(2):                                   # first pass fills, second only hits
                features = adapter._cached_features(batch)
                c_logits, c_loss = model(batch["input_ids"], batch["images"], batch["attention_mask"],
                                         batch["labels"], image_features=features)
                assert rel(c_logits, logits) < TOL and rel(c_loss, loss) < TOL
                assert rel(adapter.loss(batch).detach(), loss) < TOL
            assert adapter.feature_cache.stats()["misses"] == len(set(batch["image_keys"]))
        finally:
            adapter.feature_cache = None


def test_nanovlm_cache_smaller_than_the_data_evicts_and_stays_exact(nano):
    adapter, samples = nano
    batches = nano_batches(adapter, samples)
    per_image = per_image_bytes(adapter)
    images = len({k for b in batches for k in b["image_keys"]})
    stats = cached_losses_equal_the_tower(adapter, batches, FeatureCache(max_bytes=2 * per_image))
    assert images > 2 and stats["entries"] <= 2 and stats["bytes"] <= 2 * per_image and stats["evictions"] > 0


# ---------------------------------------------------------------- training
RUN = ["train", "--model", "nanovlm", "--max-samples", "128", "--batch-size", "8", "--steps", "16",
       "--checkpoint-every", "8", "--eval-split=", "--no-progress", "--seed", "2", "--mix-fraction", "0",
       "--stopping", "none", "--freeze", "vision,projector"]


def test_training_with_frozen_tower_uses_the_cache_and_matches_the_tower(tmp_path, capsys):
    assert main(RUN + ["--out", str(tmp_path / "cached")]) == 0
    assert "feature cache on from step 0" in capsys.readouterr().out
    assert main(RUN + ["--out", str(tmp_path / "plain"), "--feature-cache", "0"]) == 0
    run = RunFolder(tmp_path / "cached")
    events = [e for e in run.read("events") if e["type"] == "feature_cache"]
    assert events == [{"type": "feature_cache", "step": 0, "state": "on", "max_bytes": 2_000_000_000}]
    last = run.read("metrics")[-1]
    assert last["feature_cache"]["hit_rate"] > 0.5 and last["feature_cache"]["bytes"] > 0
    assert sum(m["cached_rows"]["vision"] for m in run.read("metrics")) > 0
    assert not any("feature_cache" in m for m in RunFolder(tmp_path / "plain").read("metrics"))
    from vlm_grades.report import flops
    from vlm_grades.report.run_data import RunData

    saved = {r: flops.estimate(RunData.load(tmp_path / r))["modalities"]["vision"]["saved"] for r in ("cached", "plain")}
    vision = json.loads((tmp_path / "cached" / "components.json").read_text())["modalities"]["vision"]["parameters"]
    skipped = sum(m["cached_rows"]["vision"] for m in run.read("metrics"))
    assert saved["cached"] - saved["plain"] == pytest.approx(2 * vision * skipped)   # the skipped forwards
    first = [RunFolder(tmp_path / r).read("metrics")[0]["loss"] for r in ("cached", "plain")]
    assert abs(first[0] - first[1]) < TOL * abs(first[1])
    a, b = final_weights(tmp_path / "cached"), final_weights(tmp_path / "plain")
    assert max(rel(a[k], b[k]) for k in a) < 1e-3       # 16 AdamW steps amplify 1e-7 differences of the features


def test_resumed_run_with_cache_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    import shutil

    run = tmp_path / "run"
    assert main(RUN + ["--out", str(run)]) == 0
    whole = final_weights(run)
    shutil.rmtree(run / "final")          # train it again from its step-8 checkpoint, with an empty cache
    shutil.rmtree(run / "checkpoints" / "step-16")   # (its end checkpoint would leave nothing to train)
    assert main(RUN + ["--out", str(run), "--resume"]) == 0
    again = final_weights(run)
    assert set(again) == set(whole)
    assert all(torch.equal(again[k], whole[k]) for k in whole)
    step9 = [m for m in RunFolder(run).read("metrics") if m["step"] == 9][0]["feature_cache"]
    assert step9["hits"] + step9["misses"] == 8 and step9["misses"] > 0   # rebuilt from empty at step 8


def test_a_training_cache_too_small_to_pay_switches_off_in_one_line(tmp_path, capsys, monkeypatch):
    """A cache of two images (b49fe67: a 4% hit rate was 1.29x slower than no cache, and stayed on): once full and
    judged it goes off with one line and an event; the run's losses are those of a cache that stayed on (features
    keep their bits). For a test of a few steps the window is shortened and the bar raised (easy-VQA asks several
    questions of an image, so even two entries hit half the time)."""
    import vlm_grades.feature_cache.memory as memory

    monkeypatch.setattr(memory, "WINDOW", 32)
    monkeypatch.setattr(memory, "MIN_HIT_RATE", 0.9)
    argv = RUN + ["--max-samples", "64", "--steps", "10", "--checkpoint-every", "100", "--feature-cache", "20kB"]
    assert main(argv + ["--out", str(tmp_path / "small")]) == 0
    out = capsys.readouterr().out
    assert out.count("feature cache off from step") == 1 and "hits over the last" in out, out
    run = RunFolder(tmp_path / "small")
    events = [e for e in run.read("events") if e["type"] == "feature_cache"]
    assert [e["state"] for e in events] == ["on", "off"] and 0 < events[1]["step"] < 10
    last = run.read("metrics")[-1]["feature_cache"]
    assert last["entries"] == 0 and last["bytes"] == 0
    monkeypatch.setattr(memory, "WINDOW", 10 ** 9)                 # never judged: stays on
    assert main(argv + ["--out", str(tmp_path / "kept")]) == 0
    assert [m["loss"] for m in RunFolder(tmp_path / "kept").read("metrics")] == [m["loss"] for m in run.read("metrics")]


# GradES itself freezes the tower mid-run: vision and projector (tau 1e9) at the first check after the grace
# period, step 4; the language model (tau 1e-30) never. 64 samples / 8 = 8 steps per epoch: steps 9-12 see the
# images again.
MID_RUN = ["train", "--model", "nanovlm", "--max-samples", "64", "--batch-size", "8", "--steps", "12",
           "--checkpoint-every", "6", "--eval-split=", "--no-progress", "--seed", "2", "--alpha", "4", "--patience",
           "1", "--tau-vision", "1e9", "--tau-projector", "1e9", "--tau-language", "1e-30"]


def test_the_cache_switches_on_when_grades_finalizes_the_tower_mid_run_and_after_a_resume(tmp_path):
    import shutil

    cached, plain = tmp_path / "cached", tmp_path / "plain"
    assert main(MID_RUN + ["--out", str(cached)]) == 0
    assert main(MID_RUN + ["--out", str(plain), "--feature-cache", "0"]) == 0
    run = RunFolder(cached)
    finalized = {e["modality"]: e["step"] for e in run.read("events") if e["type"] == "finalize"}
    assert finalized == {"vision": 4, "projector": 4}
    assert [(e["step"], e["state"]) for e in run.read("events") if e["type"] == "feature_cache"] == [(4, "on")]
    metrics = {m["step"]: m for m in run.read("metrics")}
    assert not any("feature_cache" in metrics[s] or "cached_rows" in metrics[s] for s in range(1, 4))
    lookups = {s: metrics[s]["feature_cache"]["hits"] + metrics[s]["feature_cache"]["misses"] for s in range(4, 13)}
    assert lookups == {s: 8 * (s - 4) for s in range(4, 13)}            # on after step 4: 8 images a step
    assert all(metrics[s]["cached_rows"]["vision"] > 0 for s in range(5, 13))
    losses = [[m["loss"] for m in RunFolder(r).read("metrics")] for r in (cached, plain)]
    assert losses[0][:4] == losses[1][:4]                               # the same run until the switch
    assert losses[0][4:] == pytest.approx(losses[1][4:], rel=1e-4)      # then the tower's features, from the cache
    whole = final_weights(cached)
    assert max(rel(whole[k], v) for k, v in final_weights(plain).items()) < 1e-3

    shutil.rmtree(cached / "final")      # resumed from its step-6 checkpoint: the tower is frozen from the start
    shutil.rmtree(cached / "checkpoints" / "step-12")   # (its end checkpoint would leave nothing to train)
    assert main(MID_RUN + ["--out", str(cached), "--resume"]) == 0
    events = [(e["step"], e["state"]) for e in RunFolder(cached).read("events") if e["type"] == "feature_cache"]
    assert events == [(4, "on"), (6, "on")]
    step7 = [m for m in RunFolder(cached).read("metrics") if m["step"] == 7][0]["feature_cache"]
    assert step7["hits"] + step7["misses"] == 8 and step7["misses"] > 0  # rebuilt from empty at step 6
    again = final_weights(cached)
    assert all(torch.equal(again[k], whole[k]) for k in whole)


def test_random_augmentation_keeps_the_cache_off(tmp_path, capsys, monkeypatch):
    from vlm_grades.models.nanovlm import NanoVLMAdapter

    original = NanoVLMAdapter.__init__

    def with_noise(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.augment = lambda pixels: pixels + 0.05 * torch.randn_like(pixels)

    monkeypatch.setattr(NanoVLMAdapter, "__init__", with_noise)
    assert main(RUN + ["--out", str(tmp_path / "aug"), "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("feature cache off: random image augmentation") == 1
    run = RunFolder(tmp_path / "aug")
    events = [e for e in run.read("events") if e["type"] == "feature_cache"]
    assert [e["state"] for e in events] == ["off"]
    assert not any("feature_cache" in m for m in run.read("metrics"))


# ---------------------------------------------------------------- eval
def test_eval_with_and_without_the_cache_writes_identical_predictions(nano, tmp_path):
    adapter, _ = nano
    model = tmp_path / "model"
    state = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    try:
        with torch.no_grad():   # a random model whose answers depend on the image: larger weights
            for p in adapter.model.parameters():
                if p.dim() > 1:
                    p.mul_(4)
        adapter.save(model)
    finally:
        adapter.model.load_state_dict(state)
    common = ["eval", "--task", "easyvqa", "--model", str(model), "--max-samples", "64", "--batch-size", "16",
              "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "with")]) == 0
    assert main(common + ["--out", str(tmp_path / "without"), "--feature-cache", "0"]) == 0
    with_ = json.loads((tmp_path / "with" / "easyvqa_predictions.json").read_text())
    assert with_ == json.loads((tmp_path / "without" / "easyvqa_predictions.json").read_text())
    answers = [json.loads(line)["prediction"] for line in open(tmp_path / "with" / "easyvqa_samples.jsonl")]
    assert len(set(answers)) > 5    # many different answers: features of the wrong image would show
    stats = json.loads((tmp_path / "with" / "easyvqa_scores.json").read_text())["generation"]["feature_cache"]
    assert stats["hits"] > 0 and stats["misses"] + stats["hits"] == 64
    assert "feature_cache" not in json.loads((tmp_path / "without" / "easyvqa_scores.json").read_text())["generation"]


# ---------------------------------------------------------------- Qwen2.5-VL
@pytest.fixture(scope="module")
def qwen_ckpt(tiny_qwen_dir) -> Path:
    return tiny_qwen_dir


def qwen_samples() -> list[Sample]:
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (100, 60), (0, 0, 255))
    return [Sample("q1", red, "What shape is in the image?", ["circle"], "easyvqa"),
            Sample("q2", blue, "What color is the shape?", ["blue"], "easyvqa"),
            Sample("q3", red, "What color is the shape?", ["red"], "easyvqa")]


@pytest.mark.parametrize("lora", [None, "language"])
def test_qwen_cached_loss_and_logits_equal_the_tower(qwen_ckpt, lora):
    from vlm_grades.models.lora import LoraSettings
    from vlm_grades.models.qwen2_5_vl import Qwen25VLAdapter
    from vlm_grades.models.qwen_cached_features import spliced_inputs

    torch.manual_seed(0)
    settings = LoraSettings(targets=lora, dropout=0.0) if lora else None
    adapter = Qwen25VLAdapter.load(str(qwen_ckpt), lora=settings)
    if lora:   # adapters start at zero: move them so the language path is really adapted
        for name, p in adapter.model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    assert adapter.feature_cache_blocker() is None
    adapter.model.eval()
    batch = adapter.collate([adapter.preprocess(s, train=True) for s in qwen_samples()])
    with torch.no_grad():
        inputs = adapter._inputs(batch)
        logits = adapter.model(**inputs).logits
        loss = adapter.loss(batch)
        adapter.feature_cache = FeatureCache(10 ** 8)
        for _ in range(2):
            features = adapter._cached_features(batch)
            c_logits = adapter.model(**spliced_inputs(adapter.hf_model(), inputs, features)).logits
            assert rel(c_logits, logits) < TOL
            assert rel(adapter.loss(batch), loss) < TOL
        assert adapter.feature_cache.stats()["misses"] == 2 and adapter.feature_cache.stats()["hits"] == 4 * 3 - 2
        gen = adapter.collate([adapter.preprocess(s, train=False) for s in qwen_samples()])
        cached_answers = adapter.generate(gen, max_new_tokens=4)
        adapter.feature_cache = None
        assert cached_answers == adapter.generate(gen, max_new_tokens=4)


def test_qwen_lora_on_the_vision_tower_blocks_the_cache(qwen_ckpt):
    from vlm_grades.models.lora import LoraSettings
    from vlm_grades.models.qwen2_5_vl import Qwen25VLAdapter

    adapter = Qwen25VLAdapter.load(str(qwen_ckpt), lora=LoraSettings(targets="language,vision"))
    assert "LoRA adapters on the vision" in adapter.feature_cache_blocker()


def test_qwen_lora_training_with_frozen_tower_uses_the_cache(qwen_ckpt, tmp_path):
    argv = ["train", "--model", "qwen2.5-vl", "--model-path", str(qwen_ckpt), "--task", "easyvqa", "--steps", "6",
            "--batch-size", "4", "--max-samples", "24", "--eval-split=", "--no-progress", "--stopping", "none",
            "--lora", "--freeze", "vision,projector"]
    assert main(argv + ["--out", str(tmp_path / "cached")]) == 0
    assert main(argv + ["--out", str(tmp_path / "plain"), "--feature-cache", "0"]) == 0
    cached, plain = (RunFolder(tmp_path / r).read("metrics") for r in ("cached", "plain"))
    assert cached[-1]["feature_cache"]["hits"] > 0
    for a, b in zip(cached, plain):
        assert abs(a["loss"] - b["loss"]) < 1e-5 * abs(b["loss"])
