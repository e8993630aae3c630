"""nanoVLM's own arithmetic reproduced to the last bit: the tiled resize (its float operations, in its
order) and the rotary embedding's rescaling past lm_max_position_embeddings."""
from __future__ import annotations

import math

import pytest
import torch

from nanovlm.config import VLMConfig
from nanovlm.language_model import LanguageModel
from nanovlm.tiling import tiled_size


def upstream_resize(h: int, w: int, tile: int, max_side: int, to_max_side: bool) -> tuple[int, int]:
    """nanoVLM's DynamicResize._get_new_hw, written out from its source: scale = target_long / long, then
    ceil(short * scale / tile) * tile."""
    long, short = (w, h) if w >= h else (h, w)
    target_long = max_side if to_max_side else min(max_side, math.ceil(long / tile) * tile)
    scale = target_long / long
    target_short = max(math.ceil(short * scale / tile) * tile, tile)
    return (target_short, target_long) if w >= h else (target_long, target_short)


# (h, w, resize_to_max_side_len) -> nanoVLM's (new_h, new_w) with its main config (tiles 512, at most 2048);
# the exact short side is a whole number of tiles, nanoVLM's float rounding adds one
CASES = [
    (279, 372, True, (2048, 2048)),      # exact 1536: 3 rows, nanoVLM 4
    (558, 744, True, (2048, 2048)),
    (1245, 1660, True, (2048, 2048)),
    (1245, 1660, False, (2048, 2048)),
    (1660, 1245, False, (2048, 2048)),
    (1100, 1100, False, (2048, 1536)),   # square: 4x3 tiles, not 3x3
    (372, 279, True, (2048, 2048)),
    (279, 372, False, (512, 512)),       # no rounding surprise: unchanged
    (600, 800, True, (1536, 2048)),
]


@pytest.mark.parametrize("h,w,to_max,expected", CASES)
def test_tiled_size_is_nanovlms_arithmetic(h, w, to_max, expected):
    assert upstream_resize(h, w, 512, 2048, to_max) == expected
    assert tiled_size(h, w, 512, 2048, to_max) == expected


def test_tiled_size_agrees_on_a_sweep_of_sizes():
    for tile, max_side in ((512, 2048), (512, 1536), (32, 64)):
        for to_max in (False, True):
            for h in range(1, 1800, 7):
                for w in range(1, 1800, 13):
                    assert tiled_size(h, w, tile, max_side, to_max) == upstream_resize(h, w, tile, max_side, to_max), \
                        (h, w, tile, max_side, to_max)
