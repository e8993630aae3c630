"""Mixing a second task into training: defaults, proportions, errors."""
from __future__ import annotations

import pytest

from vlm_grades.config import TrainConfig
from vlm_grades.errors import UserError
from vlm_grades.training.data import load_split, mix_in


def test_nanovlm_from_scratch_on_easyvqa_mixes_in_captions_by_default_and_only_there():
    cfg = TrainConfig.build({"from_scratch": True})
    assert (cfg.mix_task, cfg.mix_fraction) == ("easyvqa-caption", 0.5)
    assert TrainConfig.build({}).mix_fraction == 0.0          # fine-tuning the shipped base: questions only
    assert TrainConfig.build({"task": "easyvqa-caption"}).mix_fraction == 0.0
    assert TrainConfig.build({"model": "qwen2.5-vl", "model_path": "x", "task": "easyvqa"}).mix_fraction == 0.0
    assert TrainConfig.build({"from_scratch": True, "mix_fraction": 0}).mix_fraction == 0.0


def test_mix_in_reaches_the_fraction_with_whole_repeats():
    cfg = TrainConfig.build({"from_scratch": True, "max_samples": 600})
    main = load_split(cfg, "train", 600, "training")
    mixed, repeats = mix_in(cfg, main)
    extra = mixed[len(main):]
    assert mixed[:len(main)] == main and repeats >= 1
    assert all(s.task == "easyvqa-caption" for s in extra) and len(extra) % repeats == 0
    assert abs(len(extra) / len(mixed) - 0.5) < 0.05
    assert mix_in(TrainConfig.build({"mix_fraction": 0}), main) == (main, 0)


@pytest.mark.parametrize("layer, match", [
    ({"mix_fraction": 1.0}, "--mix-fraction: must be in"),
    ({"mix_task": "nope", "mix_fraction": 0.3}, "--mix-task: expected one of"),
    ({"task": "easyvqa-caption", "mix_task": "coco", "mix_fraction": 0.3}, "--mix-data: mixed task coco"),
])
def test_mix_config_errors(layer, match):
    with pytest.raises(UserError, match=match):
        TrainConfig.build(layer)
