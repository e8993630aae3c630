"""--model-path is checked before any data is read: a nanoVLM checkpoint in nanoVLM's own format (v0.1 and the
tiled main-branch pipeline) whose tensors do not fit its config.json is refused from the safetensors header."""
from __future__ import annotations

import json

import pytest

from test_nanovlm_native import tiled_config, v01_config, vocab, write_checkpoint, write_tokenizer
from vlm_grades.cli import main
from vlm_grades.errors import UserError
from vlm_grades.models.precheck import check_nanovlm_tensors, safetensors_shapes


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(params=["v0.1", "tiled"])
def config(request, tok):
    tiled = request.param == "tiled"
    return (tiled_config if tiled else v01_config)(tok, vocab(tok, tiled))


def test_a_matching_checkpoint_passes(config, tmp_path):
    folder = write_checkpoint(tmp_path / "ok", config)
    check_nanovlm_tensors(folder)
    assert safetensors_shapes(folder / "model.safetensors")["MP.proj.weight"] == (32, 32 * 4)


@pytest.mark.parametrize("change, match", [
    ({"lm_inter_dim": 128}, r"model.safetensors: tensor decoder.blocks.0.mlp.gate_proj.weight has shape \(64, 32\), "
                            r"the nanoVLM config expects \(128, 32\)"),
    ({"lm_n_blocks": 3}, "tensor decoder.blocks.2.* missing"),
    ({"vit_n_blocks": 1}, "unused tensor vision_encoder.blocks.1"),
])
def test_config_that_does_not_fit_the_weights_is_refused(config, tmp_path, change, match):
    folder = write_checkpoint(tmp_path / "bad", config)
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match=match):
        check_nanovlm_tensors(folder)


def test_train_refuses_it_before_reading_the_data(config, tmp_path, capsys):
    folder = write_checkpoint(tmp_path / "bad", config)
    (folder / "config.json").write_text(json.dumps({**config, "lm_inter_dim": 128}))
    code = main(["train", "--model-path", str(folder), "--task", "vqav2", "--split", "val", "--data",
                 str(tmp_path / "no-data"), "--steps", "2", "--alpha", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "the nanoVLM config expects (128, 32)" in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_cut_off_weights_file_is_named(config, tmp_path):
    folder = write_checkpoint(tmp_path / "cut", config)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match="model.safetensors: cut off"):
        check_nanovlm_tensors(folder)
