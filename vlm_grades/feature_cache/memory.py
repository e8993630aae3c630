"""Frozen-tower feature cache: the projector output per image, computed once and reused while the vision
encoder and the projector cannot change (frozen in training, or any evaluation).

Adapters consult it through one call, `FeatureCache.lookup(keys, encode_missing)`: the features of these
images, in order, with only the images not held yet going through the tower. A key is the image's identity
plus every preprocessing setting that changes its pixels (`image_key`). Memory is bounded (`max_bytes`,
least-recently-used eviction); entries keep the model's dtype and device. With a disk tier
(disk.py), what memory evicts, or cannot hold, goes there, and a disk hit moves back to memory.
Nothing here is checkpointed: a resumed run starts with an empty cache.
"""
from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:   # torch is imported where the cache is used: `vlm-grades score` loads this module without it
    import torch

    from vlm_grades.feature_cache.disk import DiskTier

from vlm_grades.feature_cache.sizes import tensor_nbytes

DEFAULT_SIZE = "2GB"
_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: Any) -> int:
    """'2GB', '512MB', '1.5G', '64MiB', '0' (off) or a byte count -> bytes; ValueError says what is wrong."""
    if isinstance(text, bool):
        raise ValueError(f"expected a size such as 2GB, 512MB or 0 (off), got {text!r}")
    if isinstance(text, (int, float)):
        text = str(text)
    match = _SIZE.match(str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(f"expected a size such as 2GB, 512MB or 0 (off), got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{int(n)}B"


def image_identity(ref: Any) -> str:
    """A file by its absolute path; decoded images and raw bytes by a digest of their content."""
    if isinstance(ref, (str, Path)):
        return "file:" + str(Path(ref).resolve())
    if isinstance(ref, bytes):
        return "bytes:" + hashlib.sha1(ref).hexdigest()
    if hasattr(ref, "tobytes") and hasattr(ref, "size") and hasattr(ref, "mode"):   # PIL image
        digest = hashlib.sha1(ref.tobytes())
        digest.update(f"{ref.size}{ref.mode}".encode())
        return "pil:" + digest.hexdigest()
    raise TypeError(f"cannot identify an image of type {type(ref).__name__}")


def image_key(ref: Any, settings: str) -> str:
    """The cache key of an image: its identity and the preprocessing settings that change its pixels."""
    return f"{image_identity(ref)}|{settings}"


class FeatureCache:
    def __init__(self, max_bytes: int, disk: DiskTier | None = None):
        self.max_bytes, self.disk = max_bytes, disk
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = self.disk_hits = 0
        self.skipped_rows = {"vision": 0, "projector": 0}   # tower rows not computed thanks to hits, since taken

    def lookup(self, keys: Sequence[str], encode: Callable[[int], torch.Tensor],
               rows: Sequence[dict[str, int]] | None = None) -> list[torch.Tensor]:
        """Features of each image of `keys`; encode(i) runs the tower on image i alone and returns its features.
        rows[i]: the tower rows image i costs (counted as skipped when it is found).

        One image per tower call: the features are then a function of the image only, not of its batch-mates
        (matrix-multiply results depend on the number of rows), so a resumed run, which meets its images in
        other company, gets the same bits as the run it continues."""
        found: list[torch.Tensor | None] = []
        for key in keys:
            value = self.entries.get(key)
            if value is not None:
                self.entries.move_to_end(key)
            elif self.disk is not None:
                value = self.disk.get(key)
                if value is not None:
                    self.disk_hits += 1
                    self._put(key, value)
            found.append(value)
        computed: dict[str, torch.Tensor] = {}   # an image twice in one batch goes through the tower once
        for i, key in enumerate(keys):
            if found[i] is None and key not in computed:
                import torch

                with torch.no_grad():
                    computed[key] = encode(i).detach()
                self._put(key, computed[key])
            if found[i] is None:
                found[i] = computed[key]
        self.misses += len(computed)
        self.hits += len(keys) - len(computed)
        if rows is not None:
            first_miss = {key: i for i, key in reversed(list(enumerate(keys))) if key in computed}
            for i, r in enumerate(rows):
                if first_miss.get(keys[i]) != i:
                    for m in self.skipped_rows:
                        self.skipped_rows[m] += int(r.get(m, 0))
        return found   # type: ignore[return-value]

    def _put(self, key: str, value: torch.Tensor) -> None:
        size = tensor_nbytes(value)
        if key in self.entries:
            return
        if size > self.max_bytes:
            if self.disk is not None:
                self.disk.put(key, value)
            return
        while self.bytes + size > self.max_bytes and self.entries:
            old_key, old = self.entries.popitem(last=False)
            self.bytes -= tensor_nbytes(old)
            self.evictions += 1
            if self.disk is not None:
                self.disk.put(old_key, old)
        if self.disk is not None:
            self.disk.discard(key)
        self.entries[key] = value
        self.bytes += size

    def take_skipped_rows(self) -> dict[str, int]:
        rows, self.skipped_rows = self.skipped_rows, {m: 0 for m in self.skipped_rows}
        return rows

    def stats(self) -> dict[str, Any]:
        seen = self.hits + self.misses
        stats = {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / seen if seen else 0.0,
                 "entries": len(self.entries), "bytes": self.bytes, "max_bytes": self.max_bytes,
                 "evictions": self.evictions}
        if self.disk is not None:   # hits per tier; hits counts both
            stats.update(memory_hits=self.hits - self.disk_hits, disk_hits=self.disk_hits,
                         disk=self.disk.stats())
        return stats

    def describe(self) -> str:
        s = self.stats()
        disk = f" + {format_size(s['disk']['bytes'])} disk" if self.disk is not None else ""
        return f"cache {s['hit_rate']:.0%} hits, {format_size(s['bytes'])}{disk}"

    def close(self) -> None:
        """Deletes the disk tier and its file; the memory tier keeps working."""
        if self.disk is not None:
            self.disk.close()
            self.disk = None
