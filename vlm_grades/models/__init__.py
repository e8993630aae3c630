"""Model adapters: `nanovlm` (bundled) and `qwen2.5-vl` (transformers)."""
from __future__ import annotations

import json
from pathlib import Path

from nanovlm.native_format import is_native_config
from vlm_grades.errors import UserError

MODELS = ("nanovlm", "qwen2.5-vl")


def detect_architecture(path: str | Path) -> str:
    """"nanovlm" or "qwen2_5_vl" from a checkpoint folder's config.json (a LoRA adapter folder counts
    as its base model's architecture)."""
    path = Path(path)
    config = path / "config.json"
    if (path / "adapter_config.json").exists() and not config.exists():
        return "qwen2_5_vl"
    if not config.exists():
        raise UserError(f"{path}: no config.json; expected a run folder or a model checkpoint folder")
    try:
        raw = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{config}: not valid JSON ({e})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type == "nanovlm" or is_native_config(raw):  # nanoVLM's own format has no model_type
        return "nanovlm"
    if model_type in ("qwen2_5_vl", "qwen2_vl"):
        return "qwen2_5_vl"
    raise UserError(f"{config}: model_type {model_type!r} is not supported (nanovlm, qwen2_5_vl)")


def load_for_eval(path: str | Path):
    """An adapter for a run folder (its final/ model, else its newest checkpoint's) or a checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: does not exist")
    if (path / "final").is_dir():
        path = path / "final"
    arch = detect_architecture(path)
    if arch == "nanovlm":
        from vlm_grades.models.nanovlm_native import load_nanovlm

        return load_nanovlm(path)
    from vlm_grades.models.qwen2_5_vl import load_qwen_for_eval

    return load_qwen_for_eval(str(path))


def build_adapter(cfg, train_samples):
    """The adapter for a TrainConfig: a new or saved nanoVLM, or a Qwen2.5-VL checkpoint (full or LoRA)."""
    if cfg.model == "nanovlm":
        from vlm_grades.models.nanovlm import NanoVLMAdapter
        from vlm_grades.models.nanovlm_native import load_nanovlm

        if cfg.model_path:
            return load_nanovlm(cfg.model_path)
        return NanoVLMAdapter.create(cfg.preset, train_samples, lm_weights=cfg.lm_weights,
                                     vision_weights=cfg.vision_weights)
    from vlm_grades.models.qwen2_5_vl import Qwen25VLAdapter

    lora = cfg.lora_settings()
    # --freeze is applied by the training loop after the registry is built, as for nanoVLM, so frozen
    # modalities stay in components.json and count as frozen
    return Qwen25VLAdapter.load(cfg.model_path, lora=lora, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
