"""`vlm-grades train --model qwen2.5-vl` end to end on a tiny random Qwen2.5-VL checkpoint and tiny VQAv2, GQA and
COCO data sets in the official and the Hugging Face layouts: the loss falls, LoRA trains only the adapters, GradES
freezes in all three modalities, `--freeze` composes with GradES, and `vlm-grades eval` reads the run folder."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fixtures_data import write_coco, write_gqa, write_hf_coco, write_hf_gqa, write_hf_vqav2, write_vqav2
from tiny_qwen import make_tiny_qwen
from vlm_grades.cli import main
from vlm_grades.training.run_folder import RunFolder

COCO_IDS = (139, 285, 632, 724)      # one caption sample per image: 4 for a batch of 4
LAYOUTS = {
    "vqav2-official": ("vqav2", write_vqav2, {"split": "val"}),
    "vqav2-hf": ("vqav2", write_hf_vqav2, {"split": "validation"}),
    "gqa-official": ("gqa", write_gqa, {}),
    "gqa-hf": ("gqa", write_hf_gqa, {}),
    "coco-official": ("coco", write_coco, {"split": "val", "image_ids": COCO_IDS}),
    "coco-hf": ("coco", write_hf_coco, {"split": "val", "image_ids": COCO_IDS}),
}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Path:
    return make_tiny_qwen(tmp_path_factory.mktemp("qwen") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, tuple[str, str, str]]:
    """layout -> (task, source, split)"""
    root = tmp_path_factory.mktemp("data")
    out = {}
    for name, (task, writer, kwargs) in LAYOUTS.items():
        written = writer(root / name, **kwargs)
        out[name] = (task, written["source"], written["split"])
    return out


def train(qwen: Path, out: Path, task: str, source: str, split: str, *extra: str) -> RunFolder:
    argv = ["train", "--model", "qwen2.5-vl", "--model-path", str(qwen), "--task", task, "--data", source,
            "--split", split, "--max-samples", "4", "--batch-size", "4", "--lr", "1e-2", "--warmup", "0",
            "--out", str(out), "--no-progress", "--eval-batch-size", "4", "--max-new-tokens", "4", *extra]
    assert main(argv) == 0
    return RunFolder.open_existing(out)


def losses(run: RunFolder) -> list[float]:
    return [float(r["loss"]) for r in run.read("metrics")]


def events(run: RunFolder, kind: str) -> list[dict]:
    return [e for e in run.read("events") if e["type"] == kind]


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors as written by save_pretrained (the checkpoint layout)."""
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def initial_state(qwen: Path) -> dict[str, torch.Tensor]:
    """The initial model's state dict under its in-memory names (what training checkpoints hold)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(str(qwen)).state_dict()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_loss_falls_and_held_out_eval_runs(qwen, data, layout, tmp_path):
    task, source, split = data[layout]
    held_out = ["--eval-split", split, "--eval-max-samples", "3"] if layout != "coco-hf" else []  # Java: 13 s
    run = train(qwen, tmp_path / "run", task, source, split, "--steps", "12", "--stopping", "none", *held_out)
    values = losses(run)
    assert len(values) == 12 and all(math.isfinite(v) for v in values)
    assert values[-1] < 0.7 * values[0], values               # the same 4 samples every step: memorised
    if held_out:
        (ev,) = events(run, "eval")
        assert ev["task"] == task and ev["split"] == split and ev["metrics"]["coverage"]["predictions"] == 3
    assert (run.final / "model.safetensors").exists() and (run.path / "summary.json").exists()
    assert events(run, "end")[0]["stop_reason"] == "planned steps done"


def _checkpoint_model(run: RunFolder) -> dict[str, torch.Tensor]:
    latest = run.checkpoints / (run.checkpoints / "latest").read_text().strip()
    return torch.load(latest / "model.pt", map_location="cpu", weights_only=False)


def test_lora_trains_only_adapter_weights(qwen, data, tmp_path):
    task, source, split = data["gqa-official"]
    # --freeze projector: adapters only (a --lora run trains the projector fully beside them by default)
    run = train(qwen, tmp_path / "run", task, source, split, "--steps", "8", "--stopping", "none", "--lora",
                "--lora-targets", "both", "--freeze", "projector", "--checkpoint-every", "7")
    values = losses(run)
    assert all(math.isfinite(v) for v in values) and values[-1] < values[0]
    assert (run.final / "adapter_model.safetensors").exists() and not (run.final / "model.safetensors").exists()

    # the checkpoint holds the whole wrapped model: every base weight is still the initial one
    base = initial_state(qwen)
    state = _checkpoint_model(run)
    lora = {k: v for k, v in state.items() if "lora_" in k}
    others = {k: v for k, v in state.items() if "lora_" not in k}
    assert lora and any(".visual." in k for k in lora) and any("language_model" in k for k in lora)
    assert any(float(v.abs().sum()) > 0 for k, v in lora.items() if "lora_B" in k)   # B starts at zero
    matched = 0
    for key, value in others.items():
        name = key.replace("base_model.model.", "", 1).replace(".base_layer", "")
        if name in base:
            assert torch.equal(value, base[name]), f"base weight {name} changed"
            matched += 1
    assert matched >= 0.9 * len(base), (matched, len(base))

    # the saved adapter loads back for evaluation over the untouched base model
    from safetensors.torch import load_file

    saved = load_file(str(run.final / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)

    assert main(["eval", "--task", task, "--model", str(run.path), "--data", source, "--split", split,
                 "--batch-size", "4", "--max-new-tokens", "3", "--no-progress"]) == 0
    predictions = json.loads((run.path / "eval" / "gqa_predictions.json").read_text())
    assert len(predictions) == 6 and all("prediction" in p for p in predictions)   # the whole split


@pytest.mark.parametrize("targets", ["language", "all"])
def test_lora_runs_train_and_monitor_the_projector(qwen, data, tmp_path, targets):
    """--lora trains the projector fully beside the adapters (--lora-targets projector/all: adapters on it
    instead); either way it is monitored as the projector modality and GradES can freeze it."""
    task, source, split = data["vqav2-official"]
    run = train(qwen, tmp_path / "run", task, source, split, "--steps", "6", "--lora", "--lora-targets", targets,
                "--tau-projector", "1e9", "--alpha", "3", "--patience", "1")
    projector = [c for c in run.read_json("components.json")["components"] if c["modality"] == "projector"]
    assert [c["name"] for c in projector] == ["model.visual.merger.mlp.0", "model.visual.merger.mlp.2"]
    assert all(c["name"] in run.read("convergence")[-1]["values"] for c in projector)
    frozen = {e["component"] for e in events(run, "freeze") if e["modality"] == "projector"}
    assert frozen == {c["name"] for c in projector}

    from safetensors.torch import load_file

    saved = load_file(str(run.final / "adapter_model.safetensors"))
    merger = {k: v for k, v in saved.items() if ".merger." in k}
    if targets == "all":
        assert merger and all("lora_" in k for k in merger)
    else:
        (key,) = [k for k in merger if k.endswith("merger.mlp.0.weight")]
        assert not any("lora_" in k for k in merger)
        assert not torch.equal(merger[key], initial_state(qwen)["model.visual.merger.mlp.0.weight"])


def test_grades_freezes_all_three_modalities_and_eval_reads_the_run(qwen, data, tmp_path):
    task, source, split = data["vqav2-official"]
    run = train(qwen, tmp_path / "run", task, source, split, "--steps", "20", "--tau-vision", "1e9",
                "--tau-projector", "1e9", "--tau-language", "1e9", "--alpha", "3", "--patience", "1",
                "--eval-split", split)
    freezes = events(run, "freeze")
    assert {e["modality"] for e in freezes} == {"vision", "projector", "language"}
    assert min(e["step"] for e in freezes) >= 3                    # none inside the grace period
    components = RunFolder.open_existing(run.path).read_json("components.json")["components"]
    assert {e["component"] for e in freezes} == {c["name"] for c in components}
    assert events(run, "stop")[0]["reason"] != "planned steps done"   # every matrix frozen: stopped early
    assert events(run, "end")[0]["step"] < 20
    assert len(events(run, "eval")) == 1
    convergence = run.read("convergence")
    assert convergence and set(convergence[-1]["frozen"]) == {c["name"] for c in components}

    assert main(["eval", "--task", task, "--model", str(run.path), "--data", source, "--split", split,
                 "--batch-size", "4", "--max-new-tokens", "4", "--no-progress", "--out", str(tmp_path / "ev")]) == 0
    scores = json.loads((tmp_path / "ev" / "vqav2_scores.json").read_text())
    assert scores["score"] == events(run, "eval")[0]["score"]
    # the saved model generates the answers the end-of-training evaluation got from the model in memory
    ours = json.loads((tmp_path / "ev" / "vqav2_predictions.json").read_text())
    assert ours == json.loads((run.path / "eval" / "vqav2_predictions.json").read_text())


def test_static_freeze_composes_with_grades(qwen, data, tmp_path):
    task, source, split = data["coco-hf"]
    run = train(qwen, tmp_path / "run", task, source, split, "--steps", "10", "--freeze", "vision,projector",
                "--tau-language", "1e9", "--alpha", "3", "--patience", "1", "--checkpoint-every", "2")
    freezes = events(run, "freeze")
    assert freezes and {e["modality"] for e in freezes} == {"language"}
    assert all(math.isfinite(v) for v in losses(run))
    assert run.read("metrics")[-1]["frozen"]["language"] == 1.0
    assert events(run, "end")[0]["step"] < 10          # every trainable monitored matrix frozen: stopped early

    from vlm_grades.models.qwen2_5_vl import modality_of

    base = initial_state(qwen)
    state = _checkpoint_model(run)
    changed = {modality_of(k) for k, v in state.items() if k in base and not torch.equal(v, base[k])}
    assert changed == {"language"}
    initial, final = saved_weights(qwen), saved_weights(run.final)
    assert set(initial) == set(final)
    changed = {modality_of(k) for k in final if not torch.equal(final[k], initial[k])}
    assert changed == {"language"}
