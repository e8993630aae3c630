"""Qwen2.5-VL with cached image features: the tower runs only on images the feature cache lacks, and the
language model gets the same inputs the model's own forward would build from the pixels.

The model's forward (transformers 5.x, Qwen2_5_VLModel.forward) embeds the input ids, scatters the image
features (merger output, one row per merged 2x2 patch group, images in batch order) into the positions of the
image token, and computes the multimodal rotary positions with `get_rope_index` from the input ids, the
grids and the token types. `spliced_inputs` does those three steps with features from the cache.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from vlm_grades.feature_cache.memory import FeatureCache


def image_features(hf: nn.Module, cache: FeatureCache, batch: dict[str, Any], device) -> list[torch.Tensor]:
    """Merger output per image of the batch, (tokens_i, D) each; only missing images go through the tower."""
    grid = batch["image_grid_thw"]
    sizes = grid.prod(-1).tolist()              # patch rows of pixel_values per image
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    pixels = batch["pixel_values"]

    def encode(i: int) -> torch.Tensor:
        out = hf.get_image_features(pixels[starts[i]:starts[i] + sizes[i]].to(device), grid[i:i + 1].to(device))
        features = getattr(out, "pooler_output", out)   # 5.x: an output object; older: a tuple or one tensor
        return features if torch.is_tensor(features) else features[0]

    rows = [{"vision": n, "projector": n} for n in sizes]
    return cache.lookup(batch["image_keys"], encode, rows=rows)


def spliced_inputs(hf: nn.Module, inputs: dict[str, torch.Tensor], features: list[torch.Tensor]) -> dict[str, Any]:
    """Model inputs with the image features in inputs_embeds and the 3D rotary position ids, no pixels."""
    ids = inputs["input_ids"]
    embeds = hf.get_input_embeddings()(ids)
    image_pos = (ids == hf.config.image_token_id).unsqueeze(-1)
    flat = torch.cat(features).to(embeds.device, embeds.dtype)
    if int(image_pos.sum()) != flat.shape[0]:
        raise ValueError(f"{int(image_pos.sum())} image tokens in the batch but {flat.shape[0]} feature rows")
    embeds = embeds.masked_scatter(image_pos, flat)
    return {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"],
            "position_ids": rope_positions(hf, inputs)}


def rope_positions(hf: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(3, B, L) position ids, from the model's own get_rope_index (its signature varies across releases)."""
    inner = getattr(hf, "model", hf)
    rope_index = getattr(inner, "get_rope_index", None) or hf.get_rope_index
    accepted = inspect.signature(rope_index).parameters
    kwargs = {k: inputs[k] for k in ("mm_token_type_ids", "image_grid_thw", "attention_mask")
              if k in accepted and k in inputs}
    positions, _ = rope_index(inputs["input_ids"], **kwargs)
    return positions


def encoder_outputs(features: list[torch.Tensor]) -> dict[str, Any]:
    """`mm_encoder_outputs` for generate(): the model's own path with the tower's output given."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return {"image": BaseModelOutputWithPooling(pooler_output=tuple(features))}
