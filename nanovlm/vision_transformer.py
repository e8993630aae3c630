"""SigLIP-style vision encoder: patch embedding + learned positions, pre-norm blocks, final LayerNorm.
No CLS token: the output is one vector per patch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanovlm.config import VLMConfig


class ViTPatchEmbeddings(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        D, p = cfg.vit_hidden_dim, cfg.vit_patch_size
        self.stem_kind = cfg.vit_stem
        if cfg.vit_stem == "patch":
            self.conv = nn.Conv2d(3, D, kernel_size=p, stride=p)
        else:
            # log2(p) stride-2 3x3 convs: 3 -> C -> 2C -> ... -> D, GELU between them
            n = p.bit_length() - 1
            widths = [3] + [cfg.vit_stem_channels * 2 ** i for i in range(n - 1)] + [D]
            layers: list[nn.Module] = []
            for i in range(n):
                layers.append(nn.Conv2d(widths[i], widths[i + 1], kernel_size=3, stride=2, padding=1))
                if i < n - 1:
                    layers.append(nn.GELU())
            self.stem = nn.Sequential(*layers)
        self.position_embedding = nn.Parameter(torch.empty(1, cfg.vit_n_patches, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x) if self.stem_kind == "patch" else self.stem(x)  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)                                  # (B, h*w, D)
        return x + self.position_embedding


class ViTMultiHeadAttention(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.n_heads = cfg.vit_n_heads
        self.dropout = cfg.vit_dropout
        D = cfg.vit_hidden_dim
        self.qkv_proj = nn.Linear(D, 3 * D, bias=True)
        self.out_proj = nn.Linear(D, D, bias=True)
        self.resid_dropout = nn.Dropout(cfg.vit_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv_proj(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.resid_dropout(self.out_proj(y))


class ViTMLP(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.vit_hidden_dim, cfg.vit_inter_dim)
        self.fc2 = nn.Linear(cfg.vit_inter_dim, cfg.vit_hidden_dim)
        self.dropout = nn.Dropout(cfg.vit_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


class ViTBlock(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.vit_hidden_dim, eps=cfg.vit_ln_eps)
        self.attn = ViTMultiHeadAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.vit_hidden_dim, eps=cfg.vit_ln_eps)
        self.mlp = ViTMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = ViTPatchEmbeddings(cfg)
        self.dropout = nn.Dropout(cfg.vit_dropout)
        self.blocks = nn.ModuleList([ViTBlock(cfg) for _ in range(cfg.vit_n_blocks)])
        self.layer_norm = nn.LayerNorm(cfg.vit_hidden_dim, eps=cfg.vit_ln_eps)
        self.apply(_init_weights)
        nn.init.normal_(self.patch_embedding.position_embedding, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, n_patches, D)"""
        x = self.dropout(self.patch_embedding(images))
        for block in self.blocks:
            x = block(x)
        return self.layer_norm(x)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        # fan-in scaled: with a fixed small std, a stack of convs shrinks the image signal below the
        # position embedding's and the model learns to ignore the image
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
