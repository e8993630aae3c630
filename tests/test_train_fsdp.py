"""`--distributed fsdp` on the CPU (gloo, 2 processes, tiny nanoVLM): with the same freezes imposed, FSDP2, DDP and
one process end with the same weights; with the live rule every rank freezes the same matrices at the same steps;
a run killed while it writes a checkpoint resumes to the uninterrupted end; final/ is an ordinary model that a
fresh process loads and scores without torch.distributed. Plus the settings refused in one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from test_train_ddp import check_ok, free_port, rank_states
from test_train_resume import assert_same_weights, final_weights, history
from vlm_grades.config import TrainConfig
from vlm_grades.errors import UserError
from vlm_grades.training.run_folder import RunFolder

TESTS = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "VLM_GRADES_RANK_STATE": "1",
       "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
VISION = [f"vision_encoder.blocks.{b}.{m}" for b in (0, 1) for m in ("attn.qkv_proj", "attn.out_proj", "mlp.fc1",
                                                                     "mlp.fc2")]
# step 3: two matrices; step 6: the rest of the vision tower and the projector (both modalities finalize)
SCHEDULE = {"3": ["decoder.blocks.0.mlp.up_proj", "vision_encoder.blocks.1.mlp.fc2"],
            "6": [n for n in VISION if n != "vision_encoder.blocks.1.mlp.fc2"] + ["MP.proj"]}
# from random weights, and no feature cache (its one-image tower passes differ from batched ones in the last bits)
IMPOSED = ["--from-scratch", "--feature-cache", "0", "--max-samples", "96", "--steps", "10", "--checkpoint-every",
           "100", "--no-progress", "--seed", "5", "--mix-fraction", "0", "--tau", "1e-30", "--alpha", "0.1", "--eval-split="]
# live rule: auto thresholds, grace 6 steps; checkpoints every 4 steps
LIVE = ["--from-scratch", "--feature-cache", "0", "--max-samples", "128", "--batch-size", "4", "--steps", "20", "--checkpoint-every", "4", "--keep-checkpoints",
        "20", "--no-progress", "--seed", "5", "--mix-fraction", "0", "--alpha", "0.3", "--rho", "0.3",
        "--smoothing", "0", "--auto-window", "3"]


def launch(*argv: str, processes: int = 2, script: str | None = None, **popen) -> list[str]:
    target = [str(TESTS / script)] if script else ["-m", "vlm_grades", "train"]
    if processes == 1:
        return [sys.executable, *target, *argv]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *target, *argv]


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(launch(*argv, **kw), env=ENV, capture_output=True, text=True, timeout=600)


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)) for k in a)


@pytest.mark.slow
def test_imposed_freezes_fsdp_ddp_and_one_process_end_alike(tmp_path):
    schedule = json.dumps(SCHEDULE)
    runs = {"one": (1, ["--batch-size", "8"]), "ddp": (2, ["--batch-size", "4"]),
            "fsdp": (2, ["--batch-size", "4", "--distributed", "fsdp"])}   # the same global batch of 8
    for name, (processes, extra) in runs.items():
        check_ok(run(schedule, *IMPOSED, *extra, "--out", str(tmp_path / name), processes=processes,
                     script="imposed_freezes.py"))
    weights = {name: final_weights(tmp_path / name) for name in runs}
    assert relative_difference(weights["one"], weights["fsdp"]) < 1e-4
    assert relative_difference(weights["ddp"], weights["fsdp"]) < 1e-4
    assert relative_difference(weights["one"], weights["ddp"]) < 1e-4
    assert history(tmp_path / "fsdp") == history(tmp_path / "ddp") == history(tmp_path / "one")
    r0, r1 = rank_states(tmp_path / "fsdp")
    assert r0["frozen"] == r1["frozen"] and len(r0["frozen"]) == 10
    assert r0["trainable"] == r1["trainable"]
    assert not any(n.startswith(("vision_encoder.", "MP.")) for n in r0["trainable"])   # finalized: no gradient


@pytest.fixture(scope="module")
def live_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    check_ok(run(*LIVE, "--distributed", "fsdp", "--eval-split", "test", "--eval-max-samples", "16",
                 "--out", str(out)))
    return out


def frozen_per_check(out: Path) -> list[tuple[int, tuple[str, ...]]]:
    return [(c["step"], tuple(sorted(c["frozen"]))) for c in RunFolder(out).read("convergence")]


@pytest.mark.slow
def test_live_rule_freezes_alike_on_every_rank(live_run, tmp_path):
    r0, r1 = rank_states(live_run)
    assert r0["step"] == r1["step"] == 20
    assert r0["frozen"] and min(r0["frozen"].values()) < 20, "GradES froze nothing mid-run"
    assert r0["frozen"] == r1["frozen"] and r0["trainable"] == r1["trainable"]   # every matrix, every step
    logged = {(e["component"], e["step"]) for e in RunFolder(live_run).read("events") if e["type"] == "freeze"}
    assert logged == set(r0["frozen"].items())

    # the same run under DDP: float order differs (sharded sums), so a threshold crossing may move
    ddp = tmp_path / "ddp"
    check_ok(run(*LIVE, "--eval-split=", "--out", str(ddp)))
    fsdp_steps, ddp_steps = r0["frozen"], rank_states(ddp)[0]["frozen"]
    moved = {n: (fsdp_steps.get(n), ddp_steps.get(n)) for n in set(fsdp_steps) | set(ddp_steps)
             if fsdp_steps.get(n) != ddp_steps.get(n)}
    print(f"freeze steps FSDP2 vs DDP: {len(fsdp_steps)} vs {len(ddp_steps)} frozen, differing: {moved}")
    assert len(moved) <= len(fsdp_steps) // 4, moved


def kill_tree(pid: int) -> None:
    """SIGKILL to `pid` and every process below it (torchrun starts its workers in sessions of their own)."""
    def below(p: int) -> list[int]:
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            return []
        return [c for child in map(int, children) for c in [child, *below(child)]]

    for p in [*below(pid), pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_killed_while_checkpointing_resumes_to_the_uninterrupted_end(live_run, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(launch(*LIVE, "--distributed", "fsdp", "--eval-split", "test", "--eval-max-samples",
                                   "16", "--out", str(out)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    root, deadline = out / "checkpoints", time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if root.is_dir() and any(n.startswith(".tmp-step-8-") for n in os.listdir(root)):
                kill_tree(proc.pid)                   # both workers mid-write, and torchrun
                break
    finally:
        kill_tree(proc.pid)
        proc.wait()
    assert not (root / "step-8" / "trainer_state.json").exists(), "the kill came too late"
    done = run("--resume", "--out", str(out), "--no-progress")
    check_ok(done)
    assert "step-4 at step 4" in done.stdout
    assert_same_weights(out, live_run)
    assert history(out) == history(live_run)
    assert frozen_per_check(out) == frozen_per_check(live_run)


@pytest.mark.slow
def test_final_loads_and_scores_in_a_fresh_process(live_run, tmp_path):
    script = ("import sys, torch.distributed as dist\n"
              "from vlm_grades.cli import main\n"
              "code = main(sys.argv[1:])\n"
              "assert not dist.is_initialized()\n"
              "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script, "eval", "--task", "easyvqa", "--model",
                           str(live_run / "final"), "--split", "test", "--max-samples", "16", "--batch-size", "128",
                           "--out", str(tmp_path / "eval")], env={**ENV, "VLM_GRADES_RANK_STATE": ""},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = json.loads((live_run / "summary.json").read_text())["eval"]["score"]
    fresh = json.loads(next((tmp_path / "eval").rglob("*scores*.json")).read_text())
    assert fresh["score"] == pytest.approx(trained, abs=1e-9)
    predictions = "easyvqa_predictions.json"
    assert (live_run / "eval" / predictions).read_text() == next((tmp_path / "eval").rglob(predictions)).read_text()


# ---------------------------------------------------------------- fast: settings, shards, skeleton
@pytest.mark.parametrize("settings, message", [
    ({"distributed": "deepspeed"}, "--distributed deepspeed: DeepSpeed ZeRO is not supported; use --distributed fsdp"),
    ({"distributed": "zero3"}, "--distributed: expected ddp or fsdp"),
    ({"fsdp_cpu_offload": True}, "--fsdp-cpu-offload: needs --distributed fsdp"),
    ({"distributed": "fsdp", "stopping": "classic"}, "--stopping classic: not supported with --distributed fsdp"),
])
def test_bad_distributed_settings_are_one_line(settings, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as e:
        TrainConfig.build(settings)
    assert "\n" not in str(e.value)


def test_launchers_fsdp_cannot_use_are_refused(monkeypatch):
    from vlm_grades.training.run import check_launcher

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UserError, match="--distributed fsdp: needs 2 or more processes"):
        check_launcher(TrainConfig.build({"distributed": "fsdp"}))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(UserError, match="DeepSpeed ZeRO is not supported"):
        check_launcher(TrainConfig.build({}))
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(UserError, match="only FSDP version 2"):
        check_launcher(TrainConfig.build({}))


def test_sketch_positions_map_to_shards_and_partial_sums_add_up():
    from vlm_grades.grades.shards import Shard, local_index, take_run
    from vlm_grades.grades.statistics import sketch_index

    rows, cols, world = 7, 5, 3                     # 7 rows over 3 ranks: 3, 3, 1 (torch.chunk), as FSDP2 shards
    full = torch.randn(rows, cols)
    index = sketch_index(full.numel(), 9, 0, "m:weight", torch.device("cpu")).long()
    starts = [0, 3, 6]
    shards = [Shard(s * cols, (min(s + 3, rows) - s) * cols) for s in starts]
    pieces = [full[s:s + 3] for s in starts]
    parts = [p.reshape(-1).index_select(0, local_index(index, sh).long()) for p, sh in zip(pieces, shards)]
    assert torch.equal(torch.cat(parts), full.reshape(-1)[index])   # the same entries, in rank order
    assert sum(float(p.abs().sum()) for p in parts) == pytest.approx(float(full.reshape(-1)[index].abs().sum()))
    for piece, sh, part in zip(pieces, shards, parts):                 # a saved whole goes back to each rank
        assert torch.equal(take_run(full, sh, None), piece)
        assert torch.equal(take_run(full.reshape(-1)[index], sh, index), part)
    assert world == len(shards)


def test_skeleton_costs_no_memory_and_materializes_with_ties():
    from vlm_grades.parallel.sharding import materialize, skeleton, transformer_blocks

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 4)
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
            self.head = nn.Linear(4, 11, bias=False)
            self.head.weight = self.emb.weight
            self.register_buffer("table", torch.arange(3.0), persistent=False)

    model = Tied()
    assert transformer_blocks(model) == list(model.blocks)
    shell = skeleton(model)
    assert all(p.is_meta for p in shell.parameters()) and torch.equal(shell.table, model.table)
    plain = materialize(shell, model.state_dict())
    assert plain.head.weight is plain.emb.weight
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values()))


@pytest.mark.slow
def test_qwen_lora_under_fsdp_ends_as_under_ddp(tmp_path):
    """Tiny random Qwen2.5-VL with LoRA adapters in both towers: the same imposed freezes under FSDP2 and DDP end
    with the same adapter weights; final/ is an ordinary PEFT adapter folder."""
    from safetensors.torch import load_file

    from fixtures_data import write_vqav2
    from tiny_qwen import make_tiny_qwen

    model = make_tiny_qwen(tmp_path / "qwen")
    data = write_vqav2(tmp_path / "vqa", split="val", image_ids=(1, 2, 3, 4, 5, 6, 7, 8))
    vision = [f"model.visual.blocks.{b}.{m}" for b in (0, 1)
              for m in ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    schedule = json.dumps({"3": ["model.language_model.layers.0.self_attn.q_proj", vision[3]],
                           "6": [n for n in vision if n != vision[3]]})
    args = ["--model", "qwen2.5-vl", "--model-path", str(model), "--task", "vqav2", "--data", data["source"],
            "--split", "val", "--batch-size", "2", "--steps", "10", "--lr", "1e-2", "--eval-split=", "--no-progress",
            "--lora", "--lora-targets", "both", "--lora-dropout", "0", "--tau", "1e-30", "--alpha", "0.1"]
    for name in ("ddp", "fsdp"):
        check_ok(run(schedule, *args, "--distributed", name, "--out", str(tmp_path / name), script="imposed_freezes.py"))
    adapters = {n: load_file(str(tmp_path / n / "final" / "adapter_model.safetensors")) for n in ("ddp", "fsdp")}
    assert relative_difference(adapters["ddp"], adapters["fsdp"]) < 1e-4
    assert history(tmp_path / "fsdp") == history(tmp_path / "ddp")
    r0, r1 = rank_states(tmp_path / "fsdp")
    assert r0["frozen"] == r1["frozen"] and len(r0["frozen"]) == 11
