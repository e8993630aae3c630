"""Pixel shuffle (s x s neighbouring patches -> one token of s*s*D) and one bias-free Linear to the LM width."""
from __future__ import annotations

import torch
from torch import nn

from nanovlm.config import VLMConfig


def pixel_shuffle(x: torch.Tensor, s: int) -> torch.Tensor:
    """(B, n, D) on a square h x w grid -> (B, n/s^2, s*s*D), nanoVLM's element order."""
    B, n, D = x.shape
    h = w = int(round(n ** 0.5))
    if h * w != n or h % s:
        raise ValueError(f"pixel shuffle needs a square patch grid divisible by {s}, got {n} patches")
    x = x.reshape(B, h // s, s, w // s, s, D)   # (B, h/s, s, w/s, s, D)
    x = x.permute(0, 1, 3, 2, 4, 5)              # (B, h/s, w/s, s, s, D)
    return x.reshape(B, (h // s) * (w // s), s * s * D)


class ModalityProjector(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.scale_factor = cfg.mp_pixel_shuffle_factor
        self.input_dim = cfg.vit_hidden_dim * self.scale_factor ** 2
        self.proj = nn.Linear(self.input_dim, cfg.lm_hidden_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_patches, vit D) -> (B, mp_image_token_length, lm D)"""
        return self.proj(pixel_shuffle(x, self.scale_factor))
