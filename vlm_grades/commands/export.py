"""`vlm-grades export RUN --format nanovlm`: write a trained model in another project's checkpoint format."""
from __future__ import annotations

import argparse
from pathlib import Path

from vlm_grades.errors import UserError

FORMATS = ("nanovlm",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained model in nanoVLM's own checkpoint format",
                       description="Writes the model of a run folder (its final/ model) or of a model folder in "
                                   "another project's format. nanovlm: config.json and model.safetensors as "
                                   "nanoVLM's save_pretrained writes them, loadable with its "
                                   "VisionLanguageModel.from_pretrained. A model fine-tuned from a nanoVLM "
                                   "checkpoint gets that checkpoint's config.json and tensor dtypes back.")
    p.add_argument("run", help="a run folder (its final/ model is exported) or a model folder")
    p.add_argument("--format", required=True, choices=FORMATS, help="the checkpoint format to write: nanovlm")
    p.add_argument("--out", required=True, help="folder to write (created; must not hold a config.json yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlm_grades.models import detect_architecture, load_for_eval
    from vlm_grades.models.nanovlm_native import export_nanovlm
    from vlm_grades.training.run_folder import check_can_create

    src, out = Path(args.run), Path(args.out)
    if not src.exists():
        raise UserError(f"{src}: does not exist")
    if out.exists() and (not out.is_dir() or (out / "config.json").exists()):
        raise UserError(f"--out: {out} already holds a model; choose a new folder")
    model_dir = src / "final" if (src / "final").is_dir() else src
    if detect_architecture(model_dir) != "nanovlm":
        raise UserError(f"--format nanovlm: {model_dir} is not a nanoVLM model")
    check_can_create(out)   # before the model loads
    export_nanovlm(load_for_eval(src), out)
    print(f"wrote {out} (nanoVLM format: config.json, model.safetensors)")
    return 0
