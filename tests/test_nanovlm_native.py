"""Checkpoints in nanoVLM's own format (huggingface/nanoVLM save_pretrained), for the v0.1 pipeline (222M), the
v0.2 one (450M) and the tiled one (main): they load with every tensor assigned, train with GradES, and export
back unchanged where training did not touch them; the tiled prompt layout; the 222m preset against the 222M
format."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nanovlm import native_format as nf
from nanovlm.config import VLMConfig
from nanovlm.tiling import image_token_layout, tiled_size
from nanovlm.vision_language_model import VisionLanguageModel
from conftest import one_line_error
from vlm_grades.cli import main
from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError
from vlm_grades.models.nanovlm import NanoVLMAdapter
from vlm_grades.models.nanovlm_native import NativeNanoVLMAdapter, load_nanovlm

CHAT = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TILE_TOKENS = {"image_token": "<|image|>", "global_image_token": "<|global_image|>",
               "r1c1": "<row_1_col_1>", "r1c2": "<row_1_col_2>", "r2c1": "<row_2_col_1>", "r2c2": "<row_2_col_2>"}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<filename>"]
WORDS = ["question", "answer", "what", "color", "is", "the", "shape", "?", ":", "user", "assistant", "circle",
         "rectangle", "triangle", "red", "green", "blue", "black", "gray", "teal", "brown", "yellow", "yes", "no",
         "does", "image", "contain", "a", "not", "there", "in"]

# nanoVLM's state-dict names (safetensors save_model of its VisionLanguageModel) for one ViT block and one LM
# block, written out by hand from its module tree; the tied token embedding is stored as decoder.head.weight
VIT_BLOCK = ["ln1.weight", "ln1.bias", "attn.qkv_proj.weight", "attn.qkv_proj.bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln2.weight", "ln2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
             "mlp.fc2.bias"]
LM_BLOCK = ["attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.out_proj.weight",
            "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "norm1.weight", "norm2.weight"]
TOP = ["vision_encoder.patch_embedding.conv.weight", "vision_encoder.patch_embedding.conv.bias",
       "vision_encoder.patch_embedding.position_embedding", "vision_encoder.layer_norm.weight",
       "vision_encoder.layer_norm.bias", "MP.proj.weight", "decoder.rotary_embd.inv_freq", "decoder.head.weight",
       "decoder.norm.weight"]


def nanovlm_names(vit_blocks: int, lm_blocks: int) -> list[str]:
    return (TOP + [f"vision_encoder.blocks.{i}.{n}" for i in range(vit_blocks) for n in VIT_BLOCK]
            + [f"decoder.blocks.{i}.{n}" for i in range(lm_blocks) for n in LM_BLOCK])


def write_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + ["<unk>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", unk_token="<unk>",
                                   additional_special_tokens=SPECIALS)
    fast.save_pretrained(str(folder))
    return folder


def v01_config(tokenizer: Path, vocab: int) -> dict:
    """nanoVLM v0.1's VLMConfig fields (asdict order) for a tiny model."""
    return {"vit_hidden_dim": 32, "vit_inter_dim": 64, "vit_patch_size": 8, "vit_img_size": 32, "vit_n_heads": 2,
            "vit_dropout": 0.0, "vit_n_blocks": 2, "vit_ln_eps": 1e-6, "vit_cls_flag": False,
            "vit_model_type": "google/siglip-base-patch16-224", "lm_hidden_dim": 32, "lm_inter_dim": 64,
            "lm_rms_eps": 1e-5, "lm_re_base": 100000, "lm_max_position_embeddings": 8192, "lm_vocab_size": vocab,
            "lm_n_heads": 4, "lm_n_kv_heads": 2, "lm_dropout": 0.0, "lm_n_blocks": 2, "lm_attn_scaling": 1.0,
            "lm_max_length": 79, "lm_use_tokens": False, "lm_tie_weights": True,
            "lm_model_type": "HuggingFaceTB/SmolLM2-135M", "lm_tokenizer": str(tokenizer), "lm_eos_token_id": 0,
            "mp_pixel_shuffle_factor": 2, "vlm_load_backbone_weights": True,
            "vlm_checkpoint_path": "checkpoints/nanoVLM", "hf_repo_name": "nanoVLM"}


def tiled_config(tokenizer: Path, vocab: int) -> dict:
    """The main branch's VLMConfig fields (image splitting, global view) for a tiny model: 2x2 tiles at most."""
    c = v01_config(tokenizer, vocab)
    del c["lm_eos_token_id"]
    c.update({"lm_base_vocab_size": vocab - len(TILE_TOKENS), "extra_token_amount": len(TILE_TOKENS),
              "lm_chat_template": CHAT, "mp_image_token_length": 4, "max_img_size": 64,
              "resize_to_max_side_len": False, "vlm_extra_tokens": dict(TILE_TOKENS)})
    return c


def v02_config(tokenizer: Path, vocab: int) -> dict:
    """nanoVLM v0.2's VLMConfig fields (June 2025, nanoVLM-450M) for a tiny model: one <|image|> token, no chat
    template, IMAGE_TOKEN_LENGTH / TOTAL_SEQUENCE_LENGTH deciding lm_max_length."""
    c = v01_config(tokenizer, vocab)
    c.update({"lm_base_vocab_size": vocab - 1, "extra_token_amount": 1, "IMAGE_TOKEN_LENGTH": 4,
              "TOTAL_SEQUENCE_LENGTH": 128, "lm_max_length": 124, "mp_image_token_length": 4,
              "lm_model_type": "HuggingFaceTB/SmolLM2-360M-Instruct", "vlm_extra_tokens": {"image_token": "<|image|>"}})
    return c


def shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    D, L, s, p = cfg["vit_hidden_dim"], cfg["lm_hidden_dim"], cfg["mp_pixel_shuffle_factor"], cfg["vit_patch_size"]
    kv = L // cfg["lm_n_heads"] * cfg["lm_n_kv_heads"]
    vit = {"ln1.weight": (D,), "ln1.bias": (D,), "attn.qkv_proj.weight": (3 * D, D), "attn.qkv_proj.bias": (3 * D,),
           "attn.out_proj.weight": (D, D), "attn.out_proj.bias": (D,), "ln2.weight": (D,), "ln2.bias": (D,),
           "mlp.fc1.weight": (cfg["vit_inter_dim"], D), "mlp.fc1.bias": (cfg["vit_inter_dim"],),
           "mlp.fc2.weight": (D, cfg["vit_inter_dim"]), "mlp.fc2.bias": (D,)}
    lm = {"attn.q_proj.weight": (L, L), "attn.k_proj.weight": (kv, L), "attn.v_proj.weight": (kv, L),
          "attn.out_proj.weight": (L, L), "mlp.gate_proj.weight": (cfg["lm_inter_dim"], L),
          "mlp.up_proj.weight": (cfg["lm_inter_dim"], L), "mlp.down_proj.weight": (L, cfg["lm_inter_dim"]),
          "norm1.weight": (L,), "norm2.weight": (L,)}
    out = {"vision_encoder.patch_embedding.conv.weight": (D, 3, p, p), "vision_encoder.patch_embedding.conv.bias": (D,),
           "vision_encoder.patch_embedding.position_embedding": (1, (cfg["vit_img_size"] // p) ** 2, D),
           "vision_encoder.layer_norm.weight": (D,), "vision_encoder.layer_norm.bias": (D,),
           "MP.proj.weight": (L, D * s * s), "decoder.rotary_embd.inv_freq": (L // cfg["lm_n_heads"] // 2,),
           "decoder.head.weight": (cfg["lm_vocab_size"], L), "decoder.norm.weight": (L,)}
    for name in nanovlm_names(cfg["vit_n_blocks"], cfg["lm_n_blocks"]):
        if name not in out:
            out[name] = (vit if name.startswith("vision_encoder.") else lm)[name.split(".", 3)[-1]]
    return out


def write_checkpoint(folder: Path, cfg: dict, seed: int = 0, drop: str | None = None, extra: str | None = None) -> Path:
    """config.json + model.safetensors exactly as nanoVLM's save_pretrained writes them (random weights)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes(cfg).items():
        state[name] = torch.randn(shape, generator=g) * 0.1
    hd = cfg["lm_hidden_dim"] // cfg["lm_n_heads"]
    state["decoder.rotary_embd.inv_freq"] = 1.0 / (cfg["lm_re_base"] ** (torch.arange(0, hd, 2).float() / hd))
    if drop:
        del state[drop]
    if extra:
        state[extra] = torch.zeros(3)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=4))
    save_file(state, str(folder / "model.safetensors"),
              metadata={"decoder.token_embedding.weight": "decoder.head.weight"})
    return folder


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def vocab(tok: Path, tiled: bool) -> int:
    return len(SPECIALS) + 1 + len(WORDS) + (len(TILE_TOKENS) if tiled else 0)


@pytest.fixture(params=["v0.1", "v0.2", "tiled"])
def checkpoint(request, tok, tmp_path) -> tuple[str, Path]:
    kind = request.param
    cfg = {"v0.1": lambda: v01_config(tok, vocab(tok, False)), "v0.2": lambda: v02_config(tok, vocab(tok, False) + 1),
           "tiled": lambda: tiled_config(tok, vocab(tok, True))}[kind]()
    return kind, write_checkpoint(tmp_path / f"ckpt-{kind}", cfg)


# ----------------------------------------------------------------------------------------------- loading
def test_every_tensor_is_assigned_and_none_unused(checkpoint):
    kind, folder = checkpoint
    adapter = load_nanovlm(folder)
    assert isinstance(adapter, NativeNanoVLMAdapter) and adapter.pipe.kind == kind
    file = load_file(str(folder / "model.safetensors"))
    assert sorted(file) == sorted(nanovlm_names(2, 2))
    model = adapter.model.state_dict()
    for name, ours in model.items():
        theirs = file["decoder.head.weight" if name == "decoder.token_embedding.weight" else name]
        assert torch.equal(ours, theirs), name      # random file values: an unassigned tensor differs
    assert adapter.model.decoder.head.weight is adapter.model.decoder.token_embedding.weight


@pytest.mark.parametrize("drop,extra,match", [
    ("decoder.blocks.1.mlp.up_proj.weight", None, "tensor decoder.blocks.1.mlp.up_proj.weight missing"),
    (None, "vision_encoder.cls_token", "unused tensor vision_encoder.cls_token"),
])
def test_missing_or_unused_tensor_is_a_one_line_error(tok, tmp_path, drop, extra, match):
    folder = write_checkpoint(tmp_path / "bad", v01_config(tok, vocab(tok, False)), drop=drop, extra=extra)
    with pytest.raises(UserError, match=match):
        load_nanovlm(folder)


@pytest.mark.parametrize("field,value,match", [
    ("vit_cls_flag", True, "vit_cls_flag"),
    ("lm_attn_scaling", 0.5, "lm_attn_scaling"),
    ("vit_arch", "dinov3", "field vit_arch"),
    ("mp_image_token_length", 64, "mp_image_token_length 64"),
    ("max_img_size", 80, "max_img_size 80"),
])
def test_config_this_code_cannot_reproduce_names_the_field(tok, tmp_path, field, value, match, capsys):
    cfg = tiled_config(tok, vocab(tok, True))
    cfg[field] = value
    folder = write_checkpoint(tmp_path / "odd", cfg)
    rc = main(["train", "--model", "nanovlm", "--model-path", str(folder), "--steps", "4", "--no-progress",
               "--out", str(tmp_path / "run")])
    assert rc == 2
    one_line_error(capsys.readouterr().err, match)


def test_offline_hub_id_is_a_one_line_error(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="lusxvr/nanoVLM-222M: not a local folder"):
        load_nanovlm("lusxvr/nanoVLM-222M")


@pytest.mark.parametrize("path", ["runs/foo", "./owner/name", "/no/such/dir", "~/nope/x"])
def test_missing_local_path_is_not_tried_on_the_hub(tmp_path, monkeypatch, path, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError, match=f"^--model-path: {re.escape(path)}: no such folder$"):
        load_nanovlm(path)


# ----------------------------------------------------------------------------------------------- prompts
def test_tiled_prompt_layout_for_2x2_tiles(tok, tmp_path):
    cfg = tiled_config(tok, vocab(tok, True))
    adapter = load_nanovlm(write_checkpoint(tmp_path / "t", cfg))
    image = Image.new("RGB", (64, 60), (200, 30, 30))          # -> 64x64 -> 2x2 tiles of 32 + a global view
    sample = Sample(id="q1", image=image, prompt="what color is the shape ?", targets=["red"], task="easyvqa")
    item = adapter.preprocess(sample, train=True)
    t = adapter.tokenizer.convert_tokens_to_ids
    base = len(SPECIALS) + 1 + len(WORDS)           # the extra tokens follow the vocabulary, in nanoVLM's order
    img, glob, r11, r12, r21, r22 = range(base, base + 6)
    w = {x: t(x) for x in WORDS}
    expected = ([t("<|im_start|>"), w["user"], glob] + [img] * 4 + [r11] + [img] * 4 + [r12] + [img] * 4
                + [r21] + [img] * 4 + [r22] + [img] * 4
                + [w["what"], w["color"], w["is"], w["the"], w["shape"], w["?"], t("<|im_end|>"),
                   t("<|im_start|>"), w["assistant"]]
                + [w["red"], t("<|im_end|>")])
    assert item["input_ids"] == expected
    assert item["labels"] == [-100] * (len(expected) - 2) + [w["red"], t("<|im_end|>")]
    assert item["pixel_values"].shape == (5, 3, 32, 32)
    assert torch.allclose(item["pixel_values"][:, 0], torch.tensor(200 / 255), atol=0.02)   # [0, 1], every view
    assert image_token_layout((1, 1), 2, TILE_TOKENS, True) == ["<|global_image|>", "<|image|>", "<|image|>"]
    assert tiled_size(60, 64, 32, 64) == (64, 64) and tiled_size(20, 100, 32, 64) == (32, 64)


def test_tiles_are_the_image_cut_row_major_after_a_global_view(tok, tmp_path):
    """A noise image: each tile is exactly its block of the image, row by row; a four-colour image: the global
    view shows each colour in its own corner (not transposed, not mirrored)."""
    import numpy as np

    adapter = load_nanovlm(write_checkpoint(tmp_path / "t", tiled_config(tok, vocab(tok, True))))
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pixels = torch.from_numpy(noise).permute(2, 0, 1).float() / 255                 # 64x64: no resize
    views, grid = adapter.image_tensors(Image.fromarray(noise))
    assert grid == (2, 2) and views.shape == (5, 3, 32, 32)
    blocks = [pixels[:, r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] for r in range(2) for c in range(2)]
    for i, block in enumerate(blocks, start=1):
        assert torch.allclose(views[i], block, atol=1e-6), f"tile {i}"
    colours = {(0, 0): (255, 0, 0), (0, 1): (0, 255, 0), (1, 0): (0, 0, 255), (1, 1): (255, 255, 255)}
    quads = np.zeros((64, 64, 3), dtype=np.uint8)
    for (r, c), rgb in colours.items():
        quads[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] = rgb
    glob = adapter.image_tensors(Image.fromarray(quads))[0][0]
    for (r, c), rgb in colours.items():
        corner = glob[:, r * 16 + 2:r * 16 + 14, c * 16 + 2:c * 16 + 14]          # away from the seams
        assert torch.allclose(corner, torch.tensor(rgb).float()[:, None, None] / 255, atol=1e-3), (r, c)


def test_v01_prompt_puts_the_image_first(tok, tmp_path):
    adapter = load_nanovlm(write_checkpoint(tmp_path / "v", v01_config(tok, vocab(tok, False))))
    sample = Sample(id="q", image=Image.new("RGB", (50, 40)), prompt="question : what shape ? answer :",
                    targets=["circle"], task="easyvqa")
    item = adapter.preprocess(sample, train=True)
    n = adapter.cfg.mp_image_token_length
    assert item["input_ids"][:n] == [adapter.cfg.image_token_id] * n and adapter.cfg.eos_token_id == 0
    assert item["input_ids"][-1] == 0 and item["pixel_values"].shape == (1, 3, 32, 32)
    assert float(item["pixel_values"].min()) >= 0.0          # nanoVLM feeds [0, 1], no normalization


def test_image_token_pipeline_with_a_chat_template(tok, tmp_path):
    """nanoVLM's main between v0.2 and the tiles: <|image|> x mp_image_token_length in the chat template, one
    square image."""
    cfg = tiled_config(tok, vocab(tok, False) + 1)
    del cfg["max_img_size"], cfg["resize_to_max_side_len"]
    cfg["vlm_extra_tokens"], cfg["extra_token_amount"] = {"image_token": "<|image|>"}, 1
    adapter = load_nanovlm(write_checkpoint(tmp_path / "m", cfg))
    assert adapter.pipe.kind == "image-token"
    item = adapter.preprocess(Sample(id="q", image=Image.new("RGB", (70, 30)), prompt="what shape ?",
                                     targets=["circle"], task="easyvqa"), train=False)
    t = adapter.tokenizer.convert_tokens_to_ids
    img = vocab(tok, False)
    assert item["input_ids"] == [t("<|im_start|>"), t("user")] + [img] * 4 + [
        t("what"), t("shape"), t("?"), t("<|im_end|>"), t("<|im_start|>"), t("assistant")]
    assert item["pixel_values"].shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------------------------- train + export
def test_train_with_grades_then_export_round_trips(checkpoint, tmp_path, capsys):
    kind, folder = checkpoint
    run = tmp_path / "run"
    rc = main(["train", "--model", "nanovlm", "--model-path", str(folder), "--steps", "4", "--max-samples", "8",
               "--batch-size", "4", "--eval-split=", "--val-split=", "--alpha", "1", "--interval", "1",
               "--freeze", "vision", "--lr", "1e-2", "--no-progress", "--out", str(run)])
    assert rc == 0, capsys.readouterr().err
    comps = json.loads((run / "components.json").read_text())
    assert {c["modality"] for c in comps["components"]} == {"vision", "projector", "language"}
    assert (run / "convergence.jsonl").read_text().strip()
    out = tmp_path / "exported"
    assert main(["export", str(run), "--format", "nanovlm", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text()) == json.loads((folder / "config.json").read_text())
    before, after = load_file(str(folder / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sorted(after) == sorted(before)
    for name in before:
        assert after[name].shape == before[name].shape and after[name].dtype == before[name].dtype, name
    frozen = [n for n in before if n.startswith("vision_encoder.") or n == "decoder.rotary_embd.inv_freq"]
    for name in frozen:                                   # untouched by training: the same bytes
        assert after[name].numpy().tobytes() == before[name].numpy().tobytes(), name
    assert not torch.equal(after["MP.proj.weight"], before["MP.proj.weight"])
    assert not torch.equal(after["decoder.blocks.0.attn.q_proj.weight"], before["decoder.blocks.0.attn.q_proj.weight"])
    with safe_open(str(out / "model.safetensors"), "pt") as a, safe_open(str(folder / "model.safetensors"), "pt") as b:
        assert a.metadata() == b.metadata()
    # the export loads again as a nanoVLM checkpoint, with the trained weights
    again = load_nanovlm(out)
    assert torch.equal(again.model.MP.proj.weight, after["MP.proj.weight"])
    assert main(["export", str(run), "--format", "nanovlm", "--out", str(out)]) == 2
    # eval and report read the run like any nanoVLM run
    assert main(["eval", "--task", "easyvqa", "--model", str(run), "--max-samples", "4", "--batch-size", "3",
                 "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    assert (tmp_path / "eval" / "easyvqa_scores.json").is_file()
    assert main(["report", str(run), "--format", "json"]) == 0


def test_components_reads_a_native_config(checkpoint, capsys):
    _, folder = checkpoint
    assert main(["components", "--model", "nanovlm", "--model-path", str(folder), "--json"]) == 0
    comps = json.loads(capsys.readouterr().out)["components"]
    assert {c["modality"] for c in comps} == {"vision", "projector", "language"}
    assert len(comps) == 2 * 4 + 1 + 2 * 7


def test_components_names_a_bad_native_config_once(tok, tmp_path, capsys):
    cfg = v01_config(tok, vocab(tok, False))
    cfg["vit_cls_flag"] = True
    folder = write_checkpoint(tmp_path / "odd", cfg)
    assert main(["components", "--model", "nanovlm", "--model-path", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err == f"vlm-grades components: error: --model-path: {folder / 'config.json'}: vit_cls_flag true is not " \
                  "supported (the bundled ViT has no CLS token)\n"


# ----------------------------------------------------------------------------------------------- the 222M format
NANOVLM_222M_CONFIG = {  # nanoVLM v0.1's defaults, as lusxvr/nanoVLM-222M's config.json holds them
    "vit_hidden_dim": 768, "vit_inter_dim": 3072, "vit_patch_size": 16, "vit_img_size": 224, "vit_n_heads": 12,
    "vit_dropout": 0.0, "vit_n_blocks": 12, "vit_ln_eps": 1e-06, "vit_cls_flag": False,
    "vit_model_type": "google/siglip-base-patch16-224", "lm_hidden_dim": 576, "lm_inter_dim": 1536,
    "lm_rms_eps": 1e-05, "lm_re_base": 100000, "lm_max_position_embeddings": 8192, "lm_vocab_size": 49152,
    "lm_n_heads": 9, "lm_n_kv_heads": 3, "lm_dropout": 0.0, "lm_n_blocks": 30, "lm_attn_scaling": 1.0,
    "lm_max_length": 79, "lm_use_tokens": False, "lm_tie_weights": True, "lm_model_type": "HuggingFaceTB/SmolLM2-135M",
    "lm_tokenizer": "HuggingFaceTB/cosmo2-tokenizer", "lm_eos_token_id": 0, "mp_pixel_shuffle_factor": 2,
    "vlm_load_backbone_weights": True, "vlm_checkpoint_path": "checkpoints/nanoVLM-222M", "hf_repo_name": "nanoVLM-222M",
}


def test_222m_preset_maps_one_to_one_onto_the_222m_format():
    cfg, pipe = nf.translate_config(NANOVLM_222M_CONFIG)
    preset = VLMConfig.preset("222m")
    assert pipe.kind == "v0.1"
    assert {k: v for k, v in cfg.to_dict().items() if not k.endswith("_token_id")} == \
        {k: v for k, v in preset.to_dict().items() if not k.endswith("_token_id")}
    with torch.device("meta"):
        model = VisionLanguageModel(preset)
    ours = set(model.state_dict())
    names = nf.name_map(preset)
    assert len(set(names.values())) == len(names)                                   # one to one
    assert set(names.values()) == ours - {"decoder.token_embedding.weight"}          # the tied twin
    assert set(names) | {nf.ROTARY_BUFFER} == set(nanovlm_names(12, 30))
    for theirs, mine in names.items():
        assert tuple(model.state_dict()[mine].shape) == shapes(NANOVLM_222M_CONFIG)[theirs], theirs
    n = sum(p.numel() for p in model.parameters())
    assert n == 222_081_600


def test_preset_model_exports_a_v01_config(tmp_path):
    from vlm_grades.models.nanovlm_native import export_nanovlm

    cfg = VLMConfig(vit_stem="patch", vit_img_size=32, vit_patch_size=8, vit_hidden_dim=32, vit_inter_dim=64,
                    vit_n_heads=2, lm_hidden_dim=32, lm_inter_dim=64, lm_n_heads=4, lm_n_kv_heads=2, lm_n_blocks=2)
    adapter = NanoVLMAdapter(VisionLanguageModel(cfg), tokenizer=None)
    export_nanovlm(adapter, tmp_path / "out")
    raw = json.loads((tmp_path / "out" / "config.json").read_text())
    assert nf.translate_config(raw)[0].to_dict() | {"image_token_id": 0} == cfg.to_dict() | {"image_token_id": 0}
    assert sorted(load_file(str(tmp_path / "out" / "model.safetensors"))) == sorted(nanovlm_names(2, 2))
    conv = NanoVLMAdapter(VisionLanguageModel(VLMConfig()), tokenizer=None)
    with pytest.raises(UserError, match="--format nanovlm: the 'conv' ViT stem"):
        export_nanovlm(conv, tmp_path / "conv")


def test_several_images_per_row_are_spliced_in_row_order():
    cfg = VLMConfig(image_token_id=3)
    model = VisionLanguageModel(cfg)
    n = cfg.mp_image_token_length
    row = lambda a, b: torch.tensor([5] + [3] * n + [6] + [3] * n + [a, b])  # two images per row (tiles)
    ids = torch.stack([row(7, 8), row(9, 10)])
    images = torch.randn(4, 3, cfg.vit_img_size, cfg.vit_img_size)
    x = model.embed(ids, images)
    feats = model.MP(model.vision_encoder(images))
    assert torch.equal(x[1, 2 + n:2 + 2 * n], feats[3]) and torch.equal(x[0, 1:1 + n], feats[0])
    with pytest.raises(ValueError, match="every image needs exactly"):
        model.embed(ids, images[:3])
