"""Opening Hugging Face `datasets` sources: a hub id (`datasets.load_dataset(id, config, split)`),
a local `save_to_disk` folder (Dataset or DatasetDict), or parquet files (one file, or a folder laid
out like a hub repository: `data/validation-00000-of-00001.parquet`, `<config>/<split>-*.parquet`).
Image columns are read undecoded ({bytes, path}); decoding happens later, in DataLoader workers."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vlm_grades.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")

SPLIT_ALIASES = [("val", "validation"), ("test-dev", "testdev", "test_dev"), ("train",), ("test",)]


def split_names(split: str, first: str | None = None) -> list[str]:
    """`split` and its usual spellings, `first` (the hub's own spelling) first."""
    names = [split]
    for group in SPLIT_ALIASES:
        if split in group:
            names += [n for n in group if n != split]
    if first:
        names = [first] + [n for n in names if n != first]
    return names


def looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not source.startswith((".", "~"))


def _parquet_files(folder: Path) -> list[Path]:
    # at most three levels down (hub layouts: data/x.parquet, <config>/x.parquet, <config>/<split>/x.parquet):
    # never a walk through a folder of 100,000 images
    found = [p for pattern in ("*.parquet", "*/*.parquet", "*/*/*.parquet", "*/*/*/*.parquet")
             for p in folder.glob(pattern)]
    return sorted(p for p in found if p.is_file())


def is_local_hf(path: Path) -> bool:
    """Whether `path` holds a save_to_disk data set or parquet files."""
    if path.is_file():
        return path.suffix == ".parquet"
    if not path.is_dir():
        return False
    if any((path / m).is_file() for m in _DISK_MARKERS):
        return True
    if any(p.is_dir() and any((p / m).is_file() for m in _DISK_MARKERS) for p in path.iterdir()):
        return True
    return bool(_parquet_files(path))


def _file_split(path: Path, root: Path, names: list[str]) -> bool:
    stem = path.name.split(".")[0]
    parts = path.relative_to(root).parts[:-1]
    return any(stem == n or stem.startswith(n + "-") or stem.startswith(n + "_") or n in parts for n in names)


def _known_splits(files: list[Path], root: Path) -> set[str]:
    return {re.split(r"[-_.]", f.name)[0] for f in files}


def check_one_data_set(files: list[Path], root: Path) -> None:
    """Parquet files read as one table must have the same columns: a folder mixing data sets (VQAv2 and
    COCO files together) is one line naming the files and the columns that differ, not a CastError
    from deep in `datasets`. Reads only the files' schemas."""
    import pyarrow.parquet as pq

    groups: dict[tuple, list[Path]] = {}
    for f in files:
        try:
            schema = pq.read_schema(f)
        except Exception as e:   # pyarrow raises several types for a damaged file
            raise UserError(f"{f}: not a readable parquet file ({type(e).__name__}: {e})") from None
        groups.setdefault(tuple((n, str(schema.field(n).type)) for n in sorted(schema.names)), []).append(f)
    if len(groups) < 2:
        return
    names = {columns: {n for n, _ in columns} for columns in groups}
    common = set.intersection(*names.values())
    parts = []
    for columns, members in groups.items():
        more = f" (and {len(members) - 1} more)" if len(members) > 1 else ""
        own = ", ".join(sorted(names[columns] - common))
        parts.append(f"{_shown(members[0], root)}{more}" + (f" has {own}" if own else ""))
    types = {n: sorted({dict(columns)[n] for columns in groups}) for n in sorted(common)}
    retyped = [f"{n} ({' vs '.join(t)})" for n, t in types.items() if len(t) > 1]
    if retyped:
        parts.append(f"types differ for {', '.join(retyped)}")
    raise UserError(f"{root}: parquet files of different data sets: {'; '.join(parts)}; "
                    f"point --data at the files of one data set")


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _from_parquet(files: list[Path], streaming: bool, root: Path | None = None):
    import datasets

    check_one_data_set(files, root or files[0].parent)
    return datasets.load_dataset("parquet", data_files={"data": [str(f) for f in files]}, split="data",
                                 streaming=streaming)


def _from_disk(folder: Path, names: list[str], streaming: bool):
    import datasets

    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as e:
        raise UserError(f"{folder}: not a readable save_to_disk data set ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        key = next((n for n in names if n in ds), None)
        if key is None:
            raise UserError(f"{folder}: no split {names[0]!r}; it has {', '.join(ds)}")
        ds = ds[key]
    return ds.to_iterable_dataset() if streaming else ds


def open_local(path: Path, names: list[str], streaming: bool = False):
    """A local save_to_disk folder or parquet file(s) as a Dataset (IterableDataset when streaming)."""
    if path.is_file():
        return _from_parquet([path], streaming)
    if any((path / m).is_file() for m in _DISK_MARKERS):
        return _from_disk(path, names, streaming)
    for n in names:  # a DatasetDict's split saved on its own, or one folder per split
        if (path / n).is_dir() and is_local_hf(path / n):
            return open_local(path / n, names, streaming)
    files = _parquet_files(path)
    if not files:
        raise UserError(f"{path}: no save_to_disk data set or parquet files")
    chosen = [f for f in files if _file_split(f, path, names)]
    if not chosen:
        known = _known_splits(files, path)
        if any(k in {n for g in SPLIT_ALIASES for n in g} for k in known):
            raise UserError(f"{path}: no parquet files for split {names[0]!r} (files start with: "
                            f"{', '.join(sorted(known))})")
        chosen = files  # file names carry no split: the folder is the split
    return _from_parquet(chosen, streaming, path)


def open_hub(repo: str, config: str | None, split: str, streaming: bool = False):
    import datasets

    try:
        return datasets.load_dataset(repo, config, split=split, streaming=streaming)
    except Exception as e:
        what = f"config {config!r}, " if config else ""
        raise UserError(f"{repo}: no such local file or folder, and could not load it as a Hugging Face data set "
                        f"({what}split {split!r}): {type(e).__name__}: {e}") from None


def open_source(source: str, names: list[str], config: str | None = None, streaming: bool = False):
    """A hub id or a local path; for a local folder with per-config subfolders, `config` picks one."""
    path = Path(source).expanduser()
    if path.exists():
        if config and path.is_dir() and (path / config).is_dir():
            path = path / config
        return undecoded(open_local(path, names, streaming))
    return undecoded(open_hub(source, config, names[0], streaming))


def undecoded(ds):
    """Cast every Image column to decode=False, so rows carry {bytes, path} instead of PIL images."""
    from datasets import Image

    features = getattr(ds, "features", None)
    if not features:
        return ds
    for name, feature in features.items():
        if isinstance(feature, Image) and feature.decode:
            ds = ds.cast_column(name, Image(decode=False))
    return ds


def shuffled(ds, seed: int, buffer_size: int = 1000):
    """Deterministic shuffle of a Dataset (index mapping) or an IterableDataset (buffer)."""
    import datasets

    if isinstance(ds, datasets.IterableDataset):
        return ds.shuffle(seed=seed, buffer_size=buffer_size)
    return ds.shuffle(seed=seed, keep_in_memory=True)   # no indices cache file beside the data


def image_ref(value: Any):
    """A row's image value as a schema ImageRef (bytes or path), or None when absent."""
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        return value.get("path") or None
    if isinstance(value, (bytes, str)):
        return value or None
    return value  # an already decoded PIL image
