"""LLaMA-style decoder (SmolLM2 shape): RMSNorm, rotary embeddings in the Hugging Face rotate_half
convention, grouped-query attention through scaled_dot_product_attention, SwiGLU MLP, tied head.

The KV cache is a list with one (k, v) pair per block, k/v of shape (B, n_kv_heads, T_past, head_dim).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanovlm.config import VLMConfig

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


def _sdpa_supports_gqa() -> bool:
    try:
        q = torch.zeros(1, 2, 1, 2)
        k = torch.zeros(1, 1, 1, 2)
        F.scaled_dot_product_attention(q, k, k, enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


_SDPA_HAS_GQA = _sdpa_supports_gqa()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin for explicit position ids; frequencies repeated as [f, f] (rotate_half convention).

    nanoVLM's linear rescaling: when a call's largest position + 1 (max_seq) exceeds lm_max_position_embeddings,
    every frequency is divided by max_seq / lm_max_position_embeddings for that call. Decoding with a KV cache
    rescales per step from the new token's position, as nanoVLM does."""

    def __init__(self, cfg: VLMConfig):
        super().__init__()
        head_dim = cfg.lm_hidden_dim // cfg.lm_n_heads
        inv_freq = 1.0 / (cfg.lm_re_base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.max_positions = cfg.lm_max_position_embeddings

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        max_seq = position_ids.max() + 1
        scale = torch.clamp(max_seq / self.max_positions, min=1.0)          # 1.0 divides exactly: no change
        inv_freq = self.inv_freq.float() / scale
        freqs = position_ids.float()[:, :, None] * inv_freq[None, None, :]                 # (B, T, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)                                             # (B, T, hd)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]                 # (B, 1, T, hd)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class LanguageModelGroupedQueryAttention(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.n_heads = cfg.lm_n_heads
        self.n_kv_heads = cfg.lm_n_kv_heads
        self.head_dim = cfg.lm_hidden_dim // cfg.lm_n_heads
        self.dropout = cfg.lm_dropout
        D = cfg.lm_hidden_dim
        self.q_proj = nn.Linear(D, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(D, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(D, self.n_kv_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, D, bias=False)
        self.resid_dropout = nn.Dropout(cfg.lm_dropout)

    def forward(self, x, cos, sin, mask, is_causal, past=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v)
        kw = {}
        if self.n_kv_heads != self.n_heads:
            if _SDPA_HAS_GQA:
                kw["enable_gqa"] = True
            else:
                rep = self.n_heads // self.n_kv_heads
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0, **kw,
        )
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.resid_dropout(self.out_proj(y)), present


class LanguageModelMLP(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        D, I = cfg.lm_hidden_dim, cfg.lm_inter_dim
        self.gate_proj = nn.Linear(D, I, bias=False)
        self.up_proj = nn.Linear(D, I, bias=False)
        self.down_proj = nn.Linear(I, D, bias=False)
        self.dropout = nn.Dropout(cfg.lm_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class LanguageModelBlock(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.lm_hidden_dim, cfg.lm_rms_eps)
        self.attn = LanguageModelGroupedQueryAttention(cfg)
        self.norm2 = RMSNorm(cfg.lm_hidden_dim, cfg.lm_rms_eps)
        self.mlp = LanguageModelMLP(cfg)

    def forward(self, x, cos, sin, mask, is_causal, past=None):
        a, present = self.attn(self.norm1(x), cos, sin, mask, is_causal, past)
        x = x + a
        return x + self.mlp(self.norm2(x)), present


def build_attention_mask(attention_mask: torch.Tensor | None, T: int, past: int, device: torch.device):
    """-> (mask, is_causal) for SDPA. attention_mask (B, past+T), 1 = real token, 0 = padding.

    A padded query still attends to itself so that its softmax row is never empty (no NaN); its output
    is never used."""
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded:
        if past == 0:
            return None, T > 1
        if T == 1:
            return None, False
    Tk = past + T
    q_pos = torch.arange(past, Tk, device=device)[:, None]
    k_pos = torch.arange(Tk, device=device)[None, :]
    mask = k_pos <= q_pos                                              # (T, Tk) causal
    if padded:
        real = attention_mask.bool()[:, None, None, :]                  # (B, 1, 1, Tk)
        mask = mask & (real | (k_pos == q_pos))                        # (B, 1, T, Tk)
    return mask, False


def position_ids_from_mask(attention_mask: torch.Tensor | None, B: int, T: int, past: int,
                           device: torch.device) -> torch.Tensor:
    """Positions count real tokens only (cumsum - 1), so left padding works; -> (B, T)."""
    if attention_mask is None:
        return torch.arange(past, past + T, device=device).expand(B, T)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)[:, past:past + T]


class LanguageModel(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.lm_vocab_size, cfg.lm_hidden_dim)
        self.rotary_embd = RotaryEmbedding(cfg)
        self.blocks = nn.ModuleList([LanguageModelBlock(cfg) for _ in range(cfg.lm_n_blocks)])
        self.norm = RMSNorm(cfg.lm_hidden_dim, cfg.lm_rms_eps)
        self.head = nn.Linear(cfg.lm_hidden_dim, cfg.lm_vocab_size, bias=False)
        self.apply(_init_weights)
        if cfg.lm_tie_weights:
            self.head.weight = self.token_embedding.weight

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        use_cache: bool = False,
        last_only: bool = False,
        return_hidden: bool = False,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """x: token ids (B, T) long, or input embeddings (B, T, D) float.
        attention_mask: (B, T_past + T), 1 = real, 0 = padding; None = no padding.
        position_ids: (B, T); default from the attention mask (cumsum - 1).
        -> (logits (B, T or 1, V), or final-norm hidden states if return_hidden; new KV cache or None)"""
        if x.dtype in (torch.long, torch.int, torch.int32):
            x = self.token_embedding(x)
        B, T, _ = x.shape
        past = kv_cache[0][0].shape[2] if kv_cache else 0
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past + T)}")
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, B, T, past, x.device)
        cos, sin = self.rotary_embd(position_ids, x.dtype)
        mask, is_causal = build_attention_mask(attention_mask, T, past, x.device)
        new_cache: KVCache | None = [] if use_cache else None
        for i, block in enumerate(self.blocks):
            x, present = block(x, cos, sin, mask, is_causal, kv_cache[i] if kv_cache else None)
            if use_cache:
                new_cache.append(present)
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        return (x if return_hidden else self.head(x)), new_cache


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
