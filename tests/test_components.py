"""Component registry: exact tagging of nanoVLM, tiny Qwen2.5-VL (both name layouts, LoRA), generic VLMs."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from torch import nn

from conftest import tiny_nanovlm
from vlm_grades.components import MODALITIES, build_registry, registry_table
from vlm_grades.errors import UserError

from tiny_qwen import random_qwen as tiny_qwen




class OldLayoutQwen(nn.Module):
    """The transformers < 4.52 module tree: `visual.`, `model.layers.`, `model.embed_tokens`, `lm_head`."""

    def __init__(self, new):
        super().__init__()
        self.visual = new.model.visual
        self.model = nn.Module()
        lm = new.model.language_model
        self.model.embed_tokens, self.model.layers, self.model.norm = lm.embed_tokens, lm.layers, lm.norm
        self.lm_head = new.lm_head


def kinds(reg, modality):
    return Counter(c.kind for c in reg.by_modality()[modality])


def test_nanovlm_every_block_linear_and_projector():
    model = tiny_nanovlm()
    reg = build_registry(model)
    assert reg.architecture == "nanovlm"
    assert [len(reg.by_modality()[m]) for m in MODALITIES] == [8, 1, 21]
    assert kinds(reg, "vision") == {"attn.qkv": 2, "attn.o": 2, "mlp.fc1": 2, "mlp.fc2": 2}
    assert kinds(reg, "language") == {k: 3 for k in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate",
                                                     "mlp.up", "mlp.down")}
    proj = reg.by_modality()["projector"][0]
    assert (proj.name, proj.kind, proj.layer, [n for n, _ in proj.params]) == ("MP.proj", "proj", 0, ["weight"])
    qkv = reg.get("vision_encoder.blocks.1.attn.qkv_proj")
    assert (qkv.layer, [n for n, _ in qkv.params], qkv.numel) == (1, ["weight", "bias"], 384 * 128 + 384)
    assert qkv.module is model.vision_encoder.blocks[1].attn.qkv_proj
    # every Linear of the blocks and the projector is tagged, nothing else
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {c.name for c in reg} == {n for n in linears if ".blocks." in n or n.startswith("MP.")}
    # every parameter lands in exactly one modality; norms and embeddings included, tied head once
    mp = reg.modality_parameters(model)
    assert sum(len(v) for v in mp.values()) == len(list(model.parameters()))
    names = {m: {n for n, _ in v} for m, v in mp.items()}
    assert "vision_encoder.patch_embedding.position_embedding" in names["vision"]
    assert "vision_encoder.layer_norm.weight" in names["vision"]
    assert "decoder.token_embedding.weight" in names["language"] and "decoder.norm.weight" in names["language"]
    assert names["projector"] == {"MP.proj.weight"}
    js = json.loads(json.dumps(reg.to_json()))
    assert js["architecture"] == "nanovlm" and len(js["components"]) == 30
    assert js["modalities"]["projector"] == {"parameters": 65536, "monitored_parameters": 65536}
    assert js["components"][0] == {"name": "vision_encoder.blocks.0.attn.qkv_proj", "modality": "vision",
                                   "layer": 0, "kind": "attn.qkv", "numel": 49536}


QWEN_VISION = {"attn.qkv": 2, "attn.o": 2, "mlp.gate": 2, "mlp.up": 2, "mlp.down": 2}
QWEN_TEXT = {k: 2 for k in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")}


def test_qwen_new_layout():
    model = tiny_qwen()
    reg = build_registry(model)
    assert reg.architecture == "qwen2_5_vl" and "4.52" in reg.layout
    assert [len(reg.by_modality()[m]) for m in MODALITIES] == [10, 2, 14]
    assert kinds(reg, "vision") == QWEN_VISION and kinds(reg, "language") == QWEN_TEXT
    assert [c.name for c in reg.by_modality()["projector"]] == ["model.visual.merger.mlp.0",
                                                                 "model.visual.merger.mlp.2"]
    assert reg.get("model.visual.blocks.1.attn.proj").kind == "attn.o"
    assert reg.get("model.language_model.layers.1.self_attn.o_proj").layer == 1
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {c.name for c in reg} == linears - {"lm_head"}
    mp = reg.modality_parameters(model)
    names = {m: {n for n, _ in v} for m, v in mp.items()}
    assert "model.visual.merger.ln_q.weight" in names["projector"]
    assert "model.visual.patch_embed.proj.weight" in names["vision"]
    assert {"lm_head.weight", "model.language_model.embed_tokens.weight"} <= names["language"]
    assert sum(len(v) for v in mp.values()) == len(list(model.parameters()))


def test_qwen_old_layout():
    model = OldLayoutQwen(tiny_qwen())
    reg = build_registry(model, "qwen2_5_vl")
    assert "older" in reg.layout
    assert [len(reg.by_modality()[m]) for m in MODALITIES] == [10, 2, 14]
    assert kinds(reg, "vision") == QWEN_VISION and kinds(reg, "language") == QWEN_TEXT
    assert reg.get("visual.merger.mlp.2").modality == "projector"
    assert reg.get("model.layers.0.mlp.down_proj").module is model.model.layers[0].mlp.down_proj
    names = {m: {n for n, _ in v} for m, v in reg.modality_parameters(model).items()}
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= names["language"]
    assert build_registry(model).architecture == "qwen2_5_vl"          # detected too


def test_qwen_peft_lora_components_are_adapter_factors():
    from peft import LoraConfig, get_peft_model

    targets = ["qkv", "attn.proj", "gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj",
               "mlp.0", "mlp.2"]
    model = get_peft_model(tiny_qwen(), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    reg = build_registry(model)
    assert reg.architecture == "qwen2_5_vl"
    assert [len(reg.by_modality()[m]) for m in MODALITIES] == [10, 2, 14]
    assert all(c.lora for c in reg)
    q = reg.get("model.language_model.layers.0.self_attn.q_proj")
    assert [n for n, _ in q.params] == ["lora_A.default.weight", "lora_B.default.weight"]
    assert q.numel == 4 * 32 + 32 * 4
    assert all(p.requires_grad for c in reg for _, p in c.params)
    # base weights are frozen and not watched; every parameter still has a modality
    watched = {id(p) for c in reg for _, p in c.params}
    assert all(id(p) in watched for _, p in model.named_parameters() if p.requires_grad)
    mp = reg.modality_parameters(model)
    assert sum(len(v) for v in mp.values()) == len(list(model.parameters()))
    assert any(n == "model.visual.blocks.0.attn.qkv.base_layer.weight" for n, _ in mp["vision"])


def test_lora_on_language_only_leaves_vision_unmonitored():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_qwen(), LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    reg = build_registry(model)
    assert [len(reg.by_modality()[m]) for m in MODALITIES] == [0, 0, 4]
    assert len(reg.untrainable) == 10 + 2 + 10


def test_lora_with_a_fully_trained_projector_monitors_its_trained_copy():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_qwen(), LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                                                   modules_to_save=["merger"]))
    reg = build_registry(model)
    assert [len(reg.by_modality()[m]) for m in MODALITIES] == [0, 2, 4]
    copy = model.base_model.model.model.visual.merger.modules_to_save["default"]
    for index in (0, 2):
        c = reg.get(f"model.visual.merger.mlp.{index}")
        assert c.kind == "proj" and not c.lora and c.module is copy.mlp[index]
        assert [n for n, _ in c.params] == ["weight", "bias"] and all(p.requires_grad for _, p in c.params)
    assert not any("original_module" in n or "modules_to_save" in n for n in reg.untrainable)
    projector = {n for n, _ in reg.modality_parameters(model)["projector"]}
    assert "model.visual.merger.modules_to_save.default.ln_q.weight" in projector       # finalized with it
    assert "model.visual.merger.original_module.mlp.0.weight" in projector


def test_generic_fallback_matches_qwen_and_llava():
    reg = build_registry(tiny_qwen(), "generic")
    assert [len(reg.by_modality()[m]) for m in MODALITIES] == [10, 2, 14]
    assert kinds(reg, "vision") == QWEN_VISION and kinds(reg, "language") == QWEN_TEXT

    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8).to_dict(),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                num_key_value_heads=1, vocab_size=64).to_dict(), image_token_id=63)
    llava = LlavaForConditionalGeneration(cfg)
    reg = build_registry(llava)
    assert reg.architecture == "generic"
    assert [len(reg.by_modality()[m]) for m in MODALITIES] == [12, 2, 21]
    assert kinds(reg, "vision") == {"attn.q": 2, "attn.k": 2, "attn.v": 2, "attn.o": 2, "mlp.fc1": 2, "mlp.fc2": 2}
    assert sum(len(v) for v in reg.modality_parameters(llava).values()) == len(list(llava.parameters()))


def test_rule_set_matching_nothing_or_missing_modality_is_an_error():
    with pytest.raises(UserError, match="matched no matrix"):
        build_registry(tiny_qwen(), "nanovlm")
    nano = tiny_nanovlm()
    del nano.MP
    with pytest.raises(UserError, match="projector"):
        build_registry(nano)
    with pytest.raises(UserError, match="no vision"):
        build_registry(nn.Sequential(nn.Linear(2, 2)), "generic")
    with pytest.raises(UserError, match="architecture"):
        build_registry(tiny_qwen(), "llava")


def test_table_and_command(tmp_path, capsys):
    from vlm_grades.cli import main

    text = registry_table(build_registry(tiny_nanovlm()))
    assert "vision: 8 components" in text and "mlp.fc1" in text and "language: 21 components" in text
    assert main(["components", "--model", "nanovlm", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "projector: 1 components, 65,536 monitored" in out
    tiny_qwen().config.save_pretrained(tmp_path)
    assert main(["components", "--model", "qwen2.5-vl", "--model-path", str(tmp_path), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert len(js["components"]) == 26 and js["architecture"] == "qwen2_5_vl"
    assert main(["components", "--model", "qwen2.5-vl", "--model-path", str(tmp_path / "nope")]) == 2
    assert "--model-path" in capsys.readouterr().err
