"""Frozen-tower feature cache: the projector output per image, computed once and reused while the vision
encoder and the projector cannot change (frozen in training, or any evaluation).

Adapters consult it through one call, `FeatureCache.lookup(keys, encode)`: the features of these
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
WINDOW = 1000          # images looked up by a full cache before its hit rate is judged
MIN_HIT_RATE = 0.1     # below this a full cache costs more (lookups, copies, padded chunks) than it spares
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
    number = float(match.group(1))
    if number > 0 and number * _UNITS[unit] < 1:   # '0.5' is not half a byte: say so rather than turn it off
        raise ValueError(f"{text!r} is less than one byte: give a unit (e.g. {match.group(1)}GB), or 0 for off")
    return int(number * _UNITS[unit])


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


def chunk_size(batch: int) -> int:
    """Images per tower call for batches of `batch` images: the largest divisor of it up to 8, so the misses of
    a batch never cost more tower calls' rows than the batch itself (a prime batch above 8: itself)."""
    best = max(d for d in range(1, min(batch, 8) + 1) if batch % d == 0)
    return batch if best == 1 else best


class FeatureCache:
    def __init__(self, max_bytes: int, disk: DiskTier | None = None, chunk: int | None = None):
        """chunk: images per tower call (None: from the size of the first batch looked up, see `chunk_size`)."""
        self.max_bytes, self.disk, self.chunk = max_bytes, disk, chunk
        self.store = True   # False: switched off (`switch_off`); the tower runs as it does for misses
        self.window = [0, 0]   # hits, misses since the cache became full (what a full cache earns)
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = self.disk_hits = 0
        self.skipped_rows = {"vision": 0, "projector": 0}   # tower rows not computed thanks to hits, since taken

    def lookup(self, keys: Sequence[str], encode: Callable[[list[int]], list[torch.Tensor]],
               rows: Sequence[dict[str, int]] | None = None,
               group: Callable[[int], Any] | None = None) -> list[torch.Tensor]:
        """Features of each image of `keys`; encode(indices) runs the tower on those images together and returns
        their features, in order. rows[i]: the tower rows image i costs (counted as skipped when it is found).
        group(i): images of one group can share a tower call (Qwen: the same patch grid); default one group.

        The images not held go through the tower together, in calls of exactly `chunk` images (the last one
        filled up with repeats): an image's features then depend on the image and the chunk size only, not on
        its batch-mates or its place among them (a matrix multiply's bits depend on its number of rows, not on
        the other rows), so a resumed run, which meets its images in other company and with an empty cache,
        gets the same bits as the run it continues. With the cache switched off (`store = False`) the
        tower runs the same way and nothing is kept."""
        if self.chunk is None:
            self.chunk = chunk_size(len(keys))
        found: list[torch.Tensor | None] = []
        for key in keys:
            value = self.entries.get(key) if self.store else None
            if value is not None:
                self.entries.move_to_end(key)
            elif self.disk is not None:
                value = self.disk.get(key)
                if value is not None:
                    self.disk_hits += 1
                    self._put(key, value)
            found.append(value)
        first: dict[str, int] = {}   # an image twice in one batch goes through the tower once
        for i, key in enumerate(keys):
            if found[i] is None and key not in first:
                first[key] = i
        computed = self._encode(list(first.values()), encode, group)
        for key, i in first.items():
            self._put(key, computed[i])
        for i, key in enumerate(keys):
            if found[i] is None:
                found[i] = computed[first[key]]
        self.misses += len(first)
        self.hits += len(keys) - len(first)
        if self.full():
            self.window[0] += len(keys) - len(first)
            self.window[1] += len(first)
        if rows is not None:
            for i, r in enumerate(rows):
                if first.get(keys[i]) != i:
                    for m in self.skipped_rows:
                        self.skipped_rows[m] += int(r.get(m, 0))
        return found   # type: ignore[return-value]

    def _encode(self, missing: list[int], encode: Callable[[list[int]], list[torch.Tensor]],
                group: Callable[[int], Any] | None) -> dict[int, torch.Tensor]:
        import torch

        groups: dict[Any, list[int]] = {}
        for i in missing:
            groups.setdefault(group(i) if group is not None else None, []).append(i)
        out: dict[int, torch.Tensor] = {}
        for members in groups.values():
            for start in range(0, len(members), self.chunk):
                part = members[start:start + self.chunk]
                with torch.no_grad():
                    features = encode(part + [part[-1]] * (self.chunk - len(part)))
                # copies: a view would keep the whole call's output (repeats included) alive in the cache
                out.update((i, f.detach().clone()) for i, f in zip(part, features))
        return out

    def _put(self, key: str, value: torch.Tensor) -> None:
        size = tensor_nbytes(value)
        if key in self.entries or not self.store:
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

    def full(self) -> bool:
        """The last tier has evicted: from now on the hit rate is what the cache's size earns."""
        return (self.disk.evictions if self.disk is not None else self.evictions) > 0

    def cannot_pay(self) -> str | None:
        """Why the cache should go off (None: it pays, or it is too early to tell): a full cache whose hit rate,
        over WINDOW images, is below MIN_HIT_RATE: its lookups and copies cost more than the tower it spares."""
        hits, misses = self.window
        if not self.store or hits + misses < WINDOW:
            return None
        self.window = [0, 0]
        if hits >= MIN_HIT_RATE * (hits + misses):
            return None
        return f"{hits / (hits + misses):.0%} hits over the last {hits + misses} images with the cache full"

    def switch_off(self) -> None:
        """Keeps nothing from now on (memory and disk tier freed); lookups still run the tower in chunks, so the
        features keep their bits."""
        self.store = False
        self.entries.clear()
        self.bytes = 0
        if self.disk is not None:   # its file goes; the tier object stays for its statistics
            self.disk.close()

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
        if not self.store:
            return f"cache off ({s['hit_rate']:.0%} hits)"
        return f"cache {s['hit_rate']:.0%} hits, {format_size(s['bytes'])}{disk}"

    def close(self) -> None:
        """Deletes the disk tier and its file; the memory tier keeps working."""
        if self.disk is not None:
            self.disk.close()
            self.disk = None
