"""Adapter for the bundled nanoVLM: tokenizer, image preprocessing, collate, loss, generate, save."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from nanovlm.config import VLMConfig
from nanovlm.errors import CheckpointError
from nanovlm.vision_language_model import VisionLanguageModel
from vlm_grades.data.schema import Sample, load_image
from vlm_grades.errors import UserError, as_user_error
from vlm_grades.feature_cache.memory import FeatureCache, image_key
from vlm_grades.models.tokenizer_words import IMAGE, build_word_tokenizer

ADAPTER_FILE = "vlm_grades_adapter.json"
# SmolLM2's vocabulary has no free slot (49152 = the checkpoint's size); nanoVLM-style, one of its rarely
# used special tokens stands in for the image token.
SMOLLM2_IMAGE_TOKENS = ("<|image|>", "<filename>", "<gh_stars>", "<issue_start>")


@lru_cache(maxsize=16384)
def _image_uint8(path: str, size: int) -> np.ndarray:
    """Decoded, resized image as HxWx3 uint8; cached because VQA sets ask many questions per image."""
    return np.asarray(load_image(path).resize((size, size), resample=3))  # 3 = bicubic


def image_tensor(ref: Any, size: int) -> torch.Tensor:
    """(3, size, size) float in [-1, 1] (SigLIP normalization: mean 0.5, std 0.5)."""
    if isinstance(ref, (str, Path)):
        arr = _image_uint8(str(ref), size)
    else:
        arr = np.asarray(load_image(ref).resize((size, size), resample=3))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)


class NanoVLMAdapter:
    architecture = "nanovlm"

    def __init__(self, model: VisionLanguageModel, tokenizer: PreTrainedTokenizerBase, preset: str = "tiny",
                 max_length: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.preset = preset
        self.max_length = max_length
        self.cfg: VLMConfig = model.cfg
        self.feature_cache: FeatureCache | None = None   # set by the training loop or the eval runner
        # a random transform of the (3, H, W) pixels of training images; while set, features cannot be cached
        self.augment: Callable[[torch.Tensor], torch.Tensor] | None = None

    # construction -----------------------------------------------------------------------------
    @classmethod
    def create(cls, preset: str = "tiny", train_samples: Sequence[Sample] | None = None,
               tokenizer_path: str | None = None, lm_weights: str | None = None,
               vision_weights: str | None = None, **overrides) -> "NanoVLMAdapter":
        """A new model from a preset. `tiny` builds its word tokenizer from the training texts; the
        SmolLM2-based presets use the SmolLM2 tokenizer (and weights, when given or fetched)."""
        from nanovlm import weights

        if preset == "tiny":
            if not train_samples:
                raise UserError("--preset tiny: needs training samples to build its tokenizer")
            texts = [s.prompt for s in train_samples] + [t for s in train_samples for t in s.targets]
            tokenizer = build_word_tokenizer(texts)
            image_token = IMAGE
        else:
            with as_user_error(CheckpointError):
                source = tokenizer_path or lm_weights or str(weights.require_smollm2_cache())
            tokenizer = _load_tokenizer(source)
            image_token = next((t for t in SMOLLM2_IMAGE_TOKENS if t in tokenizer.get_vocab()), None)
            if image_token is None:
                raise UserError(f"{source}: tokenizer has none of {SMOLLM2_IMAGE_TOKENS} to use as image token")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokens = dict(image_token_id=tokenizer.convert_tokens_to_ids(image_token),
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        if preset == "tiny":
            tokens["lm_vocab_size"] = len(tokenizer)
        cfg = VLMConfig.preset(preset, **{**tokens, **overrides})
        model = VisionLanguageModel(cfg)
        with as_user_error(CheckpointError):
            if preset != "tiny":
                weights.load_smollm2(model.decoder, lm_weights or str(weights.smollm2_cache_dir()))
            if vision_weights:
                weights.load_siglip_vision(model.vision_encoder, vision_weights)
        return cls(model, tokenizer, preset)

    @classmethod
    def load(cls, path: str | Path) -> "NanoVLMAdapter":
        """A folder saved by vlm-grades, or a checkpoint in nanoVLM's own format (folder or hub id)."""
        from nanovlm.native_format import is_native_config
        from vlm_grades.models import nanovlm_native as native

        source, path = str(path), Path(path)   # the user's spelling: Path drops a leading "./"
        raw = native.read_config(path) if path.is_dir() else None
        if not path.exists() or is_native_config(raw):
            return native.NativeNanoVLMAdapter.load_native(source)
        if raw is None:
            raise UserError(f"{path}: not a nanoVLM checkpoint (no config.json)")
        with as_user_error(CheckpointError):
            model = VisionLanguageModel.from_pretrained(str(path))
        tokenizer = _load_tokenizer(str(path))
        meta = json.loads((path / ADAPTER_FILE).read_text()) if (path / ADAPTER_FILE).exists() else {}
        if (path / native.NATIVE_FILE).is_file():
            return native.NativeNanoVLMAdapter.load_saved(path, model, tokenizer, meta)
        return cls(model, tokenizer, meta.get("preset", "tiny"), meta.get("max_length", 256))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))
        (directory / ADAPTER_FILE).write_text(json.dumps(
            {"architecture": self.architecture, "preset": self.preset, "max_length": self.max_length}))

    # data -------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def preprocess(self, sample: Sample, train: bool) -> dict[str, Any]:
        prompt = [self.cfg.image_token_id] * self.cfg.mp_image_token_length + self._ids(sample.prompt)
        pixels = image_tensor(sample.image, self.cfg.vit_img_size)
        if train and self.augment is not None:
            pixels = self.augment(pixels)
        item = {"id": sample.id, "pixel_values": pixels,
                "image_key": image_key(sample.image, f"nanovlm:{self.cfg.vit_img_size}:bicubic:siglip")}
        if train:
            target = sample.meta.get("train_target", sample.targets[0])
            answer = self._ids(" " + target) + [self.cfg.eos_token_id]
            ids = (prompt + answer)[: self.max_length]
            item["input_ids"] = ids
            item["labels"] = ([-100] * len(prompt) + answer)[: self.max_length]
        else:
            item["input_ids"] = prompt[: self.max_length]
        return item

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Right padding for training (labels present), left padding for generation."""
        train = "labels" in items[0]
        width = max(len(it["input_ids"]) for it in items)
        pad = self.cfg.pad_token_id
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long) if train else None
        for row, it in enumerate(items):
            n = len(it["input_ids"])
            cols = slice(0, n) if train else slice(width - n, width)
            input_ids[row, cols] = torch.tensor(it["input_ids"])
            attention[row, cols] = 1
            if train:
                labels[row, cols] = torch.tensor(it["labels"])
        batch = {"ids": [it["id"] for it in items], "input_ids": input_ids, "attention_mask": attention,
                 "images": self.batch_images([it["pixel_values"] for it in items])}
        if all("image_key" in it for it in items):
            batch["image_keys"] = [it["image_key"] for it in items]
        if train:
            batch["labels"] = labels
        return batch

    def batch_images(self, pixel_values: list[torch.Tensor]) -> torch.Tensor:
        """One (3, H, W) image per sample -> (B, 3, H, W)."""
        return torch.stack(pixel_values)

    # compute ----------------------------------------------------------------------------------
    def feature_cache_blocker(self) -> str | None:
        """Why the projector output of an image may differ between two training steps with the vision encoder
        and projector frozen (so it must not be cached), or None."""
        if self.augment is not None:
            return "random image augmentation in preprocessing"
        if self.cfg.vit_dropout > 0:
            return f"vision encoder dropout {self.cfg.vit_dropout}"
        return None

    def _cached_features(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """(B, n, D) features from the feature cache (None: no cache, run the tower in the forward)."""
        if self.feature_cache is None or "image_keys" not in batch:
            return None
        model = getattr(self.model, "module", self.model)
        images = batch["images"]
        rows = {"vision": (self.cfg.vit_img_size // self.cfg.vit_patch_size) ** 2,
                "projector": self.cfg.mp_image_token_length}
        features = self.feature_cache.lookup(batch["image_keys"],
                                             lambda i: model.image_features(images[i:i + 1])[0],
                                             rows=[rows] * images.shape[0])
        return torch.stack(features)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        _, loss = self.model(batch["input_ids"], batch["images"], batch["attention_mask"], batch["labels"],
                             image_features=self._cached_features(batch))
        return loss

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], max_new_tokens: int = 16) -> list[str]:
        model = getattr(self.model, "module", self.model)
        out = model.generate(batch["input_ids"], batch["images"], batch["attention_mask"],
                             max_new_tokens=max_new_tokens, eos_token_id=self.cfg.eos_token_id,
                             image_features=self._cached_features(batch))
        texts = []
        for row in out.tolist():
            if self.cfg.eos_token_id in row:
                row = row[: row.index(self.cfg.eos_token_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    def tokens_per_modality(self, batch: dict[str, Any]) -> dict[str, int]:
        b = batch["images"].shape[0]
        patches = (self.cfg.vit_img_size // self.cfg.vit_patch_size) ** 2
        return {"vision": b * patches, "projector": b * self.cfg.mp_image_token_length,
                "language": int(batch["attention_mask"].sum())}


def _load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    try:
        return PreTrainedTokenizerFast.from_pretrained(source)
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad path from the user's side
        raise UserError(f"{source}: cannot load a tokenizer ({type(e).__name__}: {str(e).splitlines()[0]})") from None
