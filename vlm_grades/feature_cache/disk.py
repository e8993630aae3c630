"""The feature cache's optional disk tier: a bounded ring of features in one memory-mapped file.

Features the memory tier evicts (or that do not fit in it) are appended at the ring's head; when the head
reaches the end of the file it wraps to the start, and entries it writes over are dropped from the index. A
feature read back is moved to the memory tier and leaves the index, so each key lives in one tier and the ring
holds what memory evicted, in the order it was evicted: the ring's oldest entry is (nearly) the least recently
used. Bytes are the model's own (its dtype, bit for bit). The file is created empty on every start (a resumed
run rebuilds it) and deleted by `close`; it is never part of a checkpoint.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch

from vlm_grades.feature_cache.sizes import tensor_nbytes

_ALIGN = 64   # every entry starts at a multiple of this, so a slice can be viewed as any dtype


class _Entry(NamedTuple):
    offset: int
    size: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    device: torch.device


class DiskTier:
    def __init__(self, path: Path, max_bytes: int):
        self.path, self.max_bytes = Path(path), max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as f:   # truncated: a leftover of an earlier attempt is discarded
            f.truncate(max_bytes)           # sparse: disk blocks are used only as entries are written
        self.buffer = torch.from_file(str(self.path), shared=True, size=max_bytes, dtype=torch.uint8)
        self.index: OrderedDict[str, _Entry] = OrderedDict()   # in write order: the oldest first
        self.head = 0
        self.bytes = 0
        self.evictions = 0

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def put(self, key: str, value: torch.Tensor) -> None:
        size = tensor_nbytes(value)
        if key in self.index or size > self.max_bytes:
            return
        start = -(-self.head // _ALIGN) * _ALIGN
        wrapped = start + size > self.max_bytes
        if wrapped:
            start = 0
        self._make_room(start, start + size, wrapped)
        self.buffer[start:start + size].copy_(value.detach().contiguous().reshape(-1).view(torch.uint8))
        self.index[key] = _Entry(start, size, value.dtype, tuple(value.shape), value.device)
        self.head = start + size
        self.bytes += size

    def _make_room(self, start: int, end: int, wrapped: bool) -> None:
        """Drop the entries [start, end) writes over. In write order, the ring's entries beyond the head come
        first (the previous lap), then those before it; so both kinds to drop are a prefix: on a wrap, all
        those beyond the old head (the gap left there is smaller than the new entry), then the overlapping."""
        while self.index:
            key, e = next(iter(self.index.items()))
            beyond_head = wrapped and e.offset >= self.head
            if not (beyond_head or (e.offset < end and start < e.offset + e.size)):
                break
            self._drop(key)
            self.evictions += 1

    def get(self, key: str) -> torch.Tensor | None:
        """A copy of the entry on its original device (None: not here)."""
        e = self.index.get(key)
        if e is None:
            return None
        raw = self.buffer[e.offset:e.offset + e.size]
        return raw.view(e.dtype).view(e.shape).to(e.device, copy=True)

    def discard(self, key: str) -> None:
        if key in self.index:
            self._drop(key)

    def _drop(self, key: str) -> None:
        self.bytes -= self.index.pop(key).size

    def stats(self) -> dict[str, int]:
        return {"entries": len(self.index), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "evictions": self.evictions}

    def close(self) -> None:
        self.index.clear()
        self.buffer = None
        self.path.unlink(missing_ok=True)
