"""The frozen-tower feature cache: cached features give the losses and logits of the tower (nanoVLM and a tiny
random Qwen2.5-VL, full and LoRA); a cache smaller than the data evicts and stays exact; random augmentation keeps
it off; training turns it on with the frozen tower, a resumed run ends where an uninterrupted one does; eval
writes the same predictions with and without it; --feature-cache validation."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from vlm_grades.cli import main  # noqa: E402
from vlm_grades.config import TrainConfig  # noqa: E402
from vlm_grades.data.schema import Sample  # noqa: E402
from vlm_grades.errors import UserError  # noqa: E402
from vlm_grades.feature_cache.memory import FeatureCache, parse_size  # noqa: E402
from vlm_grades.training.run_folder import RunFolder  # noqa: E402

TOL = 1e-6


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


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
    cache = FeatureCache(max_bytes=3 * 16)                      # three 4-float entries
    calls = []

    def encode(i):
        calls.append(i)
        return torch.full((4,), float(i))

    cache.lookup(["a", "b", "c"], encode)
    cache.lookup(["a"], encode)                                  # a is now the most recent
    cache.lookup(["d"], encode)                                  # evicts b, the least recent
    assert list(cache.entries) == ["c", "a", "d"] and cache.bytes == 48 and cache.evictions == 1
    out = cache.lookup(["b", "b", "a"], encode)                  # b again: one tower run for both
    assert calls == [0, 1, 2, 0, 0] and torch.equal(out[0], out[1])
    assert cache.stats()["hits"] == 3 and cache.stats()["misses"] == 5


# ---------------------------------------------------------------- nanoVLM
@pytest.fixture(scope="module")
def nano():
    from vlm_grades.models import build_adapter
    from vlm_grades.training.data import load_split

    torch.manual_seed(0)
    cfg = TrainConfig.build({"model": "nanovlm", "task": "easyvqa", "max_samples": 96, "progress": False,
                            "from_scratch": True})   # random weights: a loss far from 0
    samples = load_split(cfg, cfg.split, cfg.max_samples, "training")
    return build_adapter(cfg, samples), samples


def nano_batches(adapter, samples, size=16):
    return [adapter.collate([adapter.preprocess(s, train=True) for s in samples[i:i + size]])
            for i in range(0, len(samples), size)]


def per_image_bytes(adapter) -> int:
    return adapter.cfg.mp_image_token_length * adapter.cfg.lm_hidden_dim * 4   # float32 projector output


def cached_losses_equal_the_tower(adapter, batches, cache: FeatureCache) -> dict:
    """Two passes over `batches` with `cache`: every loss equals the uncached one; -> the cache's stats"""
    with torch.no_grad():
        plain = [adapter.loss(b) for b in batches]
        adapter.feature_cache = cache
        try:
            for _ in range(2):
                for b, ref in zip(batches, plain):
                    assert rel(adapter.loss(b), ref) < TOL
            return cache.stats()
        finally:
            adapter.feature_cache = None


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


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "model.safetensors"))


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
    a, b = weights(tmp_path / "cached"), weights(tmp_path / "plain")
    assert max(rel(a[k], b[k]) for k in a) < 1e-3       # 16 AdamW steps amplify 1e-7 differences of the features


def test_resumed_run_with_cache_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    import shutil

    run = tmp_path / "run"
    assert main(RUN + ["--out", str(run)]) == 0
    whole = weights(run)
    shutil.rmtree(run / "final")          # train it again from its step-8 checkpoint, with an empty cache
    assert main(RUN + ["--out", str(run), "--resume"]) == 0
    again = weights(run)
    assert set(again) == set(whole)
    assert all(torch.equal(again[k], whole[k]) for k in whole)
    step9 = [m for m in RunFolder(run).read("metrics") if m["step"] == 9][0]["feature_cache"]
    assert step9["hits"] + step9["misses"] == 8 and step9["misses"] > 0   # rebuilt from empty at step 8


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
def qwen_ckpt(tmp_path_factory) -> Path:
    from tiny_qwen import make_tiny_qwen

    return make_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen"))


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
