"""The FLOPs estimate equals a hand computation for a tiny run written record by record."""
from __future__ import annotations

import pytest
import yaml

from vlm_grades.report import flops, summary
from vlm_grades.report.run_data import RunData
from vlm_grades.training.run_folder import RunFolder


def tiny_run(path, metrics_every: int = 1, ended: bool = True):
    """vision P=100 (one matrix n=60), projector P=20 (n=20), language P=200 (n=50, n=80); 10 planned steps,
    stopped at 6. Rows/step: vision 4, projector 2, language 3 then 5 from step 5."""
    path.mkdir(parents=True)
    run = RunFolder(path, create=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"steps": 10}))
    run.write_json("components.json", {"architecture": "nanovlm", "modalities": {
        "vision": {"parameters": 100, "monitored_parameters": 60},
        "projector": {"parameters": 20, "monitored_parameters": 20},
        "language": {"parameters": 200, "monitored_parameters": 130}}, "components": [
        {"name": "v.fc1", "modality": "vision", "layer": 0, "kind": "mlp.fc1", "numel": 60},
        {"name": "mp.proj", "modality": "projector", "layer": 0, "kind": "proj", "numel": 20},
        {"name": "l.q", "modality": "language", "layer": 0, "kind": "attn.q", "numel": 50},
        {"name": "l.up", "modality": "language", "layer": 0, "kind": "mlp.up", "numel": 80}]})
    run.append("events", {"type": "start", "step": 0, "time": 0.0, "total_steps": 10, "resumed_from": None})
    for step in range(1, 7):
        if step % metrics_every == 0:
            run.append("metrics", {"step": step, "loss": 1.0 / step, "wall": step * 1.0,
                                   "tokens": {"vision": 4, "projector": 2, "language": 3 if step <= 4 else 5}})
        run.append("convergence", {"step": step, "metric": "grad_change", "values": {"v.fc1": 1.0 / step},
                                   "tau": {"v.fc1": 0.4}, "frozen": []})
        if step == 2:
            run.append("events", {"type": "freeze", "step": 2, "component": "v.fc1", "modality": "vision",
                                  "value": 0.3, "tau": 0.4})
        if step == 3:
            run.append("events", {"type": "freeze", "step": 3, "component": "l.q", "modality": "language",
                                  "value": 0.1, "tau": 0.4})
        if step == 4:
            run.append("events", {"type": "finalize", "step": 4, "modality": "vision", "parameters": 100})
    run.append("events", {"type": "stop", "step": 6, "reason": "test"})
    if ended:
        run.append("events", {"type": "end", "step": 6, "wall_time": 6.0, "stop_reason": "test"})
    return RunData.load(path)


def test_flops_match_hand_computation(tmp_path):
    est = flops.estimate(tiny_run(tmp_path / "run"))
    v, p, lang = (est["modalities"][m] for m in ("vision", "projector", "language"))
    # baseline: 6 P r + 10 P per step
    assert v["baseline"] == 6 * (6 * 100 * 4 + 10 * 100)
    assert p["baseline"] == 6 * (6 * 20 * 2 + 10 * 20)
    assert lang["baseline"] == 4 * (6 * 200 * 3 + 10 * 200) + 2 * (6 * 200 * 5 + 10 * 200)
    # vision: v.fc1 frozen at 2 saves 2nr + 10n on steps 3-4; finalized at 4: 4Pr + 10P on steps 5-6
    assert v["saved"] == 2 * (2 * 60 * 4 + 10 * 60) + 2 * (4 * 100 * 4 + 10 * 100)
    # projector: trains on, but once vision is finalized (steps 5-6) its matrix (n=20, r=2) skips its input gradient
    assert p["saved"] == 2 * (2 * 20 * 2)
    # language: l.q frozen at 3 saves on steps 4 (r=3), 5 and 6 (r=5)
    assert lang["saved"] == (2 * 50 * 3 + 500) + 2 * (2 * 50 * 5 + 500)
    total = est["total"]
    assert total["baseline"] == 20400 + 2640 + 38400
    assert total["saved"] == 7360 + 160 + 2800
    assert total["actual"] == total["baseline"] - total["saved"]
    # 4 planned steps never run, at the mean baseline cost per step run
    assert est["remaining_steps"] == 4
    assert total["baseline_planned"] == pytest.approx(61440 + 4 * (3400 + 440 + 6400))
    assert total["saved_planned"] == pytest.approx(10320 + 4 * (3400 + 440 + 6400))
    assert v["saved_fraction"] == pytest.approx(7360 / 20400)


def test_a_modality_frozen_for_the_whole_run_does_not_train_upstream(tmp_path):
    tiny_run(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"steps": 10, "freeze": ["vision"]}))
    est = flops.estimate(RunData.load(tmp_path / "run"))
    # the projector's matrix (n=20, r=2) computes no input gradient on any of the 6 steps
    assert est["modalities"]["projector"]["saved"] == 6 * (2 * 20 * 2)


def test_sparse_metrics_stand_for_the_steps_since_the_previous_line(tmp_path):
    run = tiny_run(tmp_path / "run", metrics_every=2)
    assert list(flops.rows_per_step(run, "language", 6)) == [3, 3, 3, 3, 5, 5]
    assert list(flops.rows_per_step(run, "vision", 8)) == [4] * 8
    assert flops.estimate(run)["total"]["saved"] == 10320


def test_running_run_has_no_planned_saving(tmp_path):
    est = flops.estimate(tiny_run(tmp_path / "run", ended=False))  # a stop event without end still counts
    assert est["remaining_steps"] == 4
    (tmp_path / "run" / "events.jsonl").write_text(
        "\n".join(l for l in (tmp_path / "run" / "events.jsonl").read_text().splitlines() if '"stop"' not in l))
    est = flops.estimate(RunData.load(tmp_path / "run"))
    assert est["remaining_steps"] is None and est["total"]["saved_planned"] is None
    assert est["total"]["saved"] == 10320


def test_summary_uses_the_estimate(tmp_path):
    report = summary.build(tiny_run(tmp_path / "run"))
    assert report["modalities"]["vision"]["flops_saved"] == 7360
    assert report["modalities"]["vision"]["finalize_step"] == 4
    assert report["modalities"]["language"]["frozen"] == 1
    assert report["modalities"]["language"]["frozen_parameter_fraction"] == pytest.approx(50 / 130)
    assert report["run"]["planned_steps"] == 10 and report["run"]["steps_run"] == 6


# ------------------------------------------------------------------ against autograd's own count
ORDER = ("vision", "projector", "language")
PARAMETER_OPS = {"aten.mm", "aten.addmm", "aten.convolution", "aten.convolution_backward"}   # not attention


@pytest.fixture(scope="module")
def nanovlm_step_flops():
    """A tiny nanoVLM (patch stem: one convolution, as many rows as patches): its registry, the rows each
    modality processes per step, and the matrix FLOPs of one forward and backward per modality, measured by
    torch's FLOP counter with each set of modalities frozen."""
    import itertools

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from conftest import tiny_nanovlm
    from vlm_grades.components import build_registry

    model = tiny_nanovlm(vit_stem="patch")
    cfg = model.cfg
    registry = build_registry(model)
    params = registry.modality_parameters(model)
    B, T = 2, cfg.mp_image_token_length + 6
    ids = torch.randint(10, cfg.lm_vocab_size, (B, T))
    ids[:, 3:3 + cfg.mp_image_token_length] = cfg.image_token_id
    images = torch.randn(B, 3, cfg.vit_img_size, cfg.vit_img_size)
    prefix = {"vision": "VisionLanguageModel.vision_encoder", "projector": "VisionLanguageModel.MP",
              "language": "VisionLanguageModel.decoder"}
    flops = {}
    for k in range(3):
        for frozen in itertools.combinations(ORDER, k):
            for m, named in params.items():
                for _, p in named:
                    p.requires_grad_(m not in frozen)
            with FlopCounterMode(display=False) as counter:
                model(ids, images, torch.ones_like(ids), ids.clone())[1].backward()
            model.zero_grad(set_to_none=True)
            counts = counter.get_flop_counts()
            flops[frozenset(frozen)] = {m: sum(v for op, v in counts[prefix[m]].items() if str(op) in PARAMETER_OPS)
                                        for m in ORDER}
    rows = {"vision": B * (cfg.vit_img_size // cfg.vit_patch_size) ** 2, "projector": B * cfg.mp_image_token_length,
            "language": B * T}
    return registry, rows, flops


@pytest.mark.parametrize("order", [("vision", "projector", "language"), ("vision", "language", "projector"),
                                   ("projector", "vision", "language"), ("projector", "language", "vision"),
                                   ("language", "vision", "projector"), ("language", "projector", "vision")],
                         ids="-".join)
def test_finalized_savings_match_what_autograd_skips(tmp_path, nanovlm_step_flops, order):
    """Modalities finalized at steps 1, 2 and 3 of a 3-step run in `order`: the estimate's savings (without the
    optimizer term) equal the matrix FLOPs torch counts autograd no longer running, modality by modality."""
    registry, rows, measured = nanovlm_step_flops
    path = tmp_path / "run"
    path.mkdir()
    run = RunFolder(path, create=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"steps": 3}))
    run.write_json("components.json", registry.to_json())
    run.append("events", {"type": "start", "step": 0, "time": 0.0, "total_steps": 3, "resumed_from": None})
    for step, modality in enumerate(order, start=1):
        run.append("metrics", {"step": step, "loss": 1.0, "wall": float(step), "tokens": rows})
        run.append("events", {"type": "finalize", "step": step, "modality": modality, "parameters": 1})
    run.append("events", {"type": "stop", "step": 3, "reason": "all components frozen"})
    est = flops.estimate(RunData.load(path))
    sizes = registry.modality_sizes()
    base = measured[frozenset()]
    ratio = {}
    for m in ORDER:
        frozen_at = [frozenset(order[:k]) for k in range(3)]          # the frozen set of steps 1, 2, 3
        skipped = sum(base[m] - measured[state][m] for state in frozen_at)
        steps_after = 3 - (order.index(m) + 1)
        estimated = est["modalities"][m]["saved"] - flops.OPTIMIZER * sizes[m]["parameters"] * steps_after
        ratio[m] = estimated / skipped if skipped else estimated + 1.0
    # the model counts the tower's position embedding, norms, biases and the patch embedding's input gradient
    # (pixels need none) as matrix work: 6% of this tower's backward; the rest is exact
    assert 1 <= ratio["vision"] < 1.07 and ratio["projector"] == 1 and abs(ratio["language"] - 1) < 0.005, ratio
