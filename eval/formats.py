"""Reading, validating and writing prediction and reference files.

Every id is keyed as a string ("42"); prediction files are written back in the official result
formats (integer ids where the id is an integer). Hugging Face layouts: a `datasets` save_to_disk
folder, a parquet file, or a folder of parquet files (the hub layout, split named in the file path).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlm_grades.errors import UserError

# task -> (id field, text field) of its official result format
PRED_FIELDS = {
    "vqav2": ("question_id", "answer"),
    "gqa": ("questionId", "prediction"),
    "coco": ("image_id", "caption"),
    "easyvqa": ("question_id", "answer"),
    "easyvqa-caption": ("image_id", "caption"),
    "scenes": ("question_id", "answer"),
}


def key_of(value: Any, where: str) -> str:
    """The canonical id: an integer or a non-empty string, as a string."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserError(f"{where}: id {str(value)[:60]!r} is not an integer or a string")
    text = str(value).strip()
    if not text:
        raise UserError(f"{where}: empty id")
    return text


def official_id(key: str, task: str) -> int | str:
    if task != "gqa" and key.isdigit():
        return int(key)
    return key


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({e})") from None
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def read_predictions(task: str, path: str | Path) -> dict[str, str]:
    """A result file in the task's official format -> {id: prediction}; duplicates are an error."""
    id_field, text_field = PRED_FIELDS[task]
    data = read_json(path)
    shape = f"a JSON list of {{{id_field!r}: ..., {text_field!r}: ...}} objects ({task} result format)"
    if not isinstance(data, list):
        raise UserError(f"{path}: expected {shape}, got a JSON {type(data).__name__}")
    if not data:
        raise UserError(f"{path}: no predictions (an empty list)")
    preds: dict[str, str] = {}
    for i, item in enumerate(data):
        if not isinstance(item, dict) or id_field not in item or text_field not in item:
            raise UserError(f"{path}: item {i} is not an object with {id_field!r} and {text_field!r} "
                            f"(expected {shape}): {json.dumps(item)[:80]}")
        k = key_of(item[id_field], f"{path}: item {i}")
        text = item[text_field]
        if not isinstance(text, str):
            raise UserError(f"{path}: item {i}: {text_field!r} is not a string: {json.dumps(text)[:60]}")
        if k in preds:
            raise UserError(f"{path}: duplicate {id_field} {item[id_field]!r} (item {i})")
        preds[k] = text
    return preds


def write_predictions(task: str, predictions: dict[str, str], path: str | Path) -> None:
    id_field, text_field = PRED_FIELDS[task]
    rows = [{id_field: official_id(k, task), text_field: v} for k, v in predictions.items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, ensure_ascii=False))


def align(predictions: dict[str, str], known: set[str] | dict, required: set[str] | dict,
          pred_name: str, ref_name: str, partial: bool) -> tuple[dict[str, str], dict[str, int]]:
    """Match prediction ids to reference ids. `known`: every id the references hold; `required`:
    those that need a prediction. Without `partial`, a missing or unknown id is an error."""
    missing = [k for k in required if k not in predictions]
    unknown = [k for k in predictions if k not in known]
    if (missing or unknown) and not partial:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the {len(required)} ids of {ref_name} have no prediction "
                         f"(e.g. {missing[0]})")
        if unknown:
            parts.append(f"{len(unknown)} of its {len(predictions)} ids are not in {ref_name} "
                         f"(e.g. {unknown[0]})")
        raise UserError(f"{pred_name}: {'; '.join(parts)}; --partial scores the ids in common")
    kept = {k: v for k, v in predictions.items() if k in required}
    if not kept:
        raise UserError(f"{pred_name}: no prediction id matches an id of {ref_name}")
    coverage = {"predictions": len(predictions), "references": len(required), "scored": len(kept),
                "missing_predictions": len(missing), "unknown_predictions": len(unknown)}
    return kept, coverage


# --- Hugging Face layouts -------------------------------------------------------------------------

def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("dataset_dict.json", "state.json"))


def is_table(path: str | Path) -> bool:
    """A Hugging Face layout (save_to_disk folder, parquet file or folder of parquet files)."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".parquet"
    return path.is_dir()


SPLIT_ALIASES = [("val", "validation"), ("testdev", "test-dev", "test_dev")]


def split_names(split: str) -> set[str]:
    """`split` and its usual other spellings."""
    return {split}.union(*(set(g) for g in SPLIT_ALIASES if split in g))


def _parquet_files(path: Path, split: str | None) -> list[Path]:
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files:
        raise UserError(f"{path}: no .parquet files and not a `datasets` save_to_disk folder")
    if split and path.is_dir():
        names = split_names(split)
        chosen = [f for f in files if names & set(f.relative_to(path).parts[:-1])
                  or f.name.split("-")[0].split(".")[0] in names]
        if not chosen:
            names = sorted({f.name.split("-")[0].split(".")[0] for f in files})
            raise UserError(f"{path}: no parquet file for split {split!r} (files start with {', '.join(names)})")
        files = chosen
    elif len({f.name.split("-")[0] for f in files}) > 1:
        names = sorted({f.name.split("-")[0] for f in files})
        raise UserError(f"{path}: holds several splits; choose one with --split ({', '.join(names)})")
    return files


def read_table(path: str | Path, columns: list[str], split: str | None = None,
               optional: tuple[str, ...] = ()) -> list[dict]:
    """The rows (as dicts of `columns`) of a Hugging Face layout, never decoding image columns.
    A column in `optional` may be absent; any other missing column is an error naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found")
    if _is_saved_dataset(path):
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # a broken folder: report it, not a traceback
            raise UserError(f"{path}: cannot be loaded as a `datasets` folder ({type(e).__name__}: {e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split is None and len(ds) == 1:
                split = next(iter(ds))
            split = next((n for n in ds if split and n in split_names(split)), split)
            if split not in ds:
                raise UserError(f"{path}: choose a split with --split ({', '.join(ds)})")
            ds = ds[split]
        names = ds.column_names
        _check_columns(path, names, columns, optional)
        return ds.select_columns([c for c in columns if c in names]).to_list()
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for f in _parquet_files(path, split):
        try:
            names = pq.read_schema(f).names
            _check_columns(f, names, columns, optional)
            rows.extend(pq.read_table(f, columns=[c for c in columns if c in names]).to_pylist())
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{f}: not a readable parquet file ({type(e).__name__}: {e})") from None
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _check_columns(path, names, columns, optional) -> None:
    missing = [c for c in columns if c not in names and c not in optional]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(names)})")


def one_split(folder: Path, files: list[Path], prefix: str, suffix: str) -> Path | None:
    """The only official file of `files` (named prefix<split>suffix), None if none; several: choose with --split."""
    if len(files) > 1:
        names = ", ".join(f.name[len(prefix):-len(suffix)] for f in files)
        raise UserError(f"{folder}: holds several splits; choose one with --split ({names})")
    return files[0] if files else None


def mean100(values: list[float]) -> float:
    """Mean as a percentage; 0 for no values."""
    return 100 * sum(values) / len(values) if values else 0.0
