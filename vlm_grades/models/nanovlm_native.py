"""nanoVLM checkpoints in nanoVLM's own format (config.json of VLMConfig fields + model.safetensors): load
them into the bundled model with their pipeline's prompt and image preprocessing, save them in vlm-grades'
folder format (plus what export needs), and export back to nanoVLM's format."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from nanovlm import native_format as nf
from nanovlm.errors import CheckpointError
from nanovlm.tiling import image_token_layout, tiled_size, tiles_with_global
from nanovlm.vision_language_model import VisionLanguageModel
from nanovlm.weights import check_state_dict
from vlm_grades.data.schema import Sample, load_image
from vlm_grades.errors import UserError, as_user_error
from vlm_grades.models.hub import hub_id
from vlm_grades.models.nanovlm import SMOLLM2_IMAGE_TOKENS, NanoVLMAdapter
from vlm_grades.models.tokenizer_loading import hub_unreachable, load_checkpoint_tokenizer

NATIVE_FILE = "nanovlm_native.json"     # beside vlm-grades' own save: the original config, dtypes, header
CONFIG, WEIGHTS = "config.json", "model.safetensors"
_BILINEAR, _BICUBIC = 2, 3               # PIL resample codes (torchvision's Resize defaults / DynamicResize)


def read_config(path: Path) -> dict | None:
    """The parsed config.json of a folder, or None when there is none."""
    f = path / CONFIG
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError as e:
        raise UserError(f"{f}: not valid JSON ({e})") from None


def resolve(source: str) -> Path:
    """A local folder as is; an `owner/name` hub id downloads config.json and model.safetensors only."""
    p = Path(source).expanduser()
    if p.exists():
        return p
    hub_id(source)
    why = hub_unreachable(source)
    if why:   # hf_hub_download would retry each file for about 20 s before giving up
        raise UserError(f"--model-path: {source}: not a local folder, and the Hugging Face hub cannot serve it ({why})")
    try:
        from huggingface_hub import hf_hub_download

        files = [hf_hub_download(repo_id=source, filename=name) for name in (CONFIG, WEIGHTS)]
    except Exception as e:  # offline, unknown id, gated repo ...
        raise UserError(f"--model-path: {source}: not a local folder, and fetching it from the Hugging Face hub "
                        f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return Path(files[0]).parent


def load_nanovlm(source: str | Path) -> NanoVLMAdapter:
    """Any nanoVLM folder: one vlm-grades saved (from a preset or from a nanoVLM checkpoint), or a
    checkpoint in nanoVLM's own format (folder or hub id)."""
    path = Path(source)   # str(source) keeps the user's spelling for messages: Path drops a leading "./"
    raw = read_config(path) if path.is_dir() else None
    if not path.exists() or nf.is_native_config(raw):
        return NativeNanoVLMAdapter.load_native(str(source))
    if (path / NATIVE_FILE).is_file():
        return NativeNanoVLMAdapter.load_saved(path, *NanoVLMAdapter.load_parts(path))
    return NanoVLMAdapter.load(path)


def _tokenizer(folder: Path, pipe: nf.NativePipeline) -> PreTrainedTokenizerBase:
    """The checkpoint folder's own tokenizer files, else lm_tokenizer (a folder, the Hugging Face cache, or
    the hub when it answers), with the pipeline's extra tokens added in nanoVLM's order."""
    tok = load_checkpoint_tokenizer(folder, pipe.tokenizer, str(folder / CONFIG))
    missing = [t for t in pipe.extra_tokens.values() if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    if tok.eos_token is None:
        raise UserError(f"{pipe.tokenizer}: the tokenizer has no EOS token")
    tok.pad_token = tok.eos_token
    return tok


def _ids_for(tok: PreTrainedTokenizerBase, cfg, pipe: nf.NativePipeline, source: str) -> dict[str, int]:
    if len(tok) > cfg.lm_vocab_size:
        raise UserError(f"{source}: the tokenizer with the extra tokens has {len(tok)} tokens, more than "
                        f"lm_vocab_size {cfg.lm_vocab_size}")
    if pipe.kind == "v0.1":
        # image embeddings are prepended without a token of their own; a rare special token holds their place
        image = next((t for t in SMOLLM2_IMAGE_TOKENS if t in tok.get_vocab()), None)
        if image is None:
            raise UserError(f"{pipe.tokenizer}: the tokenizer has none of {SMOLLM2_IMAGE_TOKENS} to hold the "
                            f"image embeddings' place")
        image_id = tok.convert_tokens_to_ids(image)
        eos = tok.eos_token_id if pipe.eos_token_id is None else int(pipe.eos_token_id)
    else:
        image_id, eos = tok.convert_tokens_to_ids(pipe.image_token), tok.eos_token_id
    return dict(image_token_id=image_id, eos_token_id=eos, pad_token_id=tok.pad_token_id)


class NativeNanoVLMAdapter(NanoVLMAdapter):
    """The bundled nanoVLM running a nanoVLM checkpoint's pipeline."""

    def __init__(self, model: VisionLanguageModel, tokenizer: PreTrainedTokenizerBase, pipe: nf.NativePipeline,
                 native: dict[str, Any], max_length: int | None = None):
        cfg = model.cfg
        n_images = 1
        if pipe.kind == "tiled":
            n_images = (pipe.max_img_size // cfg.vit_img_size) ** 2 + int(pipe.global_view)
        super().__init__(model, tokenizer, "native", max_length or n_images * (cfg.mp_image_token_length + 1) + 256)
        self.pipe = pipe
        self.native = native   # {"config": nanoVLM's config.json, "dtypes": {name: dtype}, "metadata": header}

    # construction -----------------------------------------------------------------------------
    @classmethod
    def load_native(cls, source: str | Path) -> "NativeNanoVLMAdapter":
        from safetensors import SafetensorError, safe_open

        folder = resolve(str(source))
        raw = read_config(folder)
        if raw is None:
            raise UserError(f"{folder / CONFIG}: missing (a nanoVLM checkpoint has config.json and {WEIGHTS})")
        weights = folder / WEIGHTS
        if not weights.is_file():
            raise UserError(f"{weights}: missing")
        try:
            cfg, pipe = nf.translate_config(raw, str(folder / CONFIG))
        except ValueError as e:
            raise UserError(str(e)) from None
        tok = _tokenizer(folder, pipe)
        cfg = type(cfg)(**{**cfg.to_dict(), **_ids_for(tok, cfg, pipe, str(folder / CONFIG))})
        try:
            with safe_open(str(weights), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
                metadata = f.metadata()
        except (OSError, SafetensorError) as e:
            raise UserError(f"{weights}: cannot read safetensors ({e})") from None
        model = VisionLanguageModel(cfg)
        try:
            mapped = nf.to_bundled(state, cfg, str(weights))
        except ValueError as e:
            raise UserError(str(e)) from None
        with as_user_error(CheckpointError):
            check_state_dict(model, mapped, str(weights))
        model.load_state_dict(mapped, strict=True)
        native = {"config": raw, "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()},
                  "metadata": metadata}
        return cls(model, tok, pipe, native)

    @classmethod
    def load_saved(cls, path: Path, model: VisionLanguageModel, tokenizer, meta: dict) -> "NativeNanoVLMAdapter":
        """A vlm-grades folder written by `save` from a native checkpoint."""
        native = json.loads((path / NATIVE_FILE).read_text())
        _, pipe = nf.translate_config(native["config"], str(path / NATIVE_FILE))
        return cls(model, tokenizer, pipe, native, meta.get("max_length"))

    def save(self, directory: str | Path) -> None:
        super().save(directory)
        (Path(directory) / NATIVE_FILE).write_text(json.dumps(self.native, indent=2))

    # data -------------------------------------------------------------------------------------
    def image_tensors(self, ref: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """(N, 3, s, s) in [0, 1] (nanoVLM's ToTensor, no normalization) and the tile grid."""
        img = load_image(ref)
        s = self.cfg.vit_img_size
        if self.pipe.kind != "tiled":
            return _to_tensor(img.resize((s, s), resample=_BILINEAR))[None], (1, 1)
        h, w = tiled_size(img.height, img.width, s, self.pipe.max_img_size, self.pipe.resize_to_max_side_len)
        return tiles_with_global(_to_tensor(img.resize((w, h), resample=_BICUBIC)), s, self.pipe.global_view)

    def prompt_ids(self, prompt: str, grid: tuple[int, int]) -> list[int]:
        n = self.cfg.mp_image_token_length
        if self.pipe.kind in ("v0.1", "v0.2"):
            return [self.cfg.image_token_id] * n + self._ids(prompt)
        if self.pipe.kind == "tiled":
            layout = image_token_layout(grid, n, self.pipe.extra_tokens, self.pipe.global_view)
        else:
            layout = [self.pipe.image_token] * n
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "".join(layout) + prompt}], chat_template=self.pipe.chat_template,
            tokenize=False, add_generation_prompt=True)
        return self._ids(text)

    def preprocess(self, sample: Sample, train: bool) -> dict[str, Any]:
        pixels, grid = self.image_tensors(sample.image)
        prompt = self.prompt_ids(sample.prompt, grid)
        if len(prompt) >= self.max_length:
            raise UserError(f"sample {sample.id}: its prompt has {len(prompt)} tokens, max_length is {self.max_length}")
        item = {"id": sample.id, "pixel_values": pixels, "input_ids": prompt}
        if train:
            target = sample.meta.get("train_target", sample.targets[0])
            if self.pipe.kind in ("v0.1", "v0.2"):
                # nanoVLM's collator tokenizes f"{prompt}{answer}{eos}" as one text (no space before the
                # answer: "Answer:red") and trains on the tokens past the prompt's own token count
                images = prompt[: self.cfg.mp_image_token_length]
                n_prompt = len(prompt) - len(images)
                text = self._ids(sample.prompt + target) + [self.cfg.eos_token_id]
                prompt, answer = images + text[:n_prompt], text[n_prompt:]
            else:
                answer = self._ids(target) + [self.cfg.eos_token_id]   # the chat template ends with a newline
            item["input_ids"] = (prompt + answer)[: self.max_length]
            item["labels"] = ([-100] * len(prompt) + answer)[: self.max_length]
        return item

    def batch_images(self, pixel_values: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(pixel_values)   # every sample's tiles, in sample order

    def feature_cache_blocker(self) -> str | None:
        return "a nanoVLM-format checkpoint (its images are not keyed for the cache yet)"

    # export -----------------------------------------------------------------------------------
    def native_tensors(self) -> dict[str, torch.Tensor]:
        dtypes = {k: getattr(torch, v) for k, v in self.native["dtypes"].items()}
        return nf.from_bundled(getattr(self.model, "module", self.model).state_dict(), self.cfg, dtypes)


def _to_tensor(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)


def export_nanovlm(adapter: NanoVLMAdapter, out: Path) -> None:
    """config.json + model.safetensors as nanoVLM's save_pretrained writes them. A model loaded from a
    nanoVLM checkpoint gets its config and tensor dtypes back; a preset model a v0.1 config."""
    from safetensors.torch import save_file

    if isinstance(adapter, NativeNanoVLMAdapter):
        config, tensors, metadata = adapter.native["config"], adapter.native_tensors(), adapter.native["metadata"]
    else:
        try:
            config = nf.native_config_for(adapter.cfg, tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct")
        except ValueError as e:
            raise UserError(f"--format nanovlm: {e}") from None
        tensors = nf.from_bundled(adapter.model.state_dict(), adapter.cfg)
        metadata = {"decoder.token_embedding.weight": "decoder.head.weight"}   # what save_model records
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(json.dumps(config, indent=4))
    save_file(tensors, str(out / WEIGHTS), metadata=metadata)
