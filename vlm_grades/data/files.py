"""Finding and reading the official files of a data set: JSON files by name, image folders by probing."""
from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Callable, Iterable

from vlm_grades.errors import UserError

# where official downloads put annotation files, relative to the folder the user names
ANNOTATION_DIRS = ("", "annotations", "Annotations", "questions", "Questions", "questions1.2", "karpathy")


def find_file(root: Path, names: Iterable[str], subdirs: Iterable[str] = ANNOTATION_DIRS,
              deep: bool = True) -> Path | None:
    """The first of `names` in root or its usual sub-folders, else (deep) anywhere up to 3 levels down."""
    names = list(names)
    for sub in subdirs:
        for name in names:
            p = root / sub / name if sub else root / name
            if p.exists():
                return p
    if not deep:
        return None
    for name in names:
        for depth in ("*/", "*/*/", "*/*/*/"):
            hits = sorted(root.glob(depth + name))
            if hits:
                return hits[0]
    return None


def official_files(root: Path, pattern: str) -> list[Path]:
    """The files matching `pattern` in root and its usual sub-folders (one per split, e.g. captions_*.json)."""
    return [p for sub in ANNOTATION_DIRS for p in sorted((root / sub).glob(pattern)) if p.is_file()]


_announced: set[str] = set()


def announce(line: str) -> None:
    """Print (once per process, on stdout: stderr is for the one-line errors) which files a reader uses, so
    that a wrong one is never silent."""
    if line not in _announced:
        _announced.add(line)
        print(line, flush=True)


def read_json(path: Path):
    enabled = gc.isenabled()
    gc.disable()   # millions of fresh containers, none cyclic: collections would only slow parsing 2x
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    finally:
        if enabled:
            gc.enable()


def require_key(data, key: str, path: Path, kind: type = list):
    if not isinstance(data, dict) or not isinstance(data.get(key), kind):
        raise UserError(f"{path}: expected a JSON object with a {kind.__name__} {key!r}")
    return data[key]


def pick_image_dir(candidates: Iterable[Path], probe: list, path_in: Callable[[Path, object], Path | None],
                   expected: str) -> Path:
    """The candidate folder holding most of the probe records' images (at least one).

    `path_in(folder, record)` returns the record's image path in that folder if it exists."""
    seen, best, best_hits = set(), None, 0
    for folder in candidates:
        folder = folder.resolve() if folder.exists() else folder
        if folder in seen or not folder.is_dir():
            continue
        seen.add(folder)
        hits = sum(path_in(folder, r) is not None for r in probe)
        if hits > best_hits:
            best, best_hits = folder, hits
        if hits == len(probe):
            break
    if best is None:
        raise UserError(f"no image folder found: expected {expected} (or pass the image folder explicitly)")
    return best
