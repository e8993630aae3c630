"""The shipped nanoVLM base (nanovlm/base): loads offline, covers easy-VQA's words, meets its stated score on
its own held-out pictures, and is what the embedded default fine-tunes."""
from __future__ import annotations

import json

import pytest

from nanovlm import BASE_DIR
from vlm_grades.config import TrainConfig
from vlm_grades.data.scenes import load_scenes
from vlm_grades.errors import UserError
from vlm_grades.grades.config import GradESConfig

# stated in README and docs/GRADES.md ("The shipped base"): held-out scenes accuracy on the first 100 test
# pictures (the whole test split is in nanovlm/base/BUILD.json)
STATED_SCENES_ACCURACY = 95.0


def test_shipped_base_is_small_and_complete():
    names = {p.name for p in BASE_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "BUILD.json"} <= names
    assert sum(p.stat().st_size for p in BASE_DIR.iterdir()) < 10 * 2 ** 20
    build = json.loads((BASE_DIR / "BUILD.json").read_text())
    assert build["scenes_test"]["accuracy"] >= STATED_SCENES_ACCURACY


def test_base_tokenizer_covers_every_easyvqa_word():
    import easy_vqa

    from vlm_grades.models.nanovlm import NanoVLMAdapter

    tok = NanoVLMAdapter.load(BASE_DIR).tokenizer
    unk = tok.unk_token_id
    for questions, answers, _ in (easy_vqa.get_train_questions(), easy_vqa.get_test_questions()):
        words = {w for text in questions + answers for w in text.replace("?", " ?").split()}
        missing = sorted(w for w in words if tok.convert_tokens_to_ids(w) == unk)
        assert not missing, missing


def test_base_loads_offline_and_meets_its_stated_score(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from eval.runner import evaluate
    from vlm_grades.models.nanovlm import NanoVLMAdapter

    adapter = NanoVLMAdapter.load(BASE_DIR)
    samples = load_scenes("test", pictures=100)
    result = evaluate(adapter, samples, "scenes", tmp_path, batch_size=128, progress=False)
    assert result["n"] == 900
    assert result["score"] >= STATED_SCENES_ACCURACY, result["metrics"]["per_kind"]


def test_the_default_fine_tunes_the_base_and_from_scratch_keeps_the_old_recipe():
    # the recipe README states (warmup-stable-decay ended by GradES, capped at 1000 steps, batch 64, lr 3e-4, 50
    # warm-up steps, a linear cooldown of 0.4 of the steps done, the plateau test's window after a 300-step grace
    # period), not the code's constants
    cfg = TrainConfig.build({})
    assert (cfg.cooldown, cfg.cooldown_shape, cfg.min_lr_ratio) == (0.4, "linear", 0.1)
    grades = GradESConfig.from_dict(cfg.grades)
    assert (grades.alpha, grades.converge_window, grades.converge_tolerance, grades.converge_patience) == (300, 200, 0.1, 10)
    assert cfg.model_path == str(BASE_DIR) and not cfg.from_scratch and cfg.task == "easyvqa"
    assert (cfg.steps, cfg.batch_size, cfg.mix_fraction, cfg.schedule, cfg.stopping) == (1000, 64, 0.0, "wsd", "grades")
    assert cfg.warmup == 50
    assert (cfg.lr_vision, cfg.lr_projector, cfg.lr_language) == (3e-4, 3e-4, 3e-4)
    scratch = TrainConfig.build({"from_scratch": True})
    assert scratch.model_path is None and scratch.steps == 2000 and scratch.lr_language == 1e-3
    assert (scratch.mix_task, scratch.mix_fraction) == ("easyvqa-caption", 0.5)
    given = TrainConfig.build({"model_path": "someone/nanoVLM-fine"})      # a hub id: fetched when training
    assert given.model_path == "someone/nanoVLM-fine" and (given.steps, given.lr_vision) == (1000, 3e-4)
    assert TrainConfig.build({"task": "easyvqa-caption"}).model_path is None      # captions: from scratch
    assert TrainConfig.build({"preset": "smol"}).model_path is None               # no base for smol
    with pytest.raises(UserError, match="^--from-scratch: only for --model nanovlm without --model-path$"):
        TrainConfig.build({"from_scratch": True, "model_path": "x"})
