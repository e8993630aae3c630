"""nanoVLM checkpoints of the v0.1 and v0.2 pipelines fine-tuned on the text nanoVLM trained them on, a config
value of the wrong type named with its field, and a checkpoint without tokenizer files failing at once, with
the fix, when the tokenizer it names cannot be fetched."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from nanovlm.weights import smollm2_cache_dir, smollm2_cached
from test_nanovlm_native import v01_config, v02_config, write_checkpoint, write_tokenizer
from vlm_grades.cli import main
from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError
from vlm_grades.models.nanovlm_native import load_nanovlm

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<filename>"]
WORDS = ["Question", "Answer", "what", "color", "is", "the", "shape", "?", ":", "red", "circle"]
PROMPT = "Question: what color is the shape? Answer:"       # nanoVLM v0.1 / v0.2's VQA text


def write_bytelevel_tokenizer(folder: Path) -> Path:
    """GPT-2-style pre-tokenization as SmolLM2's tokenizer: "red" and " red" ("Ġred") are different tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + ["<unk>"] + [v for w in WORDS for v in (w, "Ġ" + w)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>",
                            additional_special_tokens=SPECIALS).save_pretrained(str(folder))
    return folder


BASE_VOCAB = len(SPECIALS) + 1 + 2 * len(WORDS)


@pytest.fixture(scope="module")
def bytelevel(tmp_path_factory) -> Path:
    return write_bytelevel_tokenizer(tmp_path_factory.mktemp("bytelevel"))


def red_sample() -> Sample:
    return Sample(id="q", image=Image.new("RGB", (40, 50), (200, 20, 20)), prompt=PROMPT, targets=["red"],
                  task="vqav2")


# ----------------------------------------------------------------------------------------------- v0.1 / v0.2 text
def test_v02_checkpoint_loads_with_the_v02_prompt_layout(bytelevel, tmp_path):
    """nanoVLM v0.2 (nanoVLM-450M): <|image|> x 64 (here 4) then "Question: ... Answer:", no chat template; its
    collator tokenizes f"{image tokens}{text}{answer}{eos}" and trains on what follows the prompt."""
    adapter = load_nanovlm(write_checkpoint(tmp_path / "v02", v02_config(bytelevel, BASE_VOCAB + 1)))
    assert adapter.pipe.kind == "v0.2" and adapter.cfg.mp_image_token_length == 4
    tok = adapter.tokenizer
    item = adapter.preprocess(red_sample(), train=True)
    assert tok.convert_ids_to_tokens(item["input_ids"]) == ["<|image|>"] * 4 + [
        "Question", ":", "Ġwhat", "Ġcolor", "Ġis", "Ġthe", "Ġshape", "?", "ĠAnswer", ":", "red", "<|endoftext|>"]
    assert item["labels"] == [-100] * 14 + tok.convert_tokens_to_ids(["red", "<|endoftext|>"])
    assert adapter.cfg.image_token_id == BASE_VOCAB == tok.convert_tokens_to_ids("<|image|>")
    # generation: the same layout up to the prompt's end
    assert adapter.preprocess(red_sample(), train=False)["input_ids"] == item["input_ids"][:14]
    assert item["pixel_values"].shape == (1, 3, 32, 32) and float(item["pixel_values"].max()) <= 1.0


def test_an_extra_token_the_pipeline_does_not_place_is_refused(bytelevel, tmp_path, capsys):
    """An image-token checkpoint with <|image_start|>/<|image_end|> (a nanoVLM commit between v0.1 and v0.2)
    would silently get a prompt without them."""
    cfg = v02_config(bytelevel, BASE_VOCAB + 3)
    cfg["vlm_extra_tokens"] = {"image_token": "<|image|>", "boi_token": "<|image_start|>", "eoi_token": "<|image_end|>"}
    folder = write_checkpoint(tmp_path / "boi", cfg)
    assert main(["components", "--model", "nanovlm", "--model-path", str(folder)]) == 2
    assert capsys.readouterr().err.endswith(f"{folder / 'config.json'}: vlm_extra_tokens boi_token is not placed by "
                                            "the v0.2 pipeline this code reproduces\n")


def test_v01_target_follows_the_prompt_without_a_space(bytelevel, tmp_path):
    """nanoVLM v0.1's collator trains f"{prompt}{answer}": "Answer:red", not "Answer: red"."""
    adapter = load_nanovlm(write_checkpoint(tmp_path / "v01", v01_config(bytelevel, BASE_VOCAB)))
    assert adapter.pipe.kind == "v0.1"
    item = adapter.preprocess(red_sample(), train=True)
    tok = adapter.tokenizer
    n = adapter.cfg.mp_image_token_length
    assert tok.convert_ids_to_tokens(item["input_ids"][n:]) == [
        "Question", ":", "Ġwhat", "Ġcolor", "Ġis", "Ġthe", "Ġshape", "?", "ĠAnswer", ":", "red", "<|endoftext|>"]
    assert item["labels"] == [-100] * (n + 10) + [tok.convert_tokens_to_ids("red"), 0]


@pytest.mark.skipif(not smollm2_cached(), reason="SmolLM2-135M not cached (vlm-grades fetch smollm2-135m)")
def test_v01_target_with_the_smollm2_tokenizer(tmp_path):
    """With SmolLM2's own tokenizer the answer is "red" (455), not " red" (2382)."""
    folder = write_checkpoint(tmp_path / "v01", v01_config(smollm2_cache_dir(), 49152))
    adapter = load_nanovlm(folder)
    item = adapter.preprocess(red_sample(), train=True)
    assert item["input_ids"][-3:] == [42, 455, 0] and item["labels"][-3:] == [-100, 455, 0]   # ":" red <eos>


# ----------------------------------------------------------------------------------------------- field types
@pytest.fixture(scope="module")
def words(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("words"))


@pytest.mark.parametrize("field,value,message", [
    ("lm_attn_scaling", None, "field lm_attn_scaling must be a number, got null"),
    ("vit_hidden_dim", "wide", 'field vit_hidden_dim must be a positive integer, got "wide"'),
    ("vit_n_heads", 0, "field vit_n_heads must be a positive integer, got 0"),
    ("lm_n_blocks", 2.5, "field lm_n_blocks must be a positive integer, got 2.5"),
    ("lm_tie_weights", "yes", 'field lm_tie_weights must be true or false, got "yes"'),
    ("lm_re_base", True, "field lm_re_base must be a number, got true"),
    ("lm_tokenizer", 7, "field lm_tokenizer must be a string, got 7"),
    ("vlm_extra_tokens", ["<|image|>"], 'field vlm_extra_tokens must be an object of strings, got ["<|image|>"]'),
])
@pytest.mark.parametrize("command", ["train", "components"])
def test_a_field_of_the_wrong_type_is_named_with_its_type(words, tmp_path, capsys, field, value, message, command):
    folder = write_checkpoint(tmp_path / "ckpt", v01_config(words, 40))
    cfg = v01_config(words, 40)
    cfg[field] = value
    (folder / "config.json").write_text(json.dumps(cfg))              # the weights stay well-formed
    args = ["--model", "nanovlm", "--model-path", str(folder)]
    if command == "train":
        args += ["--steps", "10", "--no-progress", "--out", str(tmp_path / "run")]
    assert main([command, *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{folder / 'config.json'}: {message}" in err, err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------- tokenizer offline
@pytest.fixture
def no_tokenizer(words, tmp_path) -> Path:
    """A v0.1 checkpoint as nanoVLM's save_pretrained writes it: config.json naming a hub tokenizer, no
    tokenizer files."""
    cfg = v01_config(words, 40)
    cfg["lm_tokenizer"] = "HuggingFaceTB/cosmo2-tokenizer"
    return write_checkpoint(tmp_path / "bare", cfg)


def _offline_message(folder: Path) -> str:
    return (f"{folder / 'config.json'}: the checkpoint has no tokenizer files and lm_tokenizer "
            f"HuggingFaceTB/cosmo2-tokenizer is not in the Hugging Face cache and cannot be fetched (")


@pytest.mark.timeout(60)
def test_hf_hub_offline_fails_at_once_naming_the_tokenizer_and_the_fix(no_tokenizer, monkeypatch, capsys):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    # a data path that does not exist: the tokenizer is checked with the settings, before the data is read
    rc = main(["train", "--model", "nanovlm", "--model-path", str(no_tokenizer), "--task", "vqav2", "--data",
               str(no_tokenizer.parent / "no-data"), "--no-progress", "--out", str(no_tokenizer.parent / "run")])
    err = capsys.readouterr().err
    assert time.monotonic() - start < 10
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert _offline_message(no_tokenizer) + "HF_HUB_OFFLINE is set); put tokenizer.json and tokenizer_config.json " \
        f"of HuggingFaceTB/cosmo2-tokenizer into {no_tokenizer}, or set lm_tokenizer in config.json to a folder " \
        "that holds them" in err


@pytest.mark.timeout(60)
def test_unreachable_hub_fails_after_one_short_try(no_tokenizer, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")     # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        load_nanovlm(no_tokenizer)
    assert time.monotonic() - start < 10
    assert str(e.value).startswith(_offline_message(no_tokenizer) + "http://127.0.0.1:9 cannot be reached")


def test_the_named_fixes_work(no_tokenizer, words, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    cfg = json.loads((no_tokenizer / "config.json").read_text())
    cfg["lm_tokenizer"] = str(words)                                   # lm_tokenizer names a folder
    (no_tokenizer / "config.json").write_text(json.dumps(cfg))
    assert load_nanovlm(no_tokenizer).pipe.tokenizer == str(words)
    cfg["lm_tokenizer"] = "./tokenizers/cosmo2"                        # a path that is not there
    (no_tokenizer / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"config\.json: lm_tokenizer: \./tokenizers/cosmo2: no such folder$"):
        load_nanovlm(no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):           # the tokenizer files beside the weights
        shutil.copy(words / name, no_tokenizer / name)
    assert load_nanovlm(no_tokenizer).pipe.kind == "v0.1"


def test_optional_fields_may_be_null(words, tmp_path):
    cfg = {**v01_config(words, 40), "lm_chat_template": None, "vlm_extra_tokens": None, "lm_eos_token_id": None}
    assert load_nanovlm(write_checkpoint(tmp_path / "nulls", cfg)).pipe.kind == "v0.1"


@pytest.mark.parametrize("field,value,message", [
    ("vit_hidden_dim", "wide", 'VLMConfig: vit_hidden_dim must be a positive integer, got "wide"'),
    ("lm_n_heads", 0, "VLMConfig: lm_n_heads must be a positive integer, got 0"),
    ("lm_rms_eps", None, "VLMConfig: lm_rms_eps must be a number, got null"),
    ("lm_tie_weights", 1, "VLMConfig: lm_tie_weights must be true or false, got 1"),
    ("image_token_id", -1, "VLMConfig: image_token_id must be an integer >= 0, got -1"),
])
def test_vlm_grades_own_config_names_a_mistyped_field(field, value, message):
    from nanovlm.config import VLMConfig

    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        VLMConfig.from_dict({**VLMConfig().to_dict(), field: value})


@pytest.mark.timeout(60)
def test_unreachable_hub_model_id_fails_after_one_short_try(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(UserError, match=r"^--model-path: lusxvr/nanoVLM-450M: not a local folder, and the Hugging "
                                        r"Face hub cannot serve it \(http://127\.0\.0\.1:9 cannot be reached"):
        load_nanovlm("lusxvr/nanoVLM-450M")
    assert time.monotonic() - start < 10
