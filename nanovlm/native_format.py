"""nanoVLM's own checkpoint format (huggingface/nanoVLM `save_pretrained`): a `config.json` holding its
VLMConfig fields (vit_*, lm_*, mp_*, extra tokens) and a `model.safetensors` written by safetensors'
`save_model`, so the names are nanoVLM's module paths, the rotary `inv_freq` buffer is stored and of the
tied head / token embedding only `decoder.head.weight` is kept.

Four pipelines share the weight names and differ in how images reach the prompt:
- "v0.1" (nanoVLM-222M): one square image, its embeddings prepended to the text ("Question: ... Answer:"),
  trained on f"{prompt}{answer}{eos}".
- "v0.2" (nanoVLM-450M, upstream tag v0.2, June 2025): one square image, `<|image|>` x mp_image_token_length
  then the text, no chat template, trained on f"{image tokens}{prompt}{answer}{eos}". Its configs have
  vlm_extra_tokens {"image_token": ...}, no lm_chat_template, and IMAGE_TOKEN_LENGTH / TOTAL_SEQUENCE_LENGTH
  (which only set nanoVLM's lm_max_length).
- "image-token" (main after v0.2, before the tiles): as v0.2, but the image tokens and the prompt form the
  first user message of lm_chat_template.
- "tiled" (main since mid 2025): the image is resized to multiples of vit_img_size (at most max_img_size),
  cut into tiles, each preceded by a `<row_i_col_j>` token; with `global_image_token`, a global view
  (the whole image at vit_img_size) comes first.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from nanovlm.config import VLMConfig, wrong_type
from nanovlm.errors import CheckpointError

# config fields that decide the weights' shapes or the forward pass
MODEL_FIELDS = {
    "vit_hidden_dim", "vit_inter_dim", "vit_patch_size", "vit_img_size", "vit_n_heads", "vit_dropout",
    "vit_n_blocks", "vit_ln_eps", "vit_cls_flag", "lm_hidden_dim", "lm_inter_dim", "lm_rms_eps", "lm_re_base",
    "lm_max_position_embeddings", "lm_vocab_size", "lm_n_heads", "lm_n_kv_heads", "lm_dropout", "lm_n_blocks",
    "lm_attn_scaling", "lm_use_tokens", "lm_tie_weights", "mp_pixel_shuffle_factor", "mp_image_token_length",
}
# fields that decide the prompt and the image preprocessing
PIPELINE_FIELDS = {
    "lm_tokenizer", "lm_chat_template", "lm_eos_token_id", "vlm_extra_tokens", "max_img_size",
    "resize_to_max_side_len", "lm_base_vocab_size", "extra_token_amount",
}
# fields only nanoVLM's own training reads (backbone sources, paths, its length budget): kept for export
TRAINING_FIELDS = {
    "vit_model_type", "lm_model_type", "lm_max_length", "vlm_load_backbone_weights", "vlm_checkpoint_path",
    "hf_repo_name", "IMAGE_TOKEN_LENGTH", "TOTAL_SEQUENCE_LENGTH",
}
KNOWN_FIELDS = MODEL_FIELDS | PIPELINE_FIELDS | TRAINING_FIELDS
ROTARY_BUFFER = "decoder.rotary_embd.inv_freq"
_TILE_KEY = re.compile(r"r[1-9]\d*c[1-9]\d*")

# the kind of JSON value each field this code reads must hold (nanovlm.config.EXPECTED); null stands for
# "absent" only where the field is optional
_POSITIVE_INTS = ("vit_hidden_dim", "vit_inter_dim", "vit_patch_size", "vit_img_size", "vit_n_heads", "vit_n_blocks",
                  "lm_hidden_dim", "lm_inter_dim", "lm_max_position_embeddings", "lm_vocab_size", "lm_n_heads",
                  "lm_n_kv_heads", "lm_n_blocks", "mp_pixel_shuffle_factor", "mp_image_token_length", "max_img_size")
FIELD_KINDS: dict[str, str] = {
    **{name: "int" for name in _POSITIVE_INTS},
    "lm_eos_token_id": "id", "lm_base_vocab_size": "id", "extra_token_amount": "id",
    **{name: "float" for name in ("vit_dropout", "vit_ln_eps", "lm_rms_eps", "lm_re_base", "lm_dropout",
                                  "lm_attn_scaling")},
    **{name: "bool" for name in ("vit_cls_flag", "lm_use_tokens", "lm_tie_weights", "resize_to_max_side_len")},
    "lm_tokenizer": "str", "lm_chat_template": "str", "vlm_extra_tokens": "tokens",
}
OPTIONAL_FIELDS = {"lm_eos_token_id", "lm_chat_template", "vlm_extra_tokens"}


def check_field_types(raw: dict, source: str) -> None:
    """CheckpointError "<source>: field <name> must be <kind>, got <value>" for the first mistyped field."""
    for name, kind in FIELD_KINDS.items():
        if name in raw and not (raw[name] is None and name in OPTIONAL_FIELDS):
            wrong = wrong_type(name, kind, raw[name])
            if wrong:
                raise CheckpointError(f"{source}: field {wrong}")


def is_native_config(raw: Any) -> bool:
    """nanoVLM writes its dataclass fields and no model_type; vlm-grades' own folders carry model_type."""
    return isinstance(raw, dict) and "model_type" not in raw and "vit_hidden_dim" in raw and "lm_hidden_dim" in raw


@dataclass
class NativePipeline:
    kind: str                                   # "v0.1" | "v0.2" | "image-token" | "tiled"
    tokenizer: str                              # lm_tokenizer: hub id or folder
    extra_tokens: dict[str, str] = field(default_factory=dict)
    chat_template: str | None = None
    eos_token_id: int | None = None             # v0.1 names its EOS id; the others use the tokenizer's
    max_img_size: int | None = None             # tiled only
    resize_to_max_side_len: bool = False
    global_view: bool = False                   # tiled with a global_image_token

    @property
    def image_token(self) -> str | None:
        return self.extra_tokens.get("image_token")


def translate_config(raw: dict, source: str = "config.json") -> tuple[VLMConfig, NativePipeline]:
    """nanoVLM config.json -> (the bundled model's VLMConfig, the pipeline). CheckpointError "<source>: ..."
    naming the first field this code cannot reproduce. Token ids are set later from the tokenizer."""
    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{source}: {msg}")

    unknown = sorted(set(raw) - KNOWN_FIELDS)
    if unknown:
        raise bad(f"field {unknown[0]} is not a nanoVLM field this code can reproduce")
    check_field_types(raw, source)
    for name in ("vit_hidden_dim", "vit_patch_size", "vit_img_size", "vit_n_heads", "vit_n_blocks", "lm_hidden_dim",
                 "lm_inter_dim", "lm_n_heads", "lm_n_kv_heads", "lm_n_blocks", "lm_vocab_size", "lm_tokenizer"):
        if name not in raw:
            raise bad(f"field {name} missing")
    if raw.get("vit_cls_flag", False):
        raise bad("vit_cls_flag true is not supported (the bundled ViT has no CLS token)")
    if float(raw.get("lm_attn_scaling", 1.0)) != 1.0:
        raise bad(f"lm_attn_scaling {raw['lm_attn_scaling']} is not supported (only 1.0)")
    if raw.get("lm_use_tokens", False):
        raise bad("lm_use_tokens true is not supported (a VLM decoder takes embeddings)")
    if not raw.get("lm_tie_weights", True):
        raise bad("lm_tie_weights false is not supported (nanoVLM checkpoints tie the head to the embedding)")
    hidden = raw["vit_hidden_dim"]
    try:
        cfg = VLMConfig(
            vit_img_size=raw["vit_img_size"], vit_patch_size=raw["vit_patch_size"], vit_stem="patch",
            vit_hidden_dim=hidden, vit_inter_dim=raw.get("vit_inter_dim", 4 * hidden), vit_n_heads=raw["vit_n_heads"],
            vit_n_blocks=raw["vit_n_blocks"], vit_ln_eps=raw.get("vit_ln_eps", 1e-6),
            vit_dropout=raw.get("vit_dropout", 0.0), mp_pixel_shuffle_factor=raw.get("mp_pixel_shuffle_factor", 2),
            lm_hidden_dim=raw["lm_hidden_dim"], lm_inter_dim=raw["lm_inter_dim"], lm_n_heads=raw["lm_n_heads"],
            lm_n_kv_heads=raw["lm_n_kv_heads"], lm_n_blocks=raw["lm_n_blocks"], lm_vocab_size=raw["lm_vocab_size"],
            lm_rms_eps=raw.get("lm_rms_eps", 1e-5), lm_re_base=float(raw.get("lm_re_base", 100000)),
            lm_max_position_embeddings=raw.get("lm_max_position_embeddings", 8192), lm_tie_weights=True,
            lm_dropout=raw.get("lm_dropout", 0.0),
        )
    except (TypeError, ValueError) as e:
        raise bad(str(e)) from None
    if "mp_image_token_length" in raw and raw["mp_image_token_length"] != cfg.mp_image_token_length:
        raise bad(f"mp_image_token_length {raw['mp_image_token_length']} differs from the "
                  f"{cfg.mp_image_token_length} image tokens the ViT and pixel shuffle produce")
    extra = raw.get("vlm_extra_tokens") or {}
    if not isinstance(extra, dict):
        raise bad("vlm_extra_tokens must be an object")
    if not extra:
        kind = "v0.1"
    elif "image_token" not in extra:
        raise bad("vlm_extra_tokens has no image_token")
    elif "max_img_size" in raw:
        kind = "tiled"
    else:
        kind = "image-token" if raw.get("lm_chat_template") else "v0.2"
    pipe = NativePipeline(kind=kind, tokenizer=str(raw["lm_tokenizer"]), extra_tokens=dict(extra),
                          chat_template=raw.get("lm_chat_template"), eos_token_id=raw.get("lm_eos_token_id"))
    if kind == "tiled" and not pipe.chat_template:
        raise bad("lm_chat_template missing (the tiled pipeline formats prompts with it)")
    for key in extra:   # a token this code would not place (nanoVLM had <|image_start|>/<|image_end|> once)
        tile_key = key == "global_image_token" or _TILE_KEY.fullmatch(key)
        if key != "image_token" and not (kind == "tiled" and tile_key):
            raise bad(f"vlm_extra_tokens {key} is not placed by the {kind} pipeline this code reproduces")
    if kind == "tiled":
        m, p = int(raw["max_img_size"]), cfg.vit_img_size
        if m < p or m % p:
            raise bad(f"max_img_size {m} is not a multiple of vit_img_size {p}")
        pipe.max_img_size = m
        pipe.resize_to_max_side_len = bool(raw.get("resize_to_max_side_len", False))
        pipe.global_view = "global_image_token" in extra
        n = m // p
        for i in range(1, n + 1):
            for j in range(1, n + 1):
                if f"r{i}c{j}" not in extra:
                    raise bad(f"vlm_extra_tokens has no r{i}c{j} although max_img_size allows {n}x{n} tiles")
    return cfg, pipe


def native_config_for(cfg: VLMConfig, tokenizer: str = "HuggingFaceTB/cosmo2-tokenizer") -> dict[str, Any]:
    """A v0.1-style config.json for a bundled model that was not loaded from nanoVLM's format (presets)."""
    if cfg.vit_stem != "patch":
        raise ValueError(f"the '{cfg.vit_stem}' ViT stem has no nanoVLM equivalent (only vit_stem 'patch')")
    return {
        "vit_hidden_dim": cfg.vit_hidden_dim, "vit_inter_dim": cfg.vit_inter_dim, "vit_patch_size": cfg.vit_patch_size,
        "vit_img_size": cfg.vit_img_size, "vit_n_heads": cfg.vit_n_heads, "vit_dropout": cfg.vit_dropout,
        "vit_n_blocks": cfg.vit_n_blocks, "vit_ln_eps": cfg.vit_ln_eps, "vit_cls_flag": False,
        "lm_hidden_dim": cfg.lm_hidden_dim, "lm_inter_dim": cfg.lm_inter_dim, "lm_rms_eps": cfg.lm_rms_eps,
        "lm_re_base": cfg.lm_re_base, "lm_max_position_embeddings": cfg.lm_max_position_embeddings,
        "lm_vocab_size": cfg.lm_vocab_size, "lm_n_heads": cfg.lm_n_heads, "lm_n_kv_heads": cfg.lm_n_kv_heads,
        "lm_dropout": cfg.lm_dropout, "lm_n_blocks": cfg.lm_n_blocks, "lm_attn_scaling": 1.0, "lm_use_tokens": False,
        "lm_tie_weights": True, "lm_tokenizer": tokenizer, "lm_eos_token_id": cfg.eos_token_id,
        "mp_pixel_shuffle_factor": cfg.mp_pixel_shuffle_factor,
    }


# ---------------------------------------------------------------------------------------------- names
def name_map(cfg: VLMConfig) -> dict[str, str]:
    """nanoVLM state-dict name -> bundled model state-dict name, every tensor but the rotary buffer.
    The module paths coincide; the map still lists each one, so a renamed tensor on either side fails."""
    m = {
        "vision_encoder.patch_embedding.conv.weight": "vision_encoder.patch_embedding.conv.weight",  # (D, 3, p, p)
        "vision_encoder.patch_embedding.conv.bias": "vision_encoder.patch_embedding.conv.bias",
        "vision_encoder.patch_embedding.position_embedding":                                          # (1, n, D)
            "vision_encoder.patch_embedding.position_embedding",
        "vision_encoder.layer_norm.weight": "vision_encoder.layer_norm.weight",
        "vision_encoder.layer_norm.bias": "vision_encoder.layer_norm.bias",
        "MP.proj.weight": "MP.proj.weight",                                                           # (lm D, s*s*D)
        "decoder.head.weight": "decoder.head.weight",          # tied: safetensors keeps this name, (V, lm D)
        "decoder.norm.weight": "decoder.norm.weight",
    }
    for i in range(cfg.vit_n_blocks):
        b = f"vision_encoder.blocks.{i}."
        for part in ("ln1", "ln2", "attn.qkv_proj", "attn.out_proj", "mlp.fc1", "mlp.fc2"):
            for kind in ("weight", "bias"):
                m[f"{b}{part}.{kind}"] = f"{b}{part}.{kind}"
    for i in range(cfg.lm_n_blocks):
        b = f"decoder.blocks.{i}."
        for part in ("norm1", "norm2", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            m[f"{b}{part}.weight"] = f"{b}{part}.weight"
    return m


TIED = ("decoder.head.weight", "decoder.token_embedding.weight")


def rotary_inv_freq(cfg: VLMConfig) -> torch.Tensor:
    """nanoVLM's persistent RotaryEmbedding buffer: 1 / base^(2i/head_dim), float32 (head_dim/2,)."""
    head_dim = cfg.lm_hidden_dim // cfg.lm_n_heads
    return 1.0 / (cfg.lm_re_base ** (torch.arange(0, head_dim, 2).float() / head_dim))


def to_bundled(state: dict[str, torch.Tensor], cfg: VLMConfig, source: str) -> dict[str, torch.Tensor]:
    """nanoVLM tensors -> bundled state dict (float32); every tensor used, every model tensor assigned."""
    names = name_map(cfg)
    state = dict(state)
    if "decoder.head.weight" not in state and "decoder.token_embedding.weight" in state:
        state["decoder.head.weight"] = state.pop("decoder.token_embedding.weight")  # saved by a different keeper
    elif "decoder.token_embedding.weight" in state:
        if not torch.equal(state["decoder.token_embedding.weight"], state["decoder.head.weight"]):
            raise CheckpointError(f"{source}: decoder.head.weight differs from decoder.token_embedding.weight "
                                  f"(untied weights are not supported)")
        del state["decoder.token_embedding.weight"]
    out: dict[str, torch.Tensor] = {}
    for theirs, ours in names.items():
        if theirs not in state:
            raise CheckpointError(f"{source}: tensor {theirs} missing (does config.json match the weights?)")
        out[ours] = state.pop(theirs).float()
    out["decoder.token_embedding.weight"] = out["decoder.head.weight"]
    inv = state.pop(ROTARY_BUFFER, None)
    if inv is not None and (inv.shape != rotary_inv_freq(cfg).shape
                            or not torch.allclose(inv.float(), rotary_inv_freq(cfg), rtol=1e-5)):
        raise CheckpointError(f"{source}: {ROTARY_BUFFER} does not match lm_re_base {cfg.lm_re_base} "
                              f"and the head size {cfg.lm_hidden_dim // cfg.lm_n_heads}")
    if state:
        raise CheckpointError(f"{source}: unused tensor {sorted(state)[0]} (does config.json match the weights?)")
    return out


def from_bundled(model_state: dict[str, torch.Tensor], cfg: VLMConfig,
                 dtypes: dict[str, torch.dtype] | None = None) -> dict[str, torch.Tensor]:
    """bundled state dict -> nanoVLM tensors, named and ordered as safetensors' save_model writes them.
    `dtypes` (nanoVLM name -> dtype) restores the dtypes of the loaded file; default float32."""
    dtypes = dtypes or {}
    out = {theirs: model_state[ours] for theirs, ours in name_map(cfg).items()}
    out[ROTARY_BUFFER] = rotary_inv_freq(cfg)
    return {k: out[k].detach().to(dtypes.get(k, torch.float32)).contiguous().cpu() for k in sorted(out)}

