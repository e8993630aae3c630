"""nanoVLM's tiled image pipeline: resize to multiples of the tile size, cut into tiles (row-major), an
optional global view, and the prompt's image-token layout for one image."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def tiled_size(h: int, w: int, tile: int, max_side: int, to_max_side: bool = False) -> tuple[int, int]:
    """(new_h, new_w): the long side becomes a multiple of `tile` of at most `max_side` (exactly max_side when
    `to_max_side`), the short side keeps the aspect ratio, rounded up to a multiple of `tile`.

    The floating-point operations are nanoVLM's, in its order: the scale first, then short * scale / tile.
    Where the exact quotient is a whole number (1100x1100 -> 1536) the rounding can land just above it and
    ceil adds a row or column of tiles; nanoVLM trained and evaluates with that, so it is kept."""
    long, short = max(h, w), min(h, w)
    target_long = max_side if to_max_side else min(max_side, math.ceil(long / tile) * tile)
    scale = target_long / long
    target_short = max(math.ceil(short * scale / tile) * tile, tile)
    return (target_short, target_long) if w >= h else (target_long, target_short)


def split_tiles(x: torch.Tensor, tile: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(3, H, W) -> (n_h * n_w, 3, tile, tile) in row-major order, and the grid (n_h, n_w)."""
    c, h, w = x.shape
    if h % tile or w % tile:
        raise ValueError(f"image size {(h, w)} is not a multiple of the tile size {tile}")
    n_h, n_w = h // tile, w // tile
    tiles = x.reshape(c, n_h, tile, n_w, tile).permute(1, 3, 0, 2, 4)   # (n_h, n_w, 3, tile, tile)
    return tiles.reshape(n_h * n_w, c, tile, tile), (n_h, n_w)


def global_view(x: torch.Tensor, tile: int) -> torch.Tensor:
    """(3, H, W) -> (1, 3, tile, tile): torchvision's tensor resize (bilinear, antialiased)."""
    return F.interpolate(x[None], size=(tile, tile), mode="bilinear", align_corners=False, antialias=True)


def tiles_with_global(x: torch.Tensor, tile: int, with_global: bool) -> tuple[torch.Tensor, tuple[int, int]]:
    """The images the ViT sees for one resized image: [global view,] tiles. A 1x1 grid has no global view
    (the tile is the whole image)."""
    tiles, grid = split_tiles(x, tile)
    if with_global and grid != (1, 1):
        tiles = torch.cat([global_view(x, tile), tiles])
    return tiles, grid


def image_token_layout(grid: tuple[int, int], n_tokens: int, extra: dict[str, str], with_global: bool) -> list[str]:
    """The token strings standing for one image in the prompt, in the order of `tiles_with_global`:
    global_image_token + image_token x n, then per tile <row_i_col_j> + image_token x n (no tiles for 1x1
    when there is a global view)."""
    img = [extra["image_token"]] * n_tokens
    out: list[str] = []
    n_h, n_w = grid
    if with_global:
        out += [extra["global_image_token"], *img]
        if grid == (1, 1):
            return out
    for i in range(1, n_h + 1):
        for j in range(1, n_w + 1):
            out += [extra[f"r{i}c{j}"], *img]
    return out
