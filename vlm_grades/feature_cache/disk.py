"""The feature cache's optional disk tier: a bounded store of features in one memory-mapped file.

Features the memory tier evicts (or that do not fit in it) are written into free space of the file; a feature
read back moves to the memory tier and leaves the index, freeing its space for the next one (so the tier evicts
only when it is really full). When no free extent is large enough, the entries written longest ago go first
(the index keeps write order, which is the order memory evicted them: nearly least recently used). Bytes are the
model's own (its dtype, bit for bit). The file's whole size is reserved on disk when the tier is made (at the
start of training, so a full disk fails there in one line and never later with SIGBUS on a write through the
map); it is created anew on every start (a resumed run rebuilds it), deleted by `close`, never part of a
checkpoint.
"""
from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch

from vlm_grades.feature_cache.sizes import tensor_nbytes

_ALIGN = 64   # every entry starts at a multiple of this, so a slice can be viewed as any dtype


def free_bytes(folder: Path) -> int:
    """Free bytes of the file system `folder` is (or will be) on."""
    import shutil

    existing = next((f for f in [Path(folder), *Path(folder).absolute().parents] if f.exists()), Path("/"))
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return 0


class _Entry(NamedTuple):
    offset: int
    size: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    device: torch.device


class DiskTier:
    def __init__(self, path: Path, max_bytes: int):
        """Creates the file and reserves its `max_bytes` on disk; OSError (ENOSPC, EFBIG) when it cannot."""
        self.path, self.max_bytes = Path(path), max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)   # a leftover is discarded
        try:
            os.posix_fallocate(fd, 0, max_bytes)   # real blocks: writes through the map cannot run out
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        self.buffer = torch.from_file(str(self.path), shared=True, size=max_bytes, dtype=torch.uint8)
        self.index: OrderedDict[str, _Entry] = OrderedDict()   # in write order: the oldest first
        self.free: list[tuple[int, int]] = [(0, max_bytes)]     # (offset, size) extents, sorted, coalesced
        self.bytes = 0
        self.evictions = 0

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def put(self, key: str, value: torch.Tensor) -> None:
        size = tensor_nbytes(value)
        if key in self.index or size > self.max_bytes:
            return
        start = self._allocate(size)
        while start is None:   # no free extent fits: the oldest entries go until one does
            oldest = next(iter(self.index))
            self._drop(oldest)
            self.evictions += 1
            start = self._allocate(size)
        self.buffer[start:start + size].copy_(value.detach().contiguous().reshape(-1).view(torch.uint8))
        self.index[key] = _Entry(start, size, value.dtype, tuple(value.shape), value.device)
        self.bytes += size

    def _allocate(self, size: int) -> int | None:
        """The start of `size` bytes (aligned) taken from the first free extent that holds them."""
        need = -(-size // _ALIGN) * _ALIGN
        for i, (offset, length) in enumerate(self.free):
            if length >= need or (length >= size and offset + length == self.max_bytes):
                taken = min(need, length)
                self.free[i:i + 1] = [(offset + taken, length - taken)] if length > taken else []
                return offset
        return None

    def _release(self, offset: int, size: int) -> None:
        size = min(-(-size // _ALIGN) * _ALIGN, self.max_bytes - offset)
        i = bisect.bisect(self.free, (offset, size))
        if i < len(self.free) and offset + size == self.free[i][0]:   # joins the next extent
            size += self.free.pop(i)[1]
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == offset:   # and the previous
            offset, size = self.free[i - 1][0], self.free[i - 1][1] + size
            i -= 1
            self.free.pop(i)
        self.free.insert(i, (offset, size))

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
        entry = self.index.pop(key)
        self.bytes -= entry.size
        self._release(entry.offset, entry.size)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self.index), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "evictions": self.evictions}

    def close(self) -> None:
        self.index.clear()
        self.free = []
        self.buffer = None
        self.path.unlink(missing_ok=True)
