"""`vlm-grades components`: print the component registry GradES would monitor, one table per modality."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlm_grades.errors import UserError

MODELS = ("nanovlm", "qwen2.5-vl")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("components", help="list the matrices GradES monitors, per modality",
                       description="Builds the model (on the meta device: no weights, no memory) and prints "
                                   "its component registry: per modality the number of monitored matrices, "
                                   "their parameters, kinds and layers.")
    p.add_argument("--model", required=True, choices=MODELS, help="model family: nanovlm or qwen2.5-vl")
    p.add_argument("--preset", default="222m", help="nanovlm: config preset tiny, smol or 222m (default 222m)")
    p.add_argument("--model-path", default=None,
                   help="a model folder (config.json is read; weights are not loaded), for nanovlm also one in "
                        "nanoVLM's own format. qwen2.5-vl without it: "
                        "transformers' default Qwen2.5-VL configuration")
    p.add_argument("--architecture", default=None, choices=("nanovlm", "qwen2_5_vl", "generic"),
                   help="force a rule set instead of detecting it (default: detect)")
    p.add_argument("--json", action="store_true", help="print components.json instead of the tables")
    p.set_defaults(func=run)


def build_meta_model(model: str, preset: str = "222m", model_path: str | None = None):
    import torch

    if model == "nanovlm":
        from nanovlm.config import VLMConfig
        from nanovlm.vision_language_model import VisionLanguageModel

        if model_path:
            cfg_file = Path(model_path) / "config.json"
            if not cfg_file.exists():
                raise UserError(f"--model-path: {cfg_file} does not exist")
            from nanovlm.errors import CheckpointError
            from nanovlm.native_format import is_native_config, translate_config

            try:
                raw = json.loads(cfg_file.read_text())
                # nanoVLM's own format (no model_type) or a folder vlm-grades saved
                cfg = translate_config(raw, str(cfg_file))[0] if is_native_config(raw) else VLMConfig.from_dict(raw)
            except CheckpointError as e:   # translate_config's messages start with the file
                raise UserError(f"--model-path: {e}") from None
            except (ValueError, TypeError) as e:
                raise UserError(f"--model-path: {cfg_file}: {e}") from None
        else:
            try:
                cfg = VLMConfig.preset(preset)
            except ValueError as e:
                raise UserError(f"--preset: {e}") from None
        with torch.device("meta"):
            return VisionLanguageModel(cfg)

    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if model_path:
        if not Path(model_path).expanduser().exists():
            from vlm_grades.models.hub import hub_id

            hub_id(model_path)
        try:
            config = Qwen2_5_VLConfig.from_pretrained(model_path)
        except (OSError, ValueError) as e:
            raise UserError(f"--model-path: {model_path}: cannot read a Qwen2.5-VL config.json ({e})") from None
    else:
        config = Qwen2_5_VLConfig()
    with torch.device("meta"):
        return Qwen2_5_VLForConditionalGeneration(config)


def run(args: argparse.Namespace) -> int:
    from vlm_grades.components import build_registry, registry_table

    model = build_meta_model(args.model, args.preset, args.model_path)
    registry = build_registry(model, args.architecture)
    if args.json:
        print(json.dumps(registry.to_json(), indent=2))
    else:
        print(registry_table(registry), end="")
    return 0
