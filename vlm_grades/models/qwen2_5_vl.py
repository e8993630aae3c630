"""Qwen2.5-VL adapter over the transformers classes (Qwen2_5_VLForConditionalGeneration + its processor).

Works with the transformers 5.x / 4.52+ module layout (`model.visual`, `model.language_model`, `lm_head`) and
the older one (`visual`, `model.layers`). Modalities: vision = `visual` except `visual.merger`,
projector = `visual.merger`, language = everything else (embeddings, decoder layers, final norm, lm_head).

Sequence layout for one sample (the chat template of the checkpoint):
    <prompt: system turn, user turn with <|vision_start|><|image_pad|>*N<|vision_end|> + text, "assistant\\n">
    <answer tokens> <|im_end|> <template tail, e.g. "\\n">
Labels keep only the answer tokens and the closing <|im_end|>; everything else is -100.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlm_grades.data.schema import Sample, load_image
from vlm_grades.errors import UserError
from vlm_grades.feature_cache.memory import FeatureCache, image_key
from vlm_grades.models.hub import hub_id
from vlm_grades.models.lora import LoraSettings, apply_lora, load_lora

log = logging.getLogger("vlm_grades.models")

ARCHITECTURE = "qwen2_5_vl"
META_FILE = "vlm_grades_model.json"       # written by save(): base model, LoRA settings, pixel budget
IGNORE = -100

# LoRA targets, re.fullmatch over the unwrapped model's module names (5.x / 4.52+ and the older layout).
LORA_PATTERNS = {
    "language": r"(?:.*\.)?(?:language_model\.|model\.)layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)",
    "vision": r"(?:.*\.)?visual\.blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:gate|up|down)_proj)",
    "projector": r"(?:.*\.)?visual\.merger\.mlp\.(?:0|2)",
}
# modules trained fully beside LoRA adapters (PEFT modules_to_save names): the projector with its norm
WHOLE_MODULES = {"projector": ("merger",)}
_PROJECTOR = re.compile(r"(?:^|\.)visual\.merger\.")
_VISION = re.compile(r"(?:^|\.)visual\.")
_SEQ_KEYS = {"input_ids": None, "attention_mask": 0, "labels": IGNORE, "mm_token_type_ids": 0}  # None: pad id
_MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def modality_of(parameter_name: str) -> str:
    """vision | projector | language for a parameter (or module) name of the model, PEFT-wrapped or not."""
    if _PROJECTOR.search(parameter_name):
        return "projector"
    if _VISION.search(parameter_name):
        return "vision"
    return "language"


@dataclass
class Qwen25VLAdapter:
    model: nn.Module                  # Qwen2_5_VLForConditionalGeneration, or a PeftModel around it
    processor: Any                    # Qwen2_5_VLProcessor
    base_model_path: str              # what was loaded (local folder made absolute, or hub id)
    lora: Optional[LoraSettings] = None
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16384 * 28 * 28
    max_length: Optional[int] = 2048
    architecture: str = field(default=ARCHITECTURE, init=False)
    feature_cache: Optional[FeatureCache] = field(default=None, init=False)   # set by the training loop / eval

    def __post_init__(self):
        tok = self.processor.tokenizer
        self.im_end_id = tok.convert_tokens_to_ids("<|im_end|>")
        if self.im_end_id is None or self.im_end_id == tok.unk_token_id:
            raise UserError(f"{self.base_model_path}: tokenizer has no <|im_end|> token (not a Qwen chat tokenizer)")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.im_end_id
        self.patch_size = int(getattr(self.processor.image_processor, "patch_size", 14))
        hf = self.hf_model()
        self._logits_to_keep = "logits_to_keep" in inspect.signature(hf.forward).parameters
        self._mm_encoder_outputs = "mm_encoder_outputs" in inspect.signature(hf.forward).parameters
        # everything that changes an image's pixels before the tower: part of its feature-cache key
        settings = json.dumps([self.processor.image_processor.to_dict(), self.min_pixels, self.max_pixels],
                              sort_keys=True, default=str)
        self._pixel_settings = "qwen2_5_vl:" + hashlib.sha1(settings.encode()).hexdigest()[:16]

    def hf_model(self) -> nn.Module:
        """The Qwen2_5_VLForConditionalGeneration inside any DDP/DataParallel and PEFT wrapping."""
        m = self.unwrapped()
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    def unwrapped(self) -> nn.Module:
        """self.model without DDP/DataParallel wrappers (the training loop may have put one around it)."""
        m = self.model
        while isinstance(m, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            m = m.module
        return m

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, model_path: str, *, lora: Optional[LoraSettings] = None, freeze: Sequence[str] = (),
             min_pixels: Optional[int] = None, max_pixels: Optional[int] = None, dtype: Any = "float32",
             max_length: Optional[int] = 2048, attn_implementation: Optional[str] = None,
             gradient_checkpointing: bool = False, processor_path: Optional[str] = None) -> "Qwen25VLAdapter":
        """Load a Qwen2.5-VL checkpoint (local folder or hub id), optionally wrap it in LoRA and freeze modalities.

        min_pixels/max_pixels default to the checkpoint's image processor settings; dtype is a torch dtype or
        one of float32, bfloat16, float16, auto. processor_path: load the processor from another folder.
        """
        model_path = str(model_path)
        source = _resolve_source(model_path)
        _check_config(model_path, source)
        processor = _load_processor(processor_path or source, processor_path or model_path)
        model = _load_model(source, model_path, dtype, attn_implementation)
        lo, hi = _processor_pixels(processor)
        min_pixels = int(min_pixels) if min_pixels is not None else lo
        max_pixels = int(max_pixels) if max_pixels is not None else hi
        if min_pixels <= 0 or max_pixels < min_pixels:
            raise UserError(f"--min-pixels/--max-pixels: need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        if max_length is not None and max_length <= 0:
            raise UserError(f"--max-length: must be positive, got {max_length}")
        if gradient_checkpointing:
            ckpt_kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):   # transformers 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
            model.config.use_cache = False
        if lora is not None:
            model = apply_lora(model, lora, LORA_PATTERNS, WHOLE_MODULES)
        adapter = cls(model=model, processor=processor, base_model_path=source, lora=lora,
                      min_pixels=min_pixels, max_pixels=max_pixels, max_length=max_length)
        adapter.freeze(freeze)
        return adapter

    def freeze(self, modalities: Sequence[str]) -> None:
        """Static freeze of whole modalities (requires_grad False on every parameter of each)."""
        modalities = tuple(modalities or ())
        bad = [m for m in modalities if m not in ("vision", "projector", "language")]
        if bad:
            raise UserError(f"--freeze: unknown modality {bad[0]!r}; expected vision, projector or language")
        for name, p in self.model.named_parameters():
            if modality_of(name) in modalities:
                p.requires_grad_(False)

    def parameters_by_modality(self, trainable_only: bool = True) -> dict[str, list[nn.Parameter]]:
        """{"vision": [...], "projector": [...], "language": [...]} for per-modality optimizer groups."""
        groups: dict[str, list[nn.Parameter]] = {"vision": [], "projector": [], "language": []}
        for name, p in self.model.named_parameters():
            if p.requires_grad or not trainable_only:
                groups[modality_of(name)].append(p)
        return groups

    # ------------------------------------------------------------------ data

    def _messages(self, sample: Sample) -> list[dict]:
        image = load_image(sample.image)
        return [{"role": "user", "content": [
            {"type": "image", "image": image, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels},
            {"type": "text", "text": sample.prompt},
        ]}]

    def preprocess(self, sample: Sample, train: bool) -> dict[str, Any]:
        from qwen_vl_utils import process_vision_info

        messages = self._messages(sample)
        prompt_text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images, _ = process_vision_info(messages, image_patch_size=self.patch_size)[:2]
        # process_vision_info already resized to a multiple of patch*merge within [min_pixels, max_pixels]
        enc = self.processor(text=[prompt_text], images=images, return_tensors="pt", do_resize=False)
        item: dict[str, Any] = {"id": sample.id, "image_key": image_key(sample.image, self._pixel_settings)}
        for key in _SEQ_KEYS:
            if key in enc:
                item[key] = enc[key][0].long()
        item["pixel_values"] = enc["pixel_values"]
        item["image_grid_thw"] = enc["image_grid_thw"]
        n_prompt = item["input_ids"].shape[0]
        if self.max_length is not None and n_prompt > self.max_length:
            raise UserError(f"sample {sample.id}: the prompt with its image is {n_prompt} tokens, over --max-length "
                            f"{self.max_length}; lower --max-pixels or raise --max-length")
        if not train:
            return item

        answer = sample.meta.get("train_target") if sample.meta else None
        if answer is None:
            if not sample.targets:
                raise UserError(f"sample {sample.id}: no target to train on")
            answer = sample.targets[0]
        answer_ids = self._answer_ids(messages, prompt_text, str(answer))
        if self.max_length is not None:
            answer_ids = answer_ids[: self.max_length - n_prompt]
        labels = list(answer_ids)
        if self.im_end_id in answer_ids:   # keep answer + closing <|im_end|>, drop the template tail
            end = answer_ids.index(self.im_end_id) + 1
            labels[end:] = [IGNORE] * (len(labels) - end)
        ans = torch.tensor(answer_ids, dtype=torch.long)
        item["input_ids"] = torch.cat([item["input_ids"], ans])
        item["attention_mask"] = torch.cat([item["attention_mask"], torch.ones_like(ans)])
        if "mm_token_type_ids" in item:
            item["mm_token_type_ids"] = torch.cat([item["mm_token_type_ids"], torch.zeros_like(ans)])
        item["labels"] = torch.cat([torch.full((n_prompt,), IGNORE, dtype=torch.long),
                                    torch.tensor(labels, dtype=torch.long)])
        return item

    def _answer_ids(self, messages: list[dict], prompt_text: str, answer: str) -> list[int]:
        """Token ids of the assistant turn after the generation prompt, as the chat template renders it."""
        full = messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        full_text = self.processor.apply_chat_template(full, tokenize=False)
        tail = full_text[len(prompt_text):] if full_text.startswith(prompt_text) else answer + "<|im_end|>\n"
        return self.processor.tokenizer(tail, add_special_tokens=False)["input_ids"]

    def collate(self, items: list[dict[str, Any]], padding_side: Optional[str] = None) -> dict[str, Any]:
        """Pad to the longest item: right for training items (with labels), left for generation items."""
        if not items:
            raise ValueError("collate: empty batch")
        side = padding_side or ("right" if all("labels" in it for it in items) else "left")
        length = max(it["input_ids"].shape[0] for it in items)
        batch: dict[str, Any] = {"ids": [it["id"] for it in items], "padding_side": side}
        if all("image_key" in it for it in items):
            batch["image_keys"] = [it["image_key"] for it in items]
        for key, value in _SEQ_KEYS.items():
            if key not in items[0]:
                continue
            value = self.pad_id if value is None else value
            rows = []
            for it in items:
                seq = it[key]
                pad = seq.new_full((length - seq.shape[0],), value)
                rows.append(torch.cat([seq, pad]) if side == "right" else torch.cat([pad, seq]))
            batch[key] = torch.stack(rows)
        batch["pixel_values"] = torch.cat([it["pixel_values"] for it in items])
        batch["image_grid_thw"] = torch.cat([it["image_grid_thw"] for it in items])
        return batch

    # ------------------------------------------------------------------ model calls

    def _inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        return {k: batch[k].to(device) for k in _MODEL_KEYS if k in batch}

    def feature_cache_blocker(self) -> Optional[str]:
        """Why the merger output of an image may differ between training steps with the vision tower and the
        merger frozen (so it must not be cached), or None. Qwen2.5-VL's tower has no dropout; LoRA's has."""
        adapted = [m for m in ("vision", "projector") if self.lora is not None and m in self.lora.targets]
        if adapted:
            return f"LoRA adapters on the {' and '.join(adapted)} (--lora-targets)"
        return None

    def _cached_features(self, batch: dict[str, Any]) -> Optional[list[torch.Tensor]]:
        if self.feature_cache is None or "image_keys" not in batch:
            return None
        from vlm_grades.models.qwen_cached_features import image_features

        return image_features(self.hf_model(), self.feature_cache, batch, next(self.model.parameters()).device)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over answer tokens; logits are only computed from the first answer position on."""
        inputs = self._inputs(batch)
        labels = batch["labels"].to(inputs["input_ids"].device)
        features = self._cached_features(batch)
        if features is not None:
            from vlm_grades.models.qwen_cached_features import spliced_inputs

            inputs = spliced_inputs(self.hf_model(), inputs, features)
        length = labels.shape[1]
        answer = labels != IGNORE
        if not bool(answer.any()):  # every answer truncated away: a zero loss that still touches every parameter
            return self.model(**inputs, use_cache=False).logits.float().sum() * 0.0
        first = int(answer.float().argmax(dim=1)[answer.any(dim=1)].min())   # earliest answer token in the batch
        start = max(first - 1, 0)                                           # its logits come from the position before
        if self._logits_to_keep:
            logits = self.model(**inputs, use_cache=False, logits_to_keep=length - start).logits
        else:
            logits = self.model(**inputs, use_cache=False).logits[:, start:]
        logits = logits[:, :-1].float()                                     # positions start .. L-2
        targets = labels[:, start + 1:]                                     # tokens start+1 .. L-1
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], max_new_tokens: int = 32) -> list[str]:
        """Batched greedy decoding over a left-padded generation batch; returns the new text, stripped."""
        from transformers import GenerationConfig

        if "labels" in batch:
            raise ValueError("generate: needs items preprocessed with train=False (the batch holds answers)")
        if batch.get("padding_side", "left") != "left":
            raise ValueError("generate: needs a left-padded batch (collate(items) pads generation items left)")
        inputs = self._inputs(batch)
        features = self._cached_features(batch) if self._mm_encoder_outputs else None
        if features is not None:
            from vlm_grades.models.qwen_cached_features import encoder_outputs

            inputs.pop("pixel_values")
            inputs["mm_encoder_outputs"] = encoder_outputs(features)
        model = self.unwrapped()
        eos = getattr(getattr(self.hf_model(), "generation_config", None), "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.im_end_id not in eos:
            eos.append(self.im_end_id)
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=eos, pad_token_id=self.pad_id)
        was_training = model.training
        model.eval()
        try:
            out = model.generate(**inputs, generation_config=config)
        finally:
            model.train(was_training)
        new = out[:, batch["input_ids"].shape[1]:]
        texts = self.processor.tokenizer.batch_decode(new, skip_special_tokens=True,
                                                      clean_up_tokenization_spaces=False)
        return [t.strip() for t in texts]

    def tokens_per_modality(self, batch: dict[str, Any]) -> dict[str, int]:
        patches = int(batch["image_grid_thw"].prod(dim=-1).sum())
        return {"vision": patches, "projector": patches, "language": int(batch["attention_mask"].sum())}

    # ------------------------------------------------------------------ saving

    def save(self, directory: str) -> None:
        """Full model: save_pretrained + processor. LoRA: the adapter + processor; the base path is recorded."""
        os.makedirs(directory, exist_ok=True)
        self.unwrapped().save_pretrained(directory)
        self.processor.save_pretrained(directory)
        meta = {"architecture": ARCHITECTURE, "base_model": self.base_model_path,
                "lora": self.lora.to_dict() if self.lora is not None else None,
                "min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "max_length": self.max_length}
        with open(os.path.join(directory, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def load_for_eval(cls, path: str, **kwargs) -> "Qwen25VLAdapter":
        return load_qwen_for_eval(path, **kwargs)


def load_qwen_for_eval(path: str, *, dtype: Any = "float32", device: Any = None,
                       attn_implementation: Optional[str] = None) -> Qwen25VLAdapter:
    """Load what save() wrote (a full checkpoint or a LoRA adapter folder) for evaluation: eval mode, no grads."""
    path = str(path)
    folder = Path(path)
    meta: dict[str, Any] = {}
    if folder.is_dir() and (folder / META_FILE).is_file():
        try:
            meta = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{folder / META_FILE}: unreadable ({e})") from None
    settings = {k: meta[k] for k in ("min_pixels", "max_pixels", "max_length") if k in meta}
    if folder.is_dir() and (folder / "adapter_config.json").is_file():
        base = meta.get("base_model")
        if not base:
            try:
                base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
            except (OSError, ValueError):
                base = None
        if not base:
            raise UserError(f"{path}: LoRA adapter folder without a recorded base model")
        has_processor = any((folder / f).is_file() for f in ("processor_config.json", "preprocessor_config.json"))
        try:
            adapter = Qwen25VLAdapter.load(base, dtype=dtype, attn_implementation=attn_implementation,
                                           processor_path=path if has_processor else None, **settings)
        except UserError as e:
            raise UserError(f"{path}: base model of the LoRA adapter: {e}") from None
        adapter.model = load_lora(adapter.model, path, trainable=False)
        adapter.lora = LoraSettings.from_dict(meta["lora"]) if meta.get("lora") else None
    else:
        adapter = Qwen25VLAdapter.load(path, dtype=dtype, attn_implementation=attn_implementation, **settings)
    adapter.model.eval()
    adapter.model.requires_grad_(False)
    if device is not None:
        adapter.model.to(device)
    return adapter


# ---------------------------------------------------------------------- helpers


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _resolve_source(model_path: str) -> str:
    """An existing local folder (made absolute) or a hub id; anything else is a UserError."""
    p = Path(model_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{model_path}: not a folder (expected a Qwen2.5-VL checkpoint folder)")
        return str(p.resolve())
    return hub_id(model_path)


def _check_config(model_path: str, source: str) -> None:
    local = Path(source)
    if local.is_dir():
        cfg_file = local / "config.json"
        if not cfg_file.is_file():
            hint = " (it is a LoRA adapter folder; load it for evaluation or pass its base model)" \
                if (local / "adapter_config.json").is_file() else ""
            raise UserError(f"{model_path}: no config.json, not a Hugging Face checkpoint folder{hint}")
        try:
            model_type = json.loads(cfg_file.read_text()).get("model_type")
        except (OSError, ValueError) as e:
            raise UserError(f"{cfg_file}: unreadable config ({_first_line(e)})") from None
    else:
        from transformers import AutoConfig
        try:
            model_type = AutoConfig.from_pretrained(source).model_type
        except Exception as e:  # offline, unknown id, gated repo: one line for the user
            raise UserError(f"{model_path}: not a local folder and not loadable as a Hugging Face Hub id "
                            f"({_first_line(e)})") from None
    if model_type != ARCHITECTURE:
        raise UserError(f"{model_path}: config model_type is {model_type!r}, expected {ARCHITECTURE!r} (Qwen2.5-VL)")


def _load_processor(source: str, shown: str):
    from transformers import AutoProcessor
    try:
        processor = AutoProcessor.from_pretrained(source)
    except Exception as e:
        raise UserError(f"{shown}: missing or unreadable processor files ({_first_line(e)})") from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise UserError(f"{shown}: missing processor files: found only a {type(processor).__name__}, "
                        "need the tokenizer and the image processor (preprocessor_config.json)")
    if not getattr(processor, "chat_template", None):
        raise UserError(f"{shown}: the processor has no chat template (chat_template.jinja / chat_template.json)")
    return processor


def _drop_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


def _load_model(source: str, shown: str, dtype: Any, attn_implementation: Optional[str]):
    import transformers
    from packaging.version import Version
    from transformers import Qwen2_5_VLForConditionalGeneration

    if isinstance(dtype, str) and dtype != "auto":
        if dtype.lower() not in _DTYPES:
            raise UserError(f"--dtype: expected float32, bfloat16, float16 or auto, got {dtype!r}")
        dtype = _DTYPES[dtype.lower()]
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    kwargs: dict[str, Any] = {key: dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    # transformers prints a multi-line load report and then raises on a shape mismatch; silence the report,
    # let it load, and give the user the first mismatched weight in one line instead.
    # (A filter, not a log level: transformers runs extra checks when its logger's level is raised.)
    report_log = logging.getLogger("transformers.modeling_utils")
    report_log.addFilter(_drop_load_report)
    try:
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            source, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
    except Exception as e:
        raise UserError(f"{shown}: cannot load the Qwen2.5-VL weights ({_first_line(e)})") from None
    finally:
        report_log.removeFilter(_drop_load_report)
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: m[0])
    if mismatched:
        key, found, expected = mismatched[0]
        more = f" and {len(mismatched) - 1} more" if len(mismatched) > 1 else ""
        raise UserError(f"{shown}: weight {key} has shape {list(found)} in the checkpoint but its config.json "
                        f"gives {list(expected)}{more}; the weights do not belong to this config")
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        count = "1 weight is" if len(missing) == 1 else f"{len(missing)} weights are"
        log.warning("%s: %s not in the checkpoint and will start random (first: %s)", shown, count, missing[0])
    return model


def _processor_pixels(processor) -> tuple[int, int]:
    """The checkpoint's own (min_pixels, max_pixels), across transformers versions; qwen-vl-utils' defaults else."""
    ip = processor.image_processor
    size = getattr(ip, "size", None) or {}
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    lo = getattr(ip, "min_pixels", None) or get("shortest_edge") or get("min_pixels") or 4 * 28 * 28
    hi = getattr(ip, "max_pixels", None) or get("longest_edge") or get("max_pixels") or 16384 * 28 * 28
    return int(lo), int(hi)
