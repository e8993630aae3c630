"""The feature cache in a two-process run on the CPU (gloo): with the tower frozen from step 1, both ranks switch
the cache on at the same step and each serves hits from its own images (memory and its own disk-tier file); the
final weights equal those of the same run without the cache."""
from __future__ import annotations

import pytest
import torch

from test_train_ddp import check_ok, rank_states, torchrun
from vlm_grades.training.run_folder import RunFolder

# 64 samples over 2 processes, 4 per step each: 8 steps per epoch. One image per micro-batch: the run without
# the cache then also sends one image per tower forward, as the cache does, so its features are the same bits
# (a batched forward differs by ~1e-7, which AdamW's sign-like first steps amplify to ~1e-4 in the weights).
RUN = ["--model", "nanovlm", "--from-scratch", "--max-samples", "64", "--batch-size", "1", "--grad-accum", "4",
       "--steps", "6", "--checkpoint-every", "100", "--eval-split=", "--no-progress", "--seed", "3",
       "--mix-fraction", "0", "--stopping", "none", "--freeze", "vision,projector"]


def final_weights(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_cache_alike_and_end_as_without_cache(tmp_path):
    from nanovlm.config import VLMConfig

    model_cfg = VLMConfig.preset("tiny")
    two_images = str(2 * model_cfg.mp_image_token_length * model_cfg.lm_hidden_dim * 4)
    cached, plain = tmp_path / "cached", tmp_path / "plain"
    check_ok(torchrun(*RUN, "--feature-cache", two_images, "--feature-cache-disk", "1MB", "--out", str(cached)))
    check_ok(torchrun(*RUN, "--feature-cache", "0", "--out", str(plain)))

    states = rank_states(cached)
    assert [s["feature_cache_on_step"] for s in states] == [0, 0]         # the same decision on both ranks
    assert [s["feature_cache_on_step"] for s in rank_states(plain)] == [None, None]
    assert states[0]["weights_sha256"] == states[1]["weights_sha256"]
    events = [e for e in RunFolder(cached).read("events") if e["type"] == "feature_cache"]
    assert [(e["step"], e["state"]) for e in events] == [(0, "on")]

    metrics = RunFolder(cached).read("metrics")
    assert all(len(m["feature_cache_ranks"]) == 2 for m in metrics)      # both ranks report from step 1
    last = metrics[-1]["feature_cache_ranks"]
    for rank in last:
        assert rank["hits"] > 0 and rank["disk_hits"] > 0 and rank["hits"] + rank["misses"] == 6 * 4
    assert last[0]["hits"] == metrics[-1]["feature_cache"]["hits"]        # rank 0's own record agrees
    assert sum(m["cached_rows"]["vision"] for m in metrics) > 0
    assert not list(cached.glob("feature-cache-rank-*"))                  # each rank's disk file deleted

    a, b = final_weights(cached), final_weights(plain)
    worst = max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-30)) for k in b)
    assert worst < 1e-6, worst
