"""`vlm-grades train` through the command line: bad input is one line on stderr naming the culprit, exit status 2
and no run folder; a short default nanoVLM run lowers the loss and writes every file of docs/RUN_FOLDER.md;
TensorBoard logging; classic early stopping restores the best weights (also across a resume)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from fixtures_data import not_an_image, write_hf_coco, write_hf_vqav2, write_vqav2
from vlm_grades.cli import main
from vlm_grades.training.run_folder import RunFolder

QUICK = ["--steps", "2", "--max-samples", "16", "--batch-size", "8", "--eval-split=", "--alpha", "1"]


def train(*argv: str) -> int:
    return main(["train", "--no-progress", *argv])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    p = {"root": root}
    p["broken_yaml"] = root / "broken.yaml"
    p["broken_yaml"].write_text("steps: [3\n")
    p["unknown_yaml"] = root / "unknown.yaml"
    p["unknown_yaml"].write_text("steps: 3\nstepz: 3\n")
    p["badtype_yaml"] = root / "badtype.yaml"
    p["badtype_yaml"].write_text("batch_size: eight\n")
    p["config_dir"] = root / "configs"
    p["config_dir"].mkdir()
    p["empty"] = root / "empty-model"
    p["empty"].mkdir()
    p["broken_config"] = root / "broken-config"
    p["broken_config"].mkdir()
    (p["broken_config"] / "config.json").write_text('{"model_type": "nanovlm", ')
    p["qwen_config"] = root / "qwen-config"
    p["qwen_config"].mkdir()
    (p["qwen_config"] / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    p["gguf"] = root / "smollm2"
    p["gguf"].mkdir()
    (p["gguf"] / "SmolLM2-135M-Instruct.Q4_1.gguf").write_text("not a GGUF file")

    vqa = write_vqav2(root / "vqa", split="val", image_ids=(9, 25, 42, 77))
    p["vqa"] = Path(vqa["source"])
    bad = write_vqav2(root / "vqa-bad", split="val", image_ids=(9, 25, 42, 77))
    p["vqa_bad"], p["not_an_image"] = Path(bad["source"]), not_an_image(bad["images"][25])
    p["mixed"] = root / "mixed"          # VQAv2 and COCO parquet files in one folder
    write_hf_vqav2(p["mixed"], fmt="parquet", split="validation")
    write_hf_coco(p["mixed"], fmt="parquet", split="val")
    p["a_file"] = root / "a-file"
    p["a_file"].write_text("not a folder")

    # a real nanoVLM checkpoint, then copies of it that do not match
    run = root / "nano-run"
    assert train(*QUICK, "--out", str(run)) == 0
    p["nano"] = run / "final"
    p["nano_truncated"] = root / "nano-truncated"
    shutil.copytree(p["nano"], p["nano_truncated"])
    weights = p["nano_truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    p["nano_mismatch"] = root / "nano-mismatch"
    shutil.copytree(p["nano"], p["nano_mismatch"])
    config = json.loads((p["nano_mismatch"] / "config.json").read_text())
    config["lm_hidden_dim"] //= 2
    (p["nano_mismatch"] / "config.json").write_text(json.dumps(config))
    return p


VQA = ["--task", "vqav2", "--split", "val"]
QWEN = ["--model", "qwen2.5-vl", *VQA]
BAD = {
    # case: (argv with {name} placeholders for inputs, text the error line must contain)
    "model-without-value": (["--model"], "--model"),
    "unknown-model": (["--model", "llava"], "llava"),
    "qwen-without-model-path": (["--model", "qwen2.5-vl"], "--model-path"),
    "unknown-preset": (["--preset", "huge"], "huge"),
    "yaml-not-valid": (["--config", "{broken_yaml}"], "broken.yaml"),
    "yaml-unknown-key": (["--config", "{unknown_yaml}"], "stepz"),
    "yaml-wrong-type": (["--config", "{badtype_yaml}"], "batch_size"),
    "yaml-is-a-folder": (["--config", "{config_dir}"], "configs"),
    "yaml-missing": (["--config", "{root}/missing.yaml"], "missing.yaml"),
    "data-missing": ([*VQA, "--data", "{root}/no-such-data"], "no-such-data"),
    "data-without-vqav2": ([*VQA, "--data", "{empty}"], "empty-model"),
    "not-an-image-strict": ([*VQA, "--data", "{vqa_bad}", "--strict"], "{not_an_image}"),
    "eval-split-missing": ([*VQA, "--data", "{vqa}", "--eval-split", "nope"], "nope"),
    "eval-split-unknown": (["--max-samples", "16", "--eval-split", "bogus"], "--eval-split"),
    "val-split-unknown": (["--max-samples", "16", "--stopping", "classic", "--val-split", "bogus"],
                          "--val-split"),
    "data-mixing-data-sets": (["--task", "vqav2", "--split", "validation", "--data", "{mixed}"],
                              "multiple_choice_answer"),
    "eval-data-missing": ([*VQA, "--data", "{vqa}", "--eval-split", "val", "--eval-data", "{root}/gone"], "gone"),
    "nanovlm-path-missing": (["--model-path", "{root}/no-model"], "no-model"),
    "nanovlm-path-empty": (["--model-path", "{empty}"], "empty-model"),
    "nanovlm-path-broken-config": (["--model-path", "{broken_config}"], "config.json"),
    "nanovlm-path-is-qwen": (["--model-path", "{qwen_config}"], "qwen-config"),
    "nanovlm-path-truncated-weights": (["--model-path", "{nano_truncated}"], "model.safetensors"),
    "nanovlm-path-shape-mismatch": (["--model-path", "{nano_mismatch}"], "model.safetensors"),
    "nanovlm-lm-weights-not-gguf": (["--preset", "smol", "--lm-weights", "{gguf}"], "smollm2"),
    "qwen-path-empty": ([*QWEN, "--data", "{vqa}", "--model-path", "{empty}"], "empty-model"),
    "qwen-path-is-nanovlm": ([*QWEN, "--data", "{vqa}", "--model-path", "{nano}"], "nanovlm"),
    "qwen-path-broken-config": ([*QWEN, "--data", "{vqa}", "--model-path", "{broken_config}"], "config.json"),
    "bad-batch": (["--batch-size", "0"], "--batch-size"),
    "batch-larger-than-data": (["--steps", "2", "--max-samples", "4", "--batch-size", "16", "--stopping", "none"],
                               "--batch-size"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_no_run_folder(inputs, case, tmp_path, capsys):
    assert_rejected(inputs, *BAD[case], tmp_path / "run", capsys)


# every setting is checked before any data is read: the missing data set would otherwise be the error
NO_DATA = ["--task", "vqav2", "--split", "val", "--data", "{root}/no-such-data"]
QWEN_LORA = ["--model", "qwen2.5-vl", "--model-path", "{empty}", "--lora"]
SETTINGS = {
    "lr-negative": (["--lr", "-1"], "--lr:"),
    "lr-nan": (["--lr", "nan"], "--lr:"),
    "lr-vision-zero": (["--lr-vision", "0"], "--lr-vision"),
    "lr-projector-inf": (["--lr-projector", "inf"], "--lr-projector"),
    "lr-language-negative": (["--lr-language=-1e-3"], "--lr-language"),
    "weight-decay-negative": (["--weight-decay", "-0.1"], "--weight-decay"),
    "weight-decay-nan": (["--weight-decay", "nan"], "--weight-decay"),
    "warmup-negative": (["--warmup", "-1"], "--warmup"),
    "warmup-not-a-step": (["--warmup", "2.5"], "--warmup"),
    "clip-negative": (["--clip", "-1"], "--clip"),
    "clip-nan": (["--clip", "nan"], "--clip"),
    "eval-batch-size-zero": (["--eval-batch-size", "0"], "--eval-batch-size"),
    "max-new-tokens-zero": (["--max-new-tokens", "0"], "--max-new-tokens"),
    "num-workers-negative": (["--num-workers", "-1"], "--num-workers"),
    "val-max-samples-zero": (["--val-max-samples", "0"], "--val-max-samples"),
    "eval-max-samples-zero": (["--eval-max-samples", "0"], "--eval-max-samples"),
    "keep-checkpoints-negative": (["--keep-checkpoints", "-1"], "--keep-checkpoints"),
    "classic-every-zero": (["--classic-every", "0"], "--classic-every"),
    "seed-negative": (["--seed", "-1"], "--seed"),
    "report-to-unknown": (["--report-to", "bogus"], "--report-to"),
    "freeze-everything": (["--freeze", "vision,projector,language"], "--freeze"),
    "grades-alpha-not-a-step": (["--alpha", "1.5"], "alpha"),
    "lora-on-nanovlm": (["--lora"], "--lora"),
    "lora-rank-zero": ([*QWEN_LORA, "--lora-rank", "0"], "--lora-rank"),
    "lora-targets-unknown": ([*QWEN_LORA, "--lora-targets", "audio"], "--lora-targets"),
    "lora-nothing-to-train": ([*QWEN_LORA, "--freeze", "language,projector"], "--freeze"),
    "pixels-min-above-max": ([*QWEN_LORA, "--min-pixels", "1000", "--max-pixels", "10"], "--min-pixels"),
    # flags that would be ignored: refused, naming the flag and what it applies to
    "lm-weights-with-tiny": (["--lm-weights", "{gguf}"], "--lm-weights: applies to --preset smol or 222m"),
    "vision-weights-with-tiny": (["--vision-weights", "{gguf}"], "--vision-weights: applies to --preset smol"),
    "lm-weights-with-model-path": (["--preset", "smol", "--model-path", "{nano}", "--lm-weights", "{gguf}"],
                                   "--lm-weights: applies to a nanoVLM built from a preset"),
    "lm-weights-with-qwen": ([*QWEN_LORA, "--lm-weights", "{gguf}"], "--lm-weights: applies to --model nanovlm"),
    "lora-targets-without-lora": (["--lora-targets", "vision"], "--lora-targets: applies to --lora"),
    "lora-rank-without-lora": (["--lora-rank", "4"], "--lora-rank: applies to --lora"),
    "min-pixels-with-nanovlm": (["--min-pixels", "1000"], "--min-pixels: applies to --model qwen2.5-vl"),
    "max-pixels-with-nanovlm": (["--max-pixels", "100000"], "--max-pixels: applies to --model qwen2.5-vl"),
    "mix-task-without-fraction": (["--mix-task", "easyvqa-caption"], "--mix-task: applies to a mixed run"),
    "mix-task-fraction-zero": (["--mix-task", "easyvqa", "--mix-fraction", "0"], "--mix-task: applies to a mixed"),
    "mix-data-without-fraction": (["--mix-data", "{vqa}"], "--mix-data: applies to a mixed run"),
    "mix-task-unknown": (["--mix-task", "bogus"], "--mix-task: expected one of"),
    "mix-task-unknown-mixed": (["--mix-task", "bogus", "--mix-fraction", "0.5"], "'bogus'"),
    # a local path that does not exist is not tried as a hub id
    "lm-weights-path-missing": (["--preset", "smol", "--lm-weights", "{root}/runs/foo"],
                                "--lm-weights: {root}/runs/foo: no such folder"),
    "vision-weights-path-missing": (["--preset", "smol", "--vision-weights", "./no-siglip"],
                                    "--vision-weights: ./no-siglip: no such folder"),
    # --model-path: checked before the data is read (the header of the weights, not the weights)
    "model-path-missing": (["--model-path", "{root}/no-model"], "--model-path: {root}/no-model: no such folder"),
    "model-path-empty": (["--model-path", "{empty}"], "--model-path: {empty}: empty folder"),
    "model-path-a-file": (["--model-path", "{a_file}"], "--model-path: {a_file}: a file"),
    "model-path-no-config": (["--model-path", "{gguf}"], "--model-path: {gguf}: no config.json"),
    "model-path-broken-config": (["--model-path", "{broken_config}"], "config.json: not valid JSON"),
    "model-path-is-qwen": (["--model-path", "{qwen_config}"], "a qwen2_5_vl checkpoint, but --model is nanovlm"),
    "model-path-truncated-weights": (["--model-path", "{nano_truncated}"], "model.safetensors: "),
    "model-path-shape-mismatch": (["--model-path", "{nano_mismatch}"], "the nanoVLM config expects"),
    "qwen-path-is-nanovlm": ([*QWEN_LORA[:2], "--model-path", "{nano}"], "a nanovlm checkpoint, but --model is"),
    # GradES rule errors name the flag typed
    "rho-flag": (["--rho", "2"], "--rho: must be in (0, 1)"),
    "smoothing-flag": (["--smoothing", "1"], "--smoothing: must be in [0, 1)"),
    "tau-vision-flag": (["--tau-vision", "-1"], "--tau-vision: must be a finite number"),
    "tau-flag": (["--tau", "-1"], "--tau: must be a finite number"),
    "patience-flag": (["--patience", "0"], "--patience: must be an integer"),
    "stop-fraction-flag": (["--stop-fraction", "2"], "--stop-fraction: must be in (0, 1]"),
}


@pytest.mark.parametrize("case", list(SETTINGS))
def test_bad_setting_is_named_before_any_data_is_read(inputs, case, tmp_path, capsys):
    argv, culprit = SETTINGS[case]
    assert_rejected(inputs, [*argv, *NO_DATA], culprit, tmp_path / "run", capsys)


def test_errors_name_the_yaml_key_of_a_config_file_and_the_flag_over_it(inputs, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("grades:\n  rho: 2\n  tau:\n    vision: -1\nlora_targets: vision\n")
    assert_rejected(inputs, ["--config", str(config), *NO_DATA], f"--config {config}: lora_targets: applies to "
                    f"--lora", tmp_path / "run", capsys)
    assert_rejected(inputs, ["--config", str(config), "--lora-targets", "language", *NO_DATA],
                    f"--config {config}: grades.tau.vision: must be", tmp_path / "run", capsys)
    assert_rejected(inputs, ["--config", str(config), "--lora-targets", "language", "--tau-vision", "1e-3",
                             *NO_DATA], f"--config {config}: grades.rho: must be in (0, 1)", tmp_path / "run", capsys)
    assert_rejected(inputs, ["--config", str(config), "--lora-targets", "language", "--tau-vision", "1e-3",
                             "--rho", "3", *NO_DATA], "error: --rho: must be in (0, 1), got 3", tmp_path / "run", capsys)


def test_defaults_of_a_recipe_or_a_saved_config_are_not_refused(tmp_path):
    from vlm_grades.config import TrainConfig

    scratch = TrainConfig.build({"from_scratch": True, "mix_fraction": 0.0})   # the recipe's mix_task stays
    assert scratch.mix_task == "easyvqa-caption" and scratch.mix_fraction == 0.0
    saved = TrainConfig.build({}).to_dict()                  # config.yaml of a run: every setting written
    assert TrainConfig.build(saved).lora_targets == "language"
    assert TrainConfig.build(TrainConfig.build({"from_scratch": True}).to_dict()).mix_fraction == 0.5


def test_lm_weights_under_an_existing_folder_is_a_path_not_a_hub_id(tmp_path, monkeypatch):
    from vlm_grades.config import TrainConfig
    from vlm_grades.errors import UserError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError, match="^--lm-weights: runs/foo: no such folder$"):
        TrainConfig.build({"preset": "smol", "lm_weights": "runs/foo"})


OUTS = {   # --out that cannot be a run folder
    "a-file": "{a_file}",
    "below-a-file": "{a_file}/run",
    "under-proc": "/proc/vlm-grades-test/run",
    "under-sys": "/sys/vlm-grades-test",
}


@pytest.mark.parametrize("case", list(OUTS))
def test_out_that_cannot_be_written_is_named_before_any_data_is_read(inputs, case, tmp_path, capsys):
    out = Path(OUTS[case].format(**{k: str(v) for k, v in inputs.items()}))
    assert_rejected(inputs, NO_DATA, f"--out {out}", out, capsys, existed=out.exists())
    assert inputs["a_file"].read_text() == "not a folder"


def assert_rejected(inputs, argv, culprit, out: Path, capsys, existed: bool = False) -> None:
    """`vlm-grades train ARGV --out OUT` exits 2 with one error line containing CULPRIT and leaves no run folder."""
    names = {k: str(v) for k, v in inputs.items()}
    argv = [a.format(**names) for a in argv]
    capsys.readouterr()
    try:
        status = train("--steps", "2", "--alpha", "1", *argv, "--out", str(out))   # argv's own flags win
    except SystemExit as e:   # argparse's own errors
        status = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("vlm-grades train: error: ")
    assert culprit.format(**names) in lines[0], lines[0]
    assert existed or not out.exists(), sorted(p.name for p in out.iterdir())


def test_short_default_run_lowers_the_loss_and_writes_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    # a 30-step run is too short for the default 100-check smoothing to settle: the paper's unsmoothed rule
    assert train("--steps", "30", "--max-samples", "512", "--eval-max-samples", "64", "--checkpoint-every", "10",
                 "--smoothing", "0", "--auto-window", "5", "--rho", "0.3", "--alpha", "9",   # grace: 300 by default
                 "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert f"run {out}: 30/30 steps" in printed and "held-out easyvqa test: score" in printed

    run = RunFolder.open_existing(out)
    for name in ("config.yaml", "components.json", "convergence.jsonl", "events.jsonl", "metrics.jsonl",
                 "summary.json", "checkpoints/latest", "final/config.json", "final/model.safetensors"):
        assert (out / name).is_file(), name
    assert list((out / "eval").glob("easyvqa_*"))

    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["steps"] == 30

    components = run.read_json("components.json")
    assert components["architecture"] == "nanovlm"
    assert set(components["modalities"]) == {"vision", "projector", "language"}
    for sizes in components["modalities"].values():
        assert sizes["parameters"] >= sizes["monitored_parameters"] > 0
    assert {"name", "modality", "layer", "kind", "numel"} <= set(components["components"][0])

    metrics = run.read("metrics")
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert {"step", "epoch", "loss", "lr", "step_time", "wall", "tokens", "frozen"} <= set(metrics[0])
    assert all(math.isfinite(m["loss"]) for m in metrics)
    first, last = sum(m["loss"] for m in metrics[:5]) / 5, sum(m["loss"] for m in metrics[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert set(metrics[0]["lr"]) == set(metrics[0]["tokens"]) == set(metrics[0]["frozen"]) == \
        {"vision", "projector", "language"}
    assert metrics[-1]["wall"] >= metrics[0]["wall"] > 0

    convergence = run.read("convergence")
    assert convergence and {"step", "metric", "normalization", "values", "tau", "frozen"} <= set(convergence[0])

    events = run.read("events")
    types = [e["type"] for e in events]
    assert types[0] == "start" and types[-1] == "end"
    assert {"start", "checkpoint", "stop", "eval", "end"} <= set(types)
    assert "freeze" in types, "GradES (auto thresholds) froze nothing in 30 steps"
    freeze = next(e for e in events if e["type"] == "freeze")
    assert {"step", "component", "modality", "value", "tau"} <= set(freeze)
    checkpoint = next(e for e in events if e["type"] == "checkpoint")
    assert (out / checkpoint["path"]).is_dir() or checkpoint["step"] < 20   # pruned: keep 2

    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert latest.name == "step-30"                          # every run's last step is checkpointed
    assert {p.name for p in latest.iterdir()} >= {"model.pt", "optimizer.pt", "scheduler.pt", "grades.pt", "rng.pt",
                                                    "trainer_state.json"}
    loop = json.loads((latest / "trainer_state.json").read_text())["loop"]
    assert loop["step"] == 30 and "position" in loop and "epoch" in loop

    summary = run.read_json("summary.json")
    assert summary["steps"] == 30 and summary["eval"]["n"] == 64


def test_tensorboard_writes_event_files(tmp_path):
    out = tmp_path / "run"
    assert train(*QUICK, "--steps", "4", "--log-every", "1", "--report-to", "tensorboard", "--out", str(out)) == 0
    files = list(out.rglob("events.out.tfevents.*"))
    assert files and all(f.stat().st_size > 0 for f in files)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]


CLASSIC = ["--stopping", "classic", "--classic-every", "5", "--classic-patience", "1", "--max-samples", "16",
           "--batch-size", "8", "--steps", "100", "--val-max-samples", "64", "--lr", "3e-3", "--eval-split="]


def _validation_loss(run: Path) -> float:
    from vlm_grades.data import load_samples
    from vlm_grades.models import load_for_eval

    adapter = load_for_eval(run)
    samples = load_samples("easyvqa", None, split="val", max_samples=64, seed=0)
    batch = adapter.collate([adapter.preprocess(s, train=True) for s in samples])
    adapter.model.eval()
    with torch.no_grad():
        return float(adapter.loss(batch))


def test_classic_stopping_stops_early_and_restores_the_best_weights(tmp_path):
    out = tmp_path / "run"
    assert train(*CLASSIC, "--checkpoint-every", "5", "--keep-checkpoints", "10", "--out", str(out)) == 0
    run = RunFolder.open_existing(out)
    events = run.read("events")
    validations = [e for e in events if e["type"] == "validation"]
    (restore,) = [e for e in events if e["type"] == "restore"]
    (stop,) = [e for e in events if e["type"] == "stop"]
    assert stop["step"] < 100 and "did not improve" in stop["reason"]
    assert validations[-1]["improved"] is False and validations[-1]["step"] == stop["step"]
    best = min(validations, key=lambda e: e["loss"])
    assert restore["best_step"] == best["step"] < stop["step"]
    assert not run.read("convergence")                          # GradES is off
    # the saved model is the best one, not the last one
    assert _validation_loss(out) == pytest.approx(best["loss"], rel=1e-4)
    assert abs(validations[-1]["loss"] - best["loss"]) > 1e-3

    # resumed from the checkpoint of the best step, the run still ends with the best weights
    from safetensors.torch import load_file

    reference = load_file(str(out / "final" / "model.safetensors"))
    for path in (out / "checkpoints").glob("step-*"):
        if int(path.name.split("-")[1]) > best["step"]:
            shutil.rmtree(path)
    (out / "checkpoints" / "latest").unlink()
    shutil.rmtree(out / "final")
    assert train("--resume", "--out", str(out)) == 0
    resumed = load_file(str(out / "final" / "model.safetensors"))
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert [e["type"] for e in run.read("events")].count("restore") == 1
