"""--model-path (train) and --model (eval) checked before any data is read: the folder exists and holds a checkpoint of --model, and a
nanoVLM checkpoint's tensor names and shapes (read from the safetensors header, not the weights) fit its config.
A hub id is left to the loader, which fetches it."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

from vlm_grades.errors import UserError
from vlm_grades.models.hub import hub_id

WEIGHTS = "model.safetensors"
ARCHITECTURES = {"nanovlm": "nanovlm", "qwen2.5-vl": "qwen2_5_vl"}


def check_model_path(model: str, model_path: str) -> None:
    from vlm_grades.models import detect_architecture

    path = Path(model_path).expanduser()
    if not path.exists():
        hub_id(model_path)
        return
    if not path.is_dir():
        raise UserError(f"--model-path: {model_path}: a file, not a checkpoint folder")
    if not any(path.iterdir()):
        raise UserError(f"--model-path: {model_path}: empty folder (a checkpoint holds config.json and {WEIGHTS})")
    if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise UserError(f"--model-path: {model_path}: no config.json (not a model checkpoint folder)")
    arch = detect_architecture(path)
    if arch != ARCHITECTURES[model]:
        raise UserError(f"--model-path: {model_path}: a {arch} checkpoint, but --model is {model}")
    if arch == "nanovlm":
        check_nanovlm_tensors(path)
        check_nanovlm_tokenizer(path)


def check_eval_model(model: str) -> None:
    """`eval --model`: a run folder (its final/) or a model folder, checked before the data is read."""
    from vlm_grades.models import detect_architecture

    path = Path(model)
    if not path.exists():
        raise UserError(f"--model: {model}: no such folder")
    if (path / "final").is_dir():
        path = path / "final"
    if detect_architecture(path) == "nanovlm":
        check_nanovlm_tensors(path)
        check_nanovlm_tokenizer(path)


def safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (8-byte little-endian length, then JSON); the file's
    size must cover every tensor's data (a cut-off download fails here)."""
    try:
        with file.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n)) if n < file.stat().st_size else None
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise UserError(f"{file}: not a safetensors file (its header cannot be read)")
    shapes, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shapes[name] = tuple(int(d) for d in entry["shape"])
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise UserError(f"{file}: not a safetensors file (bad header entry {name!r})") from None
    if 8 + n + end > file.stat().st_size:
        raise UserError(f"{file}: cut off ({file.stat().st_size:,} bytes, its header describes "
                        f"{8 + n + end:,}); download or copy it again")
    return shapes


def check_nanovlm_tensors(folder: Path) -> None:
    """The weights file has the tensors, and shapes, that the folder's config.json describes."""
    import torch

    from nanovlm.config import VLMConfig
    from nanovlm.errors import CheckpointError
    from nanovlm.native_format import ROTARY_BUFFER, is_native_config, to_bundled, translate_config
    from nanovlm.vision_language_model import VisionLanguageModel
    from nanovlm.weights import check_state_dict

    config, weights = folder / "config.json", folder / WEIGHTS
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{config}: not valid JSON ({e})") from None
    if not weights.is_file():
        raise UserError(f"{weights}: missing")
    try:
        cfg = translate_config(raw, str(config))[0] if is_native_config(raw) else VLMConfig.from_dict(raw)
    except (TypeError, ValueError, CheckpointError) as e:
        raise UserError(f"{config}: {e}" if str(config) not in str(e) else str(e)) from None
    shapes = safetensors_shapes(weights)
    optional = set()
    state = {k: SimpleNamespace(shape=v) for k, v in shapes.items()}
    if is_native_config(raw):   # nanoVLM's own names, mapped by the loader's own map (on empty meta tensors)
        state = {k: torch.empty(v, device="meta") for k, v in shapes.items() if k != ROTARY_BUFFER}
        if "decoder.head.weight" in state:   # the tied copy: the loader compares values, not shapes
            state.pop("decoder.token_embedding.weight", None)
        try:
            state = to_bundled(state, cfg, str(weights))
        except (CheckpointError, ValueError) as e:
            raise UserError(str(e)) from None
    elif cfg.lm_tie_weights:
        optional = {"decoder.head.weight"}
    with torch.device("meta"):
        model = VisionLanguageModel(cfg)
    try:
        check_state_dict(model, state, str(weights), optional)
    except CheckpointError as e:
        raise UserError(str(e)) from None


def check_nanovlm_tokenizer(folder: Path) -> None:
    """A checkpoint in nanoVLM's own format without tokenizer files: the tokenizer its lm_tokenizer names is
    a folder, cached, or on a hub that answers (offline, one line now instead of minutes of retries later)."""
    from nanovlm.native_format import is_native_config
    from vlm_grades.models.tokenizer_loading import check_checkpoint_tokenizer

    config = folder / "config.json"
    raw = json.loads(config.read_text())       # read and checked by check_nanovlm_tensors
    if is_native_config(raw):
        check_checkpoint_tokenizer(folder, str(raw["lm_tokenizer"]), str(config))
