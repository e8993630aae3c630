"""One dataclass for the whole nanoVLM: vision encoder, modality projector, language model, tokens.

Defaults are the `tiny` preset (trains in minutes on 2 CPU cores). `VLMConfig.preset(name)` gives
"tiny", "smol" (SmolLM2-135M language model + small ViT) and "222m" (SigLIP-B/16-224 + SmolLM2-135M).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class VLMConfig:
    # vision encoder
    vit_img_size: int = 64
    vit_patch_size: int = 8
    vit_stem: str = "conv"          # "patch": one Conv2d kernel=stride=patch (SigLIP); "conv": stride-2 3x3 convs
    vit_stem_channels: int = 32     # first conv stem width, doubled per conv; the last conv gives vit_hidden_dim
    vit_hidden_dim: int = 128
    vit_inter_dim: int = 512
    vit_n_heads: int = 4
    vit_n_blocks: int = 2
    vit_ln_eps: float = 1e-6
    vit_dropout: float = 0.0

    # modality projector
    mp_pixel_shuffle_factor: int = 2

    # language model
    lm_hidden_dim: int = 128
    lm_inter_dim: int = 384
    lm_n_heads: int = 4
    lm_n_kv_heads: int = 2
    lm_n_blocks: int = 3
    lm_vocab_size: int = 256
    lm_rms_eps: float = 1e-5
    lm_re_base: float = 100000.0
    lm_max_position_embeddings: int = 512
    lm_tie_weights: bool = True
    lm_dropout: float = 0.0

    # tokens (the adapter sets these from its tokenizer)
    image_token_id: int = 0
    pad_token_id: int = 0
    eos_token_id: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"VLMConfig: {msg}")

        for f in dataclasses.fields(self):     # types first: the checks below fail obscurely on a string
            kind = "id" if f.name.endswith("_token_id") else f.type
            wrong = wrong_type(f.name, kind, getattr(self, f.name)) if kind in EXPECTED else None
            need(wrong is None, wrong or "")
        need(self.vit_stem in ("patch", "conv"), f"vit_stem must be 'patch' or 'conv', got {self.vit_stem!r}")
        need(self.vit_patch_size >= 1 and self.vit_img_size % self.vit_patch_size == 0,
             f"vit_img_size {self.vit_img_size} is not a multiple of vit_patch_size {self.vit_patch_size}")
        if self.vit_stem == "conv":
            p = self.vit_patch_size
            need(p >= 2 and p & (p - 1) == 0, f"the conv stem needs a power-of-two vit_patch_size >= 2, got {p}")
        need(self.vit_hidden_dim % self.vit_n_heads == 0,
             f"vit_hidden_dim {self.vit_hidden_dim} is not divisible by vit_n_heads {self.vit_n_heads}")
        grid = self.vit_img_size // self.vit_patch_size
        s = self.mp_pixel_shuffle_factor
        need(s >= 1 and grid % s == 0, f"patch grid {grid}x{grid} is not divisible by mp_pixel_shuffle_factor {s}")
        need(self.lm_hidden_dim % self.lm_n_heads == 0,
             f"lm_hidden_dim {self.lm_hidden_dim} is not divisible by lm_n_heads {self.lm_n_heads}")
        need((self.lm_hidden_dim // self.lm_n_heads) % 2 == 0, "the language model head size must be even (rotary)")
        need(self.lm_n_heads % self.lm_n_kv_heads == 0,
             f"lm_n_heads {self.lm_n_heads} is not a multiple of lm_n_kv_heads {self.lm_n_kv_heads}")
        for name in ("image_token_id", "pad_token_id", "eos_token_id"):
            v = getattr(self, name)
            need(0 <= v < self.lm_vocab_size, f"{name} {v} is outside the vocabulary (size {self.lm_vocab_size})")

    @property
    def vit_n_patches(self) -> int:
        return (self.vit_img_size // self.vit_patch_size) ** 2

    @property
    def mp_image_token_length(self) -> int:
        return self.vit_n_patches // self.mp_pixel_shuffle_factor ** 2

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "VLMConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown nanoVLM preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VLMConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k != "model_type"}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown nanoVLM config keys: {', '.join(unknown)}")
        return cls(**d)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# JSON value kinds of config fields: what each must be, and the test
EXPECTED = {"int": "a positive integer", "id": "an integer >= 0", "float": "a number", "bool": "true or false",
            "str": "a string", "tokens": "an object of strings"}
_HAS_KIND = {
    "int": lambda v: _is_int(v) and v >= 1,
    "id": lambda v: _is_int(v) and v >= 0,
    "float": lambda v: _is_int(v) or isinstance(v, float),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "tokens": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
}


def wrong_type(name: str, kind: str, value: Any) -> str | None:
    """"<name> must be <what kind asks>, got <value as JSON>" when `value` is not of `kind`, else None."""
    if _HAS_KIND[kind](value):
        return None
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):
        shown = repr(value)
    return f"{name} must be {EXPECTED[kind]}, got {shown}"


_SMOLLM2_135M = dict(
    lm_hidden_dim=576, lm_inter_dim=1536, lm_n_heads=9, lm_n_kv_heads=3, lm_n_blocks=30,
    lm_vocab_size=49152, lm_rms_eps=1e-5, lm_re_base=100000.0, lm_max_position_embeddings=8192,
    lm_tie_weights=True,
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    # tiny's conv-stem ViT at width 192 in front of SmolLM2-135M (16 image tokens)
    "smol": dict(vit_hidden_dim=192, vit_inter_dim=768, vit_n_heads=3, **_SMOLLM2_135M),
    # nanoVLM-222M: SigLIP-B/16-224 + SmolLM2-135M, 49 image tokens; 222,081,600 parameters
    "222m": dict(
        vit_img_size=224, vit_patch_size=16, vit_stem="patch", vit_hidden_dim=768, vit_inter_dim=3072,
        vit_n_heads=12, vit_n_blocks=12, vit_ln_eps=1e-6, mp_pixel_shuffle_factor=2, **_SMOLLM2_135M,
    ),
}
