"""Qwen2.5-VL adapter on a tiny random checkpoint built offline (tests/tiny_qwen.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError
from vlm_grades.models.lora import LoraSettings, is_lora_parameter
from vlm_grades.models.qwen2_5_vl import Qwen25VLAdapter, load_qwen_for_eval, modality_of


@pytest.fixture(scope="module")
def ckpt(tiny_qwen_dir) -> Path:
    return tiny_qwen_dir


@pytest.fixture
def adapter(ckpt) -> Qwen25VLAdapter:
    torch.manual_seed(0)
    return Qwen25VLAdapter.load(str(ckpt))


def samples() -> list[Sample]:
    return [
        Sample("q1", Image.new("RGB", (64, 64), (255, 0, 0)), "What shape is in the image?", ["circle"], "easyvqa"),
        Sample("q2", Image.new("RGB", (100, 60), (0, 0, 255)),
               "What color is the shape? Answer the question using a single word or phrase.", ["blue"], "easyvqa"),
    ]


def train_batch(adapter):
    return adapter.collate([adapter.preprocess(s, train=True) for s in samples()])


def gen_batch(adapter, ss=None):
    return adapter.collate([adapter.preprocess(s, train=False) for s in (ss or samples())])


def logits(adapter, batch):
    with torch.no_grad():
        return adapter.model(**adapter._inputs(batch)).logits


# ---------------------------------------------------------------- preprocessing


def test_labels_mask_everything_but_answer_and_im_end(adapter):
    tok = adapter.processor.tokenizer
    s = samples()[0]
    item = adapter.preprocess(s, train=True)
    ids, labels = item["input_ids"], item["labels"]
    assert ids.shape == labels.shape == item["attention_mask"].shape
    kept = labels != -100
    # token by token: a kept label is the token itself; kept tokens are one contiguous run
    assert torch.equal(labels[kept], ids[kept])
    pos = kept.nonzero().flatten().tolist()
    assert pos == list(range(pos[0], pos[-1] + 1))
    assert tok.decode(ids[kept]) == "circle<|im_end|>"
    assert [tok.convert_ids_to_tokens(int(i)) for i in ids[kept]][-1] == "<|im_end|>"
    # everything before is the prompt, ending with the generation prompt; image and vision tokens masked
    prompt = tok.decode(ids[: pos[0]])
    assert prompt.endswith("<|im_start|>assistant\n") and "What shape is in the image?" in prompt
    for special in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>"):
        sid = tok.convert_tokens_to_ids(special)
        assert (ids == sid).any() and not (kept & (ids == sid)).any()
    n_image = int((ids == tok.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_image == int(item["image_grid_thw"].prod()) // 4
    # the generation item is exactly the prompt part of the training item
    gen = adapter.preprocess(s, train=False)
    assert "labels" not in gen and torch.equal(gen["input_ids"], ids[: pos[0]])


def test_train_target_from_meta(adapter):
    s = samples()[0]
    s.meta["train_target"] = "red circle"
    item = adapter.preprocess(s, train=True)
    kept = item["labels"] != -100
    assert adapter.processor.tokenizer.decode(item["input_ids"][kept]) == "red circle<|im_end|>"


def test_collate_padding_and_token_counts(adapter):
    items = [adapter.preprocess(s, train=True) for s in samples()]
    b = adapter.collate(items)
    lengths = [it["input_ids"].shape[0] for it in items]
    assert lengths[0] != lengths[1] and b["input_ids"].shape == (2, max(lengths))
    short = lengths.index(min(lengths))
    assert b["attention_mask"][short, -1] == 0 and b["labels"][short, -1] == -100     # right padding
    assert b["pixel_values"].shape[0] == sum(it["pixel_values"].shape[0] for it in items)
    assert b["image_grid_thw"].shape == (2, 3) and b["ids"] == ["q1", "q2"]
    g = gen_batch(adapter)
    assert g["attention_mask"][:, -1].all() and not g["attention_mask"][:, 0].all()  # left padding
    assert g["input_ids"][~g["attention_mask"].bool()].eq(adapter.pad_id).all()
    counts = adapter.tokens_per_modality(b)
    assert counts == {"vision": b["pixel_values"].shape[0], "projector": b["pixel_values"].shape[0],
                      "language": sum(lengths)}


def test_pixel_budget_controls_image_tokens(ckpt):
    small = Qwen25VLAdapter.load(str(ckpt), min_pixels=28 * 28, max_pixels=28 * 28)
    big = Qwen25VLAdapter.load(str(ckpt), min_pixels=56 * 56, max_pixels=112 * 112)
    s = samples()[0]
    assert small.preprocess(s, False)["image_grid_thw"].tolist() == [[1, 2, 2]]
    assert big.preprocess(s, False)["image_grid_thw"].tolist() == [[1, 4, 4]]


# ---------------------------------------------------------------- training


def test_loss_matches_transformers_and_falls(adapter):
    b = train_batch(adapter)
    with torch.no_grad():
        ref = adapter.model(**adapter._inputs(b), labels=b["labels"]).loss
        assert torch.allclose(adapter.loss(b), ref, atol=1e-5)
    opt = torch.optim.AdamW(adapter.model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = adapter.loss(b)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    # the model learned the answers: greedy generation reproduces them, batched as well as one by one
    assert adapter.generate(gen_batch(adapter), max_new_tokens=4) == ["circle", "blue"]


def test_static_freeze_of_modalities(ckpt):
    a = Qwen25VLAdapter.load(str(ckpt), freeze=("vision", "projector"))
    names = {n: p.requires_grad for n, p in a.model.named_parameters()}
    assert not any(v for n, v in names.items() if ".visual." in n or n.startswith("visual."))
    assert all(v for n, v in names.items() if "visual" not in n)
    assert modality_of("model.visual.merger.mlp.0.weight") == "projector"
    assert modality_of("model.visual.blocks.0.attn.qkv.weight") == "vision"
    assert modality_of("lm_head.weight") == "language"
    assert modality_of("model.language_model.embed_tokens.weight") == "language"
    groups = a.parameters_by_modality()
    assert groups["vision"] == [] and groups["projector"] == [] and groups["language"]
    b = Qwen25VLAdapter.load(str(ckpt), freeze=("language",))
    g = b.parameters_by_modality()
    assert g["language"] == [] and g["vision"] and g["projector"]
    with pytest.raises(UserError, match="--freeze"):
        Qwen25VLAdapter.load(str(ckpt), freeze=("audio",))


def test_lora_trains_only_adapter_weights(ckpt):
    torch.manual_seed(0)
    a = Qwen25VLAdapter.load(str(ckpt), lora=LoraSettings(rank=4, alpha=8, dropout=0.0,
                                                          targets=("language", "vision"), train_fully=()))
    trainable = [n for n, p in a.model.named_parameters() if p.requires_grad]
    assert trainable and all(is_lora_parameter(n) for n in trainable)
    assert any(".visual.blocks." in n for n in trainable) and any(".language_model." in n for n in trainable)
    assert not any(".merger." in n for n in trainable)
    wrapped = {n.rsplit(".lora_", 1)[0] for n in trainable}
    assert any(n.endswith("self_attn.q_proj") for n in wrapped) and any(n.endswith("mlp.down_proj") for n in wrapped)
    assert any(n.endswith("attn.qkv") for n in wrapped)
    before = {n: p.detach().clone() for n, p in a.model.named_parameters()}
    b = train_batch(a)
    opt = torch.optim.AdamW([p for p in a.model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        a.loss(b).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = dict(a.model.named_parameters())
    for n, p in after.items():
        if is_lora_parameter(n):
            continue
        assert torch.equal(p, before[n]), f"base weight {n} changed"
    changed = [n for n in trainable if not torch.equal(after[n], before[n])]
    assert len(changed) == len(trainable)


def test_lora_trains_the_projector_fully_by_default_and_saves_it(ckpt, tmp_path):
    torch.manual_seed(0)
    a = Qwen25VLAdapter.load(str(ckpt), lora=LoraSettings(rank=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in a.model.named_parameters() if p.requires_grad]
    full = [n for n in trainable if not is_lora_parameter(n)]
    assert full and all(".visual.merger.modules_to_save." in n for n in full)
    assert any(n.endswith("mlp.0.weight") for n in full) and any(n.endswith("ln_q.weight") for n in full)
    assert all(".language_model." in n for n in trainable if is_lora_parameter(n))
    b = train_batch(a)
    take_two_steps(a, b)
    a.save(str(tmp_path / "lora"))
    loaded = load_qwen_for_eval(str(tmp_path / "lora"))
    assert loaded.lora == a.lora and loaded.lora.train_fully == ("projector",)
    assert torch.equal(logits(a, b), logits(loaded, b))            # the trained projector came back too
    trained = a.hf_model().model.visual.merger.modules_to_save["default"].mlp[0].weight
    assert not torch.equal(trained, a.hf_model().model.visual.merger.original_module.mlp[0].weight)
    # projector adapters instead: no full copy
    c = Qwen25VLAdapter.load(str(ckpt), lora=LoraSettings(rank=2, targets="all"))
    assert c.lora.train_fully == ()
    assert all(is_lora_parameter(n) for n, p in c.model.named_parameters() if p.requires_grad)
    assert any(".merger.mlp.0.lora_A." in n for n, p in c.model.named_parameters() if p.requires_grad)


def test_lora_settings_validation():
    assert LoraSettings(targets="language+vision").targets == ("language", "vision")
    assert LoraSettings(targets="both").targets == ("language", "vision")
    assert LoraSettings(targets=("all",)).targets == ("vision", "projector", "language")
    for bad in (dict(rank=0), dict(dropout=1.5), dict(targets=("audio",)), dict(bias="some")):
        with pytest.raises(UserError):
            LoraSettings(**bad)


# ---------------------------------------------------------------- generation


def test_batched_generation_equals_one_by_one(adapter):
    ss = samples()
    batched = adapter.generate(gen_batch(adapter, ss), max_new_tokens=6)
    assert len(batched) == 2 and all(isinstance(t, str) for t in batched)
    single = [adapter.generate(gen_batch(adapter, [s]), max_new_tokens=6)[0] for s in ss]
    assert batched == single
    with pytest.raises(ValueError):
        adapter.generate(train_batch(adapter), max_new_tokens=2)


# ---------------------------------------------------------------- save / load


def test_save_load_roundtrip_full(adapter, tmp_path):
    b = train_batch(adapter)
    opt = torch.optim.AdamW(adapter.model.parameters(), lr=1e-2)
    adapter.loss(b).backward()
    opt.step()
    adapter.model.eval()
    adapter.save(str(tmp_path / "final"))
    loaded = load_qwen_for_eval(str(tmp_path / "final"))
    assert not loaded.model.training and loaded.lora is None
    assert torch.equal(logits(adapter, b), logits(loaded, b))
    g = gen_batch(adapter)
    assert loaded.generate(g, 4) == adapter.generate(g, 4)
    meta = json.loads((tmp_path / "final" / "vlm_grades_model.json").read_text())
    assert meta["architecture"] == "qwen2_5_vl" and meta["max_pixels"] == adapter.max_pixels


def take_two_steps(a, b) -> None:
    """Two AdamW steps on batch b (trainable parameters only), then eval mode."""
    opt = torch.optim.AdamW([p for p in a.model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        a.loss(b).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    a.model.eval()


def test_save_load_roundtrip_lora(ckpt, tmp_path):
    torch.manual_seed(0)
    settings = LoraSettings(rank=4, alpha=8, dropout=0.0, targets=("language", "vision", "projector"))
    a = Qwen25VLAdapter.load(str(ckpt), lora=settings, min_pixels=28 * 28, max_pixels=56 * 56)
    b = train_batch(a)
    take_two_steps(a, b)
    out = tmp_path / "lora"
    a.save(str(out))
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "vlm_grades_model.json").read_text())["base_model"] == str(ckpt.resolve())
    loaded = load_qwen_for_eval(str(out))
    assert loaded.lora == settings and (loaded.min_pixels, loaded.max_pixels) == (28 * 28, 56 * 56)
    assert torch.equal(logits(a, b), logits(loaded, b))
    base = Qwen25VLAdapter.load(str(ckpt), min_pixels=28 * 28, max_pixels=56 * 56)
    assert not torch.allclose(logits(base, b), logits(loaded, b))  # the adapter is really applied


# ---------------------------------------------------------------- bad input


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_path_is_user_error(tmp_path):
    with pytest.raises(UserError) as e:
        Qwen25VLAdapter.load(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in _one_line(e)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as e:
        Qwen25VLAdapter.load(str(empty))
    assert str(empty) in _one_line(e) and "config.json" in str(e.value)


def test_wrong_model_type_is_user_error(ckpt, tmp_path):
    other = tmp_path / "llama"
    shutil.copytree(ckpt, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "llama"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError) as e:
        Qwen25VLAdapter.load(str(other))
    assert str(other) in _one_line(e) and "'llama'" in str(e.value)


def test_missing_processor_files_is_user_error(ckpt, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(ckpt / f, bare / f)
    with pytest.raises(UserError) as e:
        Qwen25VLAdapter.load(str(bare))
    assert str(bare) in _one_line(e) and "processor" in str(e.value)


def _edit_weights(ckpt, folder, edit):
    from safetensors.torch import load_file, save_file

    shutil.copytree(ckpt, folder)
    weights = load_file(str(folder / "model.safetensors"))
    edit(weights)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_weight_shape_mismatch_is_one_line_naming_the_weight(ckpt, tmp_path, capsys):
    def widen(w):   # transformers saves the older layout on disk (model.layers.N...)
        key = "model.layers.0.mlp.down_proj.weight"
        w[key] = torch.zeros(w[key].shape[0], w[key].shape[1] + 1)
    _edit_weights(ckpt, tmp_path / "wide", widen)
    with pytest.raises(UserError) as e:
        Qwen25VLAdapter.load(str(tmp_path / "wide"))
    assert "layers.0.mlp.down_proj.weight has shape [32, 65]" in _one_line(e) and "[32, 64]" in str(e.value)
    assert "LOAD REPORT" not in capsys.readouterr().err   # transformers' multi-line table is not shown


def test_missing_weights_warn_in_one_line_and_load(ckpt, tmp_path, caplog):
    key = "model.language_model.layers.1.mlp.up_proj.weight"
    _edit_weights(ckpt, tmp_path / "holey", lambda w: w.pop("model.layers.1.mlp.up_proj.weight"))
    with caplog.at_level("WARNING", logger="vlm_grades.models"):
        a = Qwen25VLAdapter.load(str(tmp_path / "holey"))
    assert [r.getMessage() for r in caplog.records if r.name == "vlm_grades.models"] == [
        f"{tmp_path / 'holey'}: 1 weight is not in the checkpoint and will start random (first: {key})"]
    assert a.model.model.language_model.layers[1].mlp.up_proj.weight.shape[0] == 64


def test_hub_id_goes_through_from_pretrained(monkeypatch):
    import transformers

    seen = []

    def fake(name, *a, **k):
        seen.append(name)
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore details")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake)
    with pytest.raises(UserError) as e:
        Qwen25VLAdapter.load("Qwen/Qwen2.5-VL-3B-Instruct")
    assert seen == ["Qwen/Qwen2.5-VL-3B-Instruct"] and "Qwen/Qwen2.5-VL-3B-Instruct" in _one_line(e)


def test_missing_local_folder_is_not_tried_on_the_hub(monkeypatch, tmp_path, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError, match="^--model-path: runs/foo: no such folder$"):
        Qwen25VLAdapter.load("runs/foo")


def test_prompt_over_max_length_is_user_error(ckpt):
    a = Qwen25VLAdapter.load(str(ckpt), max_length=8)
    with pytest.raises(UserError, match="--max-length"):
        a.preprocess(samples()[0], train=True)


def test_lora_folder_passed_as_base_is_user_error(ckpt, tmp_path):
    a = Qwen25VLAdapter.load(str(ckpt), lora=LoraSettings(rank=2))
    a.save(str(tmp_path / "ad"))
    with pytest.raises(UserError, match="LoRA adapter"):
        Qwen25VLAdapter.load(str(tmp_path / "ad"))


def test_gradient_checkpointing_with_lora(ckpt):
    """Checkpointing on: every decoder layer runs its forward again during the backward, and the adapters get
    the gradients they get without checkpointing."""
    def grads_and_calls(checkpointing: bool):
        torch.manual_seed(0)                                     # the same adapter initialization
        a = Qwen25VLAdapter.load(str(ckpt), lora=LoraSettings(rank=2, dropout=0.0),
                                 gradient_checkpointing=checkpointing)
        a.model.train()
        # hooks on the layers themselves stay outside the checkpoint (transformers checkpoints `forward`), and
        # the recompute stops at the last tensor the backward needs: count each layer's first norm
        layers = [m.input_layernorm for m in a.model.modules() if type(m).__name__ == "Qwen2_5_VLDecoderLayer"]
        calls = [0]
        for layer in layers:
            layer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        a.loss(train_batch(a)).backward()
        grads = {n: p.grad for n, p in a.model.named_parameters() if p.requires_grad}
        return grads, calls[0] / len(layers)

    grads, calls = grads_and_calls(True)
    plain, plain_calls = grads_and_calls(False)
    assert (calls, plain_calls) == (2, 1)                        # recomputed in the backward
    assert grads and all(g is not None for g in grads.values()) and set(grads) == set(plain)
    for n in grads:
        assert torch.allclose(grads[n], plain[n], rtol=1e-4, atol=1e-6), n


def test_answer_truncated_away_gives_zero_loss(ckpt):
    probe = Qwen25VLAdapter.load(str(ckpt))
    n_prompt = probe.preprocess(samples()[0], train=False)["input_ids"].shape[0]
    a = Qwen25VLAdapter.load(str(ckpt), max_length=n_prompt)
    item = a.preprocess(samples()[0], train=True)
    assert item["input_ids"].shape[0] == n_prompt and (item["labels"] == -100).all()
    loss = a.loss(a.collate([item]))
    assert loss.item() == 0.0 and loss.requires_grad
