"""Errors about a setting name it as the user gave it: the flag they typed (`--rho`), or the key of their
--config file (`--config run.yaml: grades.rho`). TrainConfig and GradESConfig name settings by their own
keys (`grades.rho`, `--mix-fraction`); `blame` rewrites that name by where the value came from."""
from __future__ import annotations

import re

from vlm_grades.errors import UserError

# `vlm-grades train` flag -> GradESConfig key (the other flags are the TrainConfig key with dashes)
GRADES_FLAGS = {"grades_preset": "preset", "metric": "metric", "normalization": "normalization", "rho": "rho",
                "auto_window": "auto_window", "snr_window": "snr_window", "alpha": "alpha", "interval": "interval",
                "converge_window": "converge_window", "converge_tolerance": "converge_tolerance",
                "converge_patience": "converge_patience",
                "patience": "patience", "smoothing": "smoothing", "stop_fraction": "stop_fraction"}
_FLAG_OF_GRADES_KEY = {**{v: k for k, v in GRADES_FLAGS.items()}, "finalize_modalities": "no_finalize"}
_NAME = re.compile(r"(grades\.[a-z_]+(?:\.[a-z]+)?|--[a-z][a-z0-9-]*)(?=[: ])")


def _lookup(layer: dict | None, path: list[str]) -> bool:
    node = layer
    for i, key in enumerate(path):
        if path[:i] == ["grades", "tau"]:   # one threshold sets every modality; the flags give --tau, then a mapping
            parts = node if isinstance(node, tuple) else (node,)
            return any(not isinstance(part, dict) or key in part for part in parts)
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def flag_of(setting: str) -> str:
    """The flag of a TrainConfig key, or of `grades.<key>` (the key itself where no flag sets it)."""
    from vlm_grades.config import _flag

    if not setting.startswith("grades."):
        return _flag(setting)
    key = setting[len("grades."):]
    if key == "tau" or key.startswith("tau."):
        return "--tau" + key[len("tau"):].replace(".", "-")
    return f"--{_FLAG_OF_GRADES_KEY[key].replace('_', '-')}" if key in _FLAG_OF_GRADES_KEY else setting


def _flag_for(path: list[str], flags: dict) -> str:
    if path[0] != "grades":
        return f"--{path[0].replace('_', '-')}"
    key = path[1]
    if key == "tau":
        given = flags["grades"]["tau"]
        if isinstance(given, tuple):   # --tau and --tau-<modality>: the modality's flag if it named one
            given = given[-1] if len(path) > 2 and path[2] in given[-1] else given[0]
        if isinstance(given, dict):
            return f"--tau-{path[2]}" if len(path) > 2 else "--tau-" + next(iter(given))
        return "--tau"
    return f"--{_FLAG_OF_GRADES_KEY.get(key, key).replace('_', '-')}"


def blame(error: UserError, flags: dict, config: dict | None = None, config_path: str | None = None) -> UserError:
    """`error` with its leading setting name as the user gave it: `flags` (the settings from the command
    line) win over `config` (the --config file's). Unchanged when neither set it (a default)."""
    message = str(error)
    match = _NAME.match(message)
    if not match:
        return error
    name = match.group(1)
    path = name.split(".") if name.startswith("grades.") else [name[2:].replace("-", "_")]
    if _lookup(flags, path):
        given = _flag_for(path, flags)
    elif config_path and _lookup(config, path):
        given = f"--config {config_path}: {'.'.join(path)}"
    else:
        return error
    return UserError(given + message[match.end():])
