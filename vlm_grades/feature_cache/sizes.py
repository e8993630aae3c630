"""Bytes of a cached feature; shared by the memory and disk tiers (no torch import: `score` loads the cache
module without it)."""
from __future__ import annotations

from typing import Any


def tensor_nbytes(value: Any) -> int:
    return value.numel() * value.element_size()
