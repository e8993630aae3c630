"""nanoVLM's own arithmetic reproduced to the last bit: the tiled resize (its float operations, in its
order) and the rotary embedding's rescaling past lm_max_position_embeddings."""
from __future__ import annotations

import math

import pytest
import torch

from nanovlm.config import VLMConfig
from nanovlm.language_model import LanguageModel
from nanovlm.tiling import tiled_size


def upstream_resize(h: int, w: int, tile: int, max_side: int, to_max_side: bool) -> tuple[int, int]:
    """nanoVLM's DynamicResize._get_new_hw, written out from its source: scale = target_long / long, then
    ceil(short * scale / tile) * tile."""
    long, short = (w, h) if w >= h else (h, w)
    target_long = max_side if to_max_side else min(max_side, math.ceil(long / tile) * tile)
    scale = target_long / long
    target_short = max(math.ceil(short * scale / tile) * tile, tile)
    return (target_short, target_long) if w >= h else (target_long, target_short)


# (h, w, resize_to_max_side_len) -> nanoVLM's (new_h, new_w) with its main config (tiles 512, at most 2048);
# the exact short side is a whole number of tiles, nanoVLM's float rounding adds one
CASES = [
    (279, 372, True, (2048, 2048)),      # exact 1536: 3 rows, nanoVLM 4
    (558, 744, True, (2048, 2048)),
    (1245, 1660, True, (2048, 2048)),
    (1245, 1660, False, (2048, 2048)),
    (1660, 1245, False, (2048, 2048)),
    (1100, 1100, False, (2048, 1536)),   # square: 4x3 tiles, not 3x3
    (372, 279, True, (2048, 2048)),
    (279, 372, False, (512, 512)),       # no rounding surprise: unchanged
    (600, 800, True, (1536, 2048)),
]


@pytest.mark.parametrize("h,w,to_max,expected", CASES)
def test_tiled_size_is_nanovlms_arithmetic(h, w, to_max, expected):
    assert upstream_resize(h, w, 512, 2048, to_max) == expected
    assert tiled_size(h, w, 512, 2048, to_max) == expected


def test_tiled_size_agrees_on_a_sweep_of_sizes():
    for tile, max_side in ((512, 2048), (512, 1536), (32, 64)):
        for to_max in (False, True):
            for h in range(1, 1800, 7):
                for w in range(1, 1800, 13):
                    assert tiled_size(h, w, tile, max_side, to_max) == upstream_resize(h, w, tile, max_side, to_max), \
                        (h, w, tile, max_side, to_max)


# ----------------------------------------------------------------------------------------------- rotary
def _llama(tmp_path, rope: dict | None = None):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, rms_norm_eps=1e-5, max_position_embeddings=32, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0, **(rope or {})})
    return transformers.LlamaForCausalLM(cfg).eval()


def test_rotary_rescales_past_lm_max_position_embeddings_as_nanovlm(tmp_path):
    """nanoVLM divides inv_freq by max_seq / lm_max_position_embeddings once a call's positions pass the field.
    For one forward over positions 0..59 that is transformers' linear RoPE scaling with factor 60 / 32."""
    from nanovlm.weights import load_smollm2

    torch.manual_seed(0)
    plain = _llama(tmp_path)
    plain.save_pretrained(tmp_path)
    lm = LanguageModel(VLMConfig(lm_hidden_dim=64, lm_inter_dim=96, lm_n_heads=4, lm_n_kv_heads=2, lm_n_blocks=2,
                                 lm_vocab_size=128, lm_re_base=100000.0, lm_max_position_embeddings=32)).eval()
    load_smollm2(lm, tmp_path)
    linear = _llama(tmp_path, {"rope_type": "linear", "factor": 60 / 32})
    linear.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 128, (2, 60), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = lm(ids)[0]
        assert (ours - linear(input_ids=ids).logits).abs().max().item() < 1e-5
        assert (ours - plain(input_ids=ids).logits).abs().max().item() > 1e-3     # the rescaling matters here
        # up to lm_max_position_embeddings positions nothing is rescaled
        short = ids[:, :32]
        assert (lm(short)[0] - plain(input_ids=short).logits).abs().max().item() < 1e-5
        # a decoding step rescales from its own position (nanoVLM's per-call rule): token 60 at position 59
        _, cache = lm(ids[:, :59], use_cache=True)
        step = lm(ids[:, 59:], kv_cache=cache, position_ids=torch.full((2, 1), 59))[0]
        assert (step[:, -1] - ours[:, -1]).abs().max().item() > 1e-4         # the cache holds keys at 59 / 32
