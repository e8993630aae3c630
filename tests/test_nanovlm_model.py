"""The bundled nanoVLM: shapes, pixel shuffle order, splicing, loss masking, KV-cache generation,
save/load, parameter counts, and that it learns."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanovlm.config import VLMConfig
from nanovlm.errors import CheckpointError
from nanovlm.language_model import LanguageModel
from nanovlm.modality_projector import ModalityProjector, pixel_shuffle
from nanovlm.vision_language_model import VisionLanguageModel
from nanovlm.vision_transformer import ViT
from vlm_grades.errors import UserError
from vlm_grades.models.nanovlm import NanoVLMAdapter

IMG = 5  # image token id in these tests (pad stays 0, eos 1)


def tiny(**kw) -> VLMConfig:
    return VLMConfig.preset("tiny", image_token_id=IMG, **kw)


def make_model(seed: int = 0, **kw) -> VisionLanguageModel:
    torch.manual_seed(seed)
    return VisionLanguageModel(tiny(**kw)).eval()


def prompt(cfg: VLMConfig, before: int, after: int, seed: int) -> torch.Tensor:
    """[before text tokens] [image tokens] [after text tokens], text ids avoid 0..IMG."""
    g = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(IMG + 1, cfg.lm_vocab_size, (n,), generator=g)
    return torch.cat([text(before), torch.full((cfg.mp_image_token_length,), IMG), text(after)])


def left_pad(rows: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = r
        mask[i, T - len(r):] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("stem", ["conv", "patch"])
def test_shapes_through_every_module(stem):
    cfg = tiny(vit_stem=stem)
    B = 2
    images = torch.randn(B, 3, cfg.vit_img_size, cfg.vit_img_size)
    feats = ViT(cfg)(images)
    assert feats.shape == (B, cfg.vit_n_patches, cfg.vit_hidden_dim) == (B, 64, 128)
    proj = ModalityProjector(cfg)(feats)
    assert proj.shape == (B, cfg.mp_image_token_length, cfg.lm_hidden_dim) == (B, 16, 128)
    logits, cache = LanguageModel(cfg)(torch.randint(0, 256, (B, 7)), use_cache=True)
    assert logits.shape == (B, 7, cfg.lm_vocab_size)
    assert len(cache) == cfg.lm_n_blocks and cache[0][0].shape == (B, cfg.lm_n_kv_heads, 7, 32)
    model = VisionLanguageModel(cfg)
    ids = torch.stack([prompt(cfg, 3, 4, s) for s in range(B)])
    logits, loss = model(ids, images)
    assert logits.shape == (B, ids.shape[1], cfg.lm_vocab_size) and loss is None


def test_conv_stem_layout():
    vit = ViT(tiny())
    convs = [m for m in vit.patch_embedding.stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(3, 32, (2, 2)), (32, 64, (2, 2)), (64, 128, (2, 2))]
    assert vit.patch_embedding.position_embedding.shape == (1, 64, 128)


def test_presets_and_config_roundtrip():
    cfg = VLMConfig.preset("smol")
    assert (cfg.lm_hidden_dim, cfg.lm_n_blocks, cfg.lm_vocab_size, cfg.vit_hidden_dim, cfg.vit_img_size) == (576, 30, 49152, 192, 64)
    assert VLMConfig.preset("222m").mp_image_token_length == 49
    assert VLMConfig.from_dict({"model_type": "nanovlm", **cfg.to_dict()}) == cfg
    with pytest.raises(ValueError, match="unknown nanoVLM preset"):
        VLMConfig.preset("huge")
    with pytest.raises(ValueError, match="divisible"):
        VLMConfig(vit_img_size=64, vit_patch_size=16, mp_pixel_shuffle_factor=3)


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_222m_parameter_count():
    with torch.device("meta"):
        model = VisionLanguageModel(VLMConfig.preset("222m"))
    assert _count(model.vision_encoder) == 85_797_120
    assert _count(model.decoder) == 134_515_008
    assert _count(model.MP) == 1_769_472
    assert _count(model) == 222_081_600
    with torch.device("meta"):
        smol = VisionLanguageModel(VLMConfig.preset("smol"))
    assert _count(smol.decoder) == 134_515_008


def test_module_names_for_the_registry():
    names = {n for n, _ in make_model().named_modules()}
    for n in ["vision_encoder.patch_embedding", "vision_encoder.blocks.1.attn.qkv_proj", "vision_encoder.blocks.0.attn.out_proj",
              "vision_encoder.blocks.0.mlp.fc1", "vision_encoder.blocks.0.mlp.fc2", "vision_encoder.layer_norm", "MP.proj",
              "decoder.token_embedding", "decoder.blocks.2.attn.q_proj", "decoder.blocks.0.attn.k_proj",
              "decoder.blocks.0.attn.v_proj", "decoder.blocks.0.attn.out_proj", "decoder.blocks.0.mlp.gate_proj",
              "decoder.blocks.0.mlp.up_proj", "decoder.blocks.0.mlp.down_proj", "decoder.norm", "decoder.head"]:
        assert n in names, n
    model = make_model()
    assert model.decoder.head.weight is model.decoder.token_embedding.weight


# ------------------------------------------------------------------------------------------ projector
def test_pixel_shuffle_hand_built_4x4():
    # 4x4 grid of patches numbered row-major p = 0..15, D = 2 channels holding 10*p + d
    x = torch.tensor([[10 * p + d for d in range(2)] for p in range(16)], dtype=torch.float32)[None]
    y = pixel_shuffle(x, 2)
    assert y.shape == (1, 4, 8)
    groups = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    expected = torch.tensor([[10 * p + d for p in g for d in range(2)] for g in groups], dtype=torch.float32)
    assert torch.equal(y[0], expected)


# ------------------------------------------------------------------------------------------ splicing and loss
def test_image_features_spliced_in_order():
    model = make_model()
    cfg = model.cfg
    ids = torch.stack([prompt(cfg, 2, 3, 0), prompt(cfg, 2, 3, 1)])
    images = torch.randn(2, 3, 64, 64)
    x = model.embed(ids, images)
    feats = model.MP(model.vision_encoder(images))
    n = cfg.mp_image_token_length
    assert torch.equal(x[:, 2:2 + n], feats)
    assert torch.equal(x[:, :2], model.decoder.token_embedding(ids[:, :2]))


def test_wrong_image_token_count_raises():
    model = make_model()
    ids = prompt(model.cfg, 2, 3, 0)[None].clone()
    ids[0, 3] = 7  # one image token fewer
    with pytest.raises(ValueError, match="row 0 .* 15 image tokens.*exactly 16"):
        model(ids, torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="no images"):
        model(prompt(model.cfg, 2, 3, 0)[None], None)


def test_loss_ignores_prompt_and_padding():
    model = make_model().double()
    cfg = model.cfg
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    a, b = prompt(cfg, 3, 6, 0), prompt(cfg, 1, 4, 1)
    labels_a, labels_b = torch.full_like(a, -100), torch.full_like(b, -100)
    labels_a[-3:], labels_b[-2:] = a[-3:], b[-2:]  # answer tokens only
    logits, loss = model(a[None], images[:1], labels=labels_a[None])
    manual = torch.nn.functional.cross_entropy(logits[0, -4:-1], a[-3:])
    assert torch.allclose(loss, manual)
    # the -100 prompt positions really are left out: labelling everything gives another value
    _, everything = model(a[None], images[:1], labels=a[None])
    assert not torch.allclose(everything, loss)
    # a left-padded batch gives each row the loss it has alone; labels on padding are ignored
    ids, mask = left_pad([a, b])
    labels, _ = left_pad([labels_a, labels_b], pad=7)  # padding carries junk labels
    _, loss_b = model(b[None], images[1:], labels=labels_b[None])
    _, batch_loss = model(ids, images, mask, labels)
    assert torch.allclose(batch_loss, (3 * loss + 2 * loss_b) / 5, atol=1e-10)
    # right padding too
    pad = torch.zeros(4, dtype=torch.long)
    ids_r = torch.cat([a, pad])[None]
    mask_r = torch.cat([torch.ones_like(a), pad])[None]
    labels_r = torch.cat([labels_a, pad + 9])[None]
    _, loss_r = model(ids_r, images[:1], mask_r, labels_r)
    assert torch.allclose(loss_r, loss, atol=1e-10)
    # no labelled token: 0, not NaN
    _, zero = model(a[None], images[:1], labels=torch.full_like(a, -100)[None])
    assert zero.item() == 0.0


def test_a_few_steps_lower_the_loss():
    model = make_model().train()
    cfg = model.cfg
    rows = [prompt(cfg, 2, 6, s) for s in range(4)]
    ids = torch.stack(rows)
    labels = ids.clone()
    labels[:, : 2 + cfg.mp_image_token_length] = -100
    images = torch.randn(4, 3, 64, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        _, loss = model(ids, images, torch.ones_like(ids), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses


# ------------------------------------------------------------------------------------------ generation
def lively_model() -> VisionLanguageModel:
    """Untied head and larger weights: a default random init just repeats its last token."""
    model = make_model(seed=3, lm_tie_weights=False).double()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in model.decoder.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.15)
    return model


def greedy_without_cache(model, ids, images, mask, n):
    """Reference: recompute the whole sequence for every new token."""
    x = model.embed(ids, images, mask)
    out = []
    for _ in range(n):
        logits, _ = model.decoder(x, mask)
        tok = logits[:, -1].argmax(-1)
        out.append(tok)
        x = torch.cat([x, model.decoder.token_embedding(tok)[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(out, 1)


def test_kv_cache_generation_matches_recompute_and_left_padding():
    model = lively_model()
    cfg = model.cfg
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    a, b = prompt(cfg, 4, 5, 10), prompt(cfg, 1, 2, 11)
    n = 12
    with torch.no_grad():
        single_a = model.generate(a[None], images[:1], max_new_tokens=n, eos_token_id=-1)
        single_b = model.generate(b[None], images[1:], max_new_tokens=n, eos_token_id=-1)
        ref_a = greedy_without_cache(model, a[None], images[:1], torch.ones_like(a)[None], n)
        ref_b = greedy_without_cache(model, b[None], images[1:], torch.ones_like(b)[None], n)
        ids, mask = left_pad([a, b])
        batch = model.generate(ids, images, mask, max_new_tokens=n, eos_token_id=-1)
        ref_batch = greedy_without_cache(model, ids, images, mask, n)
    assert single_a.shape == (1, n)
    assert torch.equal(single_a, ref_a) and torch.equal(single_b, ref_b)
    assert torch.equal(batch, torch.cat([single_a, single_b]))
    assert torch.equal(ref_batch, batch)
    assert len(set(batch[0].tolist())) > 1  # not a degenerate repetition


def test_generation_stops_at_eos_and_fills():
    model = lively_model()
    cfg = model.cfg
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    ids, mask = left_pad([prompt(cfg, 4, 5, 10), prompt(cfg, 1, 2, 11)])
    free = model.generate(ids, images, mask, max_new_tokens=10, eos_token_id=-1)
    eos = int(free[0, 2])  # row 0 produces it at step 2
    out = model.generate(ids, images, mask, max_new_tokens=10, eos_token_id=eos)
    hits = [(row == eos).nonzero()[0].item() if (row == eos).any() else None for row in free]
    stop = max(h for h in hits if h is not None) + 1 if all(h is not None for h in hits) else 10
    assert out.shape == (2, stop)
    for r, h in enumerate(hits):
        if h is not None:
            assert torch.equal(out[r, : h + 1], free[r, : h + 1])
            assert (out[r, h:] == eos).all()
    with pytest.raises(ValueError, match="LEFT"):
        model.generate(torch.tensor([[7, 8, 0]]), None, torch.tensor([[1, 1, 0]]))


# ------------------------------------------------------------------------------------------ save / load
def test_save_load_roundtrip(tmp_path):
    model = make_model(seed=1)
    cfg = model.cfg
    model.save_pretrained(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["model_type"] == "nanovlm" and conf["image_token_id"] == IMG
    loaded = VisionLanguageModel.from_pretrained(tmp_path).eval()
    assert loaded.decoder.head.weight is loaded.decoder.token_embedding.weight
    ids = torch.stack([prompt(cfg, 2, 3, 0)])
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(ids, images)[0], loaded(ids, images)[0])


def test_load_errors_name_the_file(tmp_path):
    make_model().save_pretrained(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**conf, "lm_n_blocks": 4}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor decoder\.blocks\.3\.\S+ missing"):
        VisionLanguageModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**conf, "lm_hidden_dim": 64}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor \S+ has shape"):
        VisionLanguageModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**conf, "bogus": 1}))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown nanoVLM config keys: bogus"):
        VisionLanguageModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="config.json"):
        VisionLanguageModel.from_pretrained(tmp_path / "nowhere")
    # the adapter turns them into the CLI's one-line UserError, message unchanged
    with pytest.raises(UserError, match=r"^\S+config\.json: unknown nanoVLM config keys: bogus$"):
        NanoVLMAdapter.load(tmp_path)


def test_nanovlm_imports_nothing_from_vlm_grades():
    """The bundled nanovlm package stands alone: importing every module of it loads no vlm_grades module."""
    import nanovlm

    root = Path(nanovlm.__file__).parent
    code = ("import importlib, pkgutil, sys, nanovlm\n"
            "names = [m.name for m in pkgutil.iter_modules(nanovlm.__path__)]\n"
            "for name in names:\n"
            "    importlib.import_module('nanovlm.' + name)\n"
            "print(' '.join(names))\n"
            "print(' '.join(sorted(n for n in sys.modules if n.split('.')[0] == 'vlm_grades')))\n")
    env = {**os.environ, "PYTHONPATH": str(root.parent)}
    names, loaded = subprocess.run([sys.executable, "-c", code], env=env, cwd=root.parent, capture_output=True,
                                   text=True, check=True).stdout.split("\n")[:2]
    assert {"weights", "vision_language_model", "native_format"} <= set(names.split())
    assert loaded == ""
