"""The interface every model adapter implements: build/load, collate, loss, generate, save."""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from vlm_grades.data.schema import Sample


class ModelAdapter(Protocol):
    architecture: str     # the component-registry key: "nanovlm" or "qwen2_5_vl"
    model: nn.Module      # the trainable torch module (PEFT-wrapped for LoRA)

    def preprocess(self, sample: Sample, train: bool) -> dict[str, Any]:
        """Per-sample work (image decode and resize, tokenization); runs in DataLoader workers."""

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad and stack preprocessed samples into a batch of tensors (plus non-tensor 'ids')."""

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over answer tokens only."""

    def generate(self, batch: dict[str, Any], max_new_tokens: int) -> list[str]:
        """Greedy decoding; returns the decoded answers, stripped."""

    def save(self, directory: str) -> None:
        """save_pretrained layout (weights + config + tokenizer/processor)."""

    def tokens_per_modality(self, batch: dict[str, Any]) -> dict[str, int]:
        """Rows each modality's matrices process for this batch (for FLOP accounting)."""
