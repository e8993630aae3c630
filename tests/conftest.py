"""What several test modules share: fixtures (by name) and helpers (`from conftest import ...`). Test modules
never import each other.

- subprocesses: ENV (one thread each, this checkout first on PYTHONPATH), free_port, launch/torchrun, check_ok,
  rank_states (VLM_GRADES_RANK_STATE); kills at a named point: tests/killed_at.py;
- runs: final_weights, assert_same_weights, relative_difference, history, and `trained_run`, one real short
  nanoVLM run (GradES on, held-out eval) shared by the tests that only read a run;
- models: tiny_nanovlm, `tiny_qwen_dir` (a random Qwen2.5-VL on disk, read-only), `nano` (a nanoVLM adapter
  and its samples) with the feature-cache helpers;
- `no_hub`: any attempt to reach the Hugging Face hub fails the test; one_line_error: the message of a
  UserError-style failure is one line naming its culprit.
"""
from __future__ import annotations

import json
import signal
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
ROOT = TESTS.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])}
RANK_ENV = {**ENV, "VLM_GRADES_RANK_STATE": "1"}


# ------------------------------------------------------------------ subprocesses
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*argv: str, processes: int = 2, script: str | None = None) -> list[str]:
    """`vlm-grades train ARGV` (or tests/SCRIPT ARGV) in one process, or under torchrun in `processes`."""
    target = [str(TESTS / script)] if script else ["-m", "vlm_grades", "train"]
    if processes == 1:
        return [sys.executable, *target, *argv]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *target, *argv]


def torchrun(*argv: str, processes: int = 2, script: str | None = None, env: dict | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(launch(*argv, processes=processes, script=script), env=env or RANK_ENV,
                          capture_output=True, text=True, timeout=timeout)


def check_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    # one summary for the run, printed by the main process only
    assert len([line for line in done.stdout.splitlines() if line.startswith("run ")]) == 1, done.stdout


def rank_states(run: Path, processes: int = 2) -> list[dict]:
    return [json.loads((Path(run) / f"rank-{i}.json").read_text()) for i in range(processes)]


# ------------------------------------------------------------------ runs
def final_weights(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(run) / "final" / "model.safetensors"))


def assert_same_weights(a, b) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert set(wa) == set(wb)
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"final weights differ: {different[:5]}"


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest ||a - b|| / ||a|| over the tensors of two state dicts with the same names."""
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)) for k in a)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| of two tensors."""
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def history(run, kinds=("freeze", "finalize", "stop", "checkpoint")) -> list[tuple]:
    from vlm_grades.training.run_folder import RunFolder

    return [(e["type"], e["step"], e.get("component"), e.get("modality"), e.get("reason"))
            for e in RunFolder(run).read("events") if e["type"] in kinds]


# the shared run: the tiny base fine-tuned 40 steps on easy-VQA with a loose unsmoothed rule (matrices freeze
# within the run), the vision tower frozen right after the grace period (tau 1: it finalizes), a held-out eval
TRAINED_RUN = ["--model", "nanovlm", "--steps", "40", "--batch-size", "8", "--max-samples", "256",
               "--eval-max-samples", "16", "--checkpoint-every", "100", "--smoothing", "0", "--auto-window", "5",
               "--rho", "0.6", "--alpha", "0.25", "--tau-vision", "1", "--no-progress"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, str]:
    """A finished real run folder, read-only, and what `vlm-grades train` printed."""
    out = tmp_path_factory.mktemp("trained") / "run"
    done = subprocess.run([sys.executable, "-m", "vlm_grades", "train", *TRAINED_RUN, "--out", str(out)], env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


# ------------------------------------------------------------------ models
def tiny_nanovlm(preset: str = "tiny", seed: int = 0, **fields):
    from nanovlm.config import VLMConfig
    from nanovlm.vision_language_model import VisionLanguageModel

    torch.manual_seed(seed)
    return VisionLanguageModel(VLMConfig.preset(preset, **fields))


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    """A random tiny Qwen2.5-VL checkpoint folder (model, tokenizer, processor); tests must not write into it."""
    from tiny_qwen import make_tiny_qwen

    return make_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen") / "model")


@pytest.fixture(scope="session")
def nano():
    """A nanoVLM adapter from random weights (a loss far from 0) and 96 easy-VQA training samples."""
    from vlm_grades.config import TrainConfig
    from vlm_grades.models import build_adapter
    from vlm_grades.training.data import load_split

    torch.manual_seed(0)
    cfg = TrainConfig.build({"model": "nanovlm", "task": "easyvqa", "max_samples": 96, "progress": False,
                            "from_scratch": True})
    samples = load_split(cfg, cfg.split, cfg.max_samples, "training")
    return build_adapter(cfg, samples), samples


TOL = 1e-6   # cached features against the tower's, relative


def nano_batches(adapter, samples, size=16):
    return [adapter.collate([adapter.preprocess(s, train=True) for s in samples[i:i + size]])
            for i in range(0, len(samples), size)]


def per_image_bytes(adapter) -> int:
    return adapter.cfg.mp_image_token_length * adapter.cfg.lm_hidden_dim * 4   # float32 projector output


def cached_losses_equal_the_tower(adapter, batches, cache) -> dict:
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


# ------------------------------------------------------------------ input checks
@pytest.fixture
def no_hub(monkeypatch):
    """Fails the test on any download from the Hugging Face hub (files, snapshots, configs)."""
    import huggingface_hub
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried the hub: {args[:1]}")

    for owner, name in ((huggingface_hub, "hf_hub_download"), (huggingface_hub, "snapshot_download"),
                        (transformers.AutoConfig, "from_pretrained")):
        monkeypatch.setattr(owner, name, refuse)


def one_line_error(text: str, *culprits: str) -> str:
    """The error line of a command's stderr: exactly one non-empty line, naming every culprit, no traceback."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text[-2000:]
    assert all(c in lines[0] for c in culprits), lines[0]
    return lines[0]


# ------------------------------------------------------------------ whole runs
def cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "vlm_grades", "train", *argv]


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same run: weights bit for bit, the same freezes and checkpoints, losses, logs."""
    assert_same_weights(a, b)
    assert history(a) == history(b)
    from vlm_grades.training.run_folder import RunFolder

    ra, rb = RunFolder(a), RunFolder(b)
    assert [r["loss"] for r in ra.read("metrics")] == [r["loss"] for r in rb.read("metrics")]
    assert [r["step"] for r in rb.read("metrics")] == list(range(1, len(rb.read("metrics")) + 1))
    ca, cb = ra.read("convergence"), rb.read("convergence")
    assert ca == cb
    if ca:
        assert ca[-1]["frozen"] == cb[-1]["frozen"]


def killed_at(point: str, out: Path, args: list[str]) -> None:
    """A training run that SIGKILLs itself at `point` (tests/killed_at.py: checkpoint:N, step:N)."""
    done = subprocess.run([sys.executable, str(TESTS / "killed_at.py"), point, *args, "--out", str(out)], env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, f"the run did not reach {point}: {done.stderr[-2000:]}"
