"""Whether a --model-path that is not on disk names a Hugging Face hub model or a missing local folder."""
from __future__ import annotations

import re
from pathlib import Path

from vlm_grades.errors import UserError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_id(model_path: str, flag: str = "--model-path") -> str:
    """`model_path` (not a local file or folder) as a hub id; UserError "<flag>: <path>: no such folder"
    when it is meant as a local path: not `owner/name`, starts with . / ~, or its first component is a local
    folder (`runs/foo` with `runs/` present)."""
    local = (not _HUB_ID.fullmatch(model_path) or model_path.startswith((".", "/", "~"))
             or Path(model_path.split("/")[0]).is_dir())
    if local:
        raise UserError(f"{flag}: {model_path}: no such folder")
    return model_path
