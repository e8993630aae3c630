"""nanoVLM: ViT -> pixel-shuffle projector -> image embeddings spliced into the LLaMA-style decoder."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nanovlm.config import VLMConfig
from nanovlm.errors import CheckpointError
from nanovlm.language_model import LanguageModel
from nanovlm.modality_projector import ModalityProjector
from nanovlm.vision_transformer import ViT
from nanovlm.weights import check_state_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "nanovlm"


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_encoder = ViT(cfg)
        self.MP = ModalityProjector(cfg)
        self.decoder = LanguageModel(cfg)

    # ------------------------------------------------------------------ embedding
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image features: images (B, 3, H, W) -> (B, mp_image_token_length, lm D)"""
        return self.MP(self.vision_encoder(images.to(self.MP.proj.weight.dtype)))

    def embed(self, input_ids: torch.Tensor, images: torch.Tensor | None,
              attention_mask: torch.Tensor | None = None, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the image-token positions replaced by projected image features, in
        row-major order: with B images row b gets image b; with more (tiles), each run of
        mp_image_token_length image tokens takes the next image. image_features (N, n, lm D), when given,
        stand in for the vision encoder and projector (features computed earlier for these images).
        images (N, 3, H, W) -> (B, T, lm D)"""
        embeds = self.decoder.token_embedding(input_ids)                       # (B, T, D)
        image_pos = input_ids == self.cfg.image_token_id
        if attention_mask is not None:
            image_pos = image_pos & attention_mask.bool()
        n = self.cfg.mp_image_token_length
        counts = image_pos.sum(1).tolist()
        B = input_ids.shape[0]
        if images is None:
            if any(counts):
                raise ValueError(f"input_ids hold image tokens (id {self.cfg.image_token_id}) but no images were given")
            return embeds
        if images.shape[0] == B:
            bad = [(i, c) for i, c in enumerate(counts) if c != n]
            if bad:
                i, c = bad[0]
                raise ValueError(
                    f"row {i} of input_ids holds {c} image tokens (id {self.cfg.image_token_id}); every row needs "
                    f"exactly {n} (mp_image_token_length)"
                )
        elif sum(counts) != images.shape[0] * n or any(c % n for c in counts):
            # several images (tiles) per row: each row holds n tokens per image, images in row order
            raise ValueError(
                f"input_ids hold {sum(counts)} image tokens (id {self.cfg.image_token_id}) in rows of {counts} for "
                f"{images.shape[0]} images; every image needs exactly {n} (mp_image_token_length)"
            )
        feats = self.image_features(images) if image_features is None else image_features   # (B, n, D)
        return embeds.masked_scatter(image_pos.unsqueeze(-1), feats.to(embeds.dtype))

    # ------------------------------------------------------------------ training
    def forward(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids (B, T) long, images (B, 3, H, W), attention_mask (B, T) 1 = real / 0 = pad,
        labels (B, T) aligned with input_ids (-100 = ignored; shifted here).
        -> (logits (B, T, V), mean next-token loss over the labelled tokens, or None)"""
        x = self.embed(input_ids, images, attention_mask, image_features)
        logits, _ = self.decoder(x, attention_mask)
        loss = None
        if labels is not None:
            loss = next_token_loss(logits, labels, attention_mask)
        return logits, loss

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 16,
        eos_token_id: int | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Greedy decoding with a KV cache; batches must be LEFT padded. eos_token_id None uses
        cfg.eos_token_id. Stops once every row has produced EOS; rows that finished earlier are filled
        with EOS. -> (B, n_new) long, n_new <= max_new_tokens"""
        eos = self.cfg.eos_token_id if eos_token_id is None else eos_token_id
        B = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.long()
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generate needs LEFT-padded batches: the last position of every row must be real")
        if max_new_tokens <= 0:
            return input_ids.new_zeros(B, 0)
        was_training = self.training
        self.eval()
        try:
            x = self.embed(input_ids, images, attention_mask, image_features)
            logits, cache = self.decoder(x, attention_mask, use_cache=True, last_only=True)
            next_pos = attention_mask.sum(1, keepdim=True) - 1                 # position of the last real token
            finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
            out = []
            for step in range(max_new_tokens):
                tok = logits[:, -1].argmax(-1)
                tok = torch.where(finished, torch.full_like(tok, eos), tok)
                out.append(tok)
                finished |= tok == eos
                if step == max_new_tokens - 1 or bool(finished.all()):
                    break
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
                next_pos = next_pos + 1
                logits, cache = self.decoder(tok[:, None], attention_mask, position_ids=next_pos,
                                             kv_cache=cache, use_cache=True)
            return torch.stack(out, dim=1)
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / CONFIG_NAME, "w") as f:
            json.dump({"model_type": MODEL_TYPE, **self.cfg.to_dict()}, f, indent=2)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()
                 if not (self.cfg.lm_tie_weights and k == "decoder.head.weight")}
        save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt", "model_type": MODEL_TYPE})

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None) -> "VisionLanguageModel":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        d = Path(directory)
        cfg_path, w_path = d / CONFIG_NAME, d / WEIGHTS_NAME
        if not cfg_path.is_file():
            raise CheckpointError(f"{cfg_path}: no nanoVLM config (expected a folder written by save_pretrained)")
        try:
            raw = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{cfg_path}: cannot read JSON ({e})") from None
        if not isinstance(raw, dict) or raw.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            kind = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
            raise CheckpointError(f"{cfg_path}: not a nanoVLM config (model_type {kind!r})")
        try:
            cfg = VLMConfig.from_dict(raw)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{cfg_path}: {e}") from None
        if not w_path.is_file():
            raise CheckpointError(f"{w_path}: weights file missing")
        try:
            state = load_file(str(w_path))
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"{w_path}: cannot read safetensors ({e})") from None
        model = cls(cfg)
        check_state_dict(model, state, str(w_path), optional={"decoder.head.weight"} if cfg.lm_tie_weights else set())
        model.load_state_dict(state, strict=False)
        if device is not None:
            model.to(device)
        return model


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean cross-entropy of position t predicting labels[t+1]; -100 and padded positions are ignored.
    A batch with no labelled token gives 0 (not NaN)."""
    labels = labels.long()
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask == 0, -100)
    logits = logits[:, :-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    target = labels[:, 1:]
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                            ignore_index=-100, reduction="sum")
    return total / (target != -100).sum().clamp(min=1)
