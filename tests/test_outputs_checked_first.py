"""Output places are checked before the work that fills them (eval, score, export --out), computed predictions
are written before anything else can fail, and a closed stdout (`| head`) ends a command quietly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanovlm import BASE_DIR
from vlm_grades.cli import main

BASE = str(BASE_DIR)   # the shipped nanoVLM, a model folder


def _one_line_error(capsys, argv, culprit):
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and culprit in lines[0], err
    return out


@pytest.mark.parametrize("where", ["a-file", "/proc/vlm-grades-test/eval"])
def test_eval_out_that_cannot_be_written_is_refused_before_generating(capsys, tmp_path, where):
    out = tmp_path / where if where == "a-file" else Path(where)
    if where == "a-file":
        out.write_text("keep")
    _one_line_error(capsys, ["eval", "--task", "easyvqa", "--model", BASE, "--max-samples", "2", "--no-progress",
                             "--out", str(out)], f"--out {out}")
    assert where != "a-file" or out.read_text() == "keep"


@pytest.mark.parametrize("model, culprit", [("{tmp}/no-model", "--model: {tmp}/no-model: no such folder"),
                                            ("{tmp}", "no config.json"),
                                            ("{tmp}/junk", "junk/config.json: not valid JSON")])
def test_eval_model_is_checked_before_the_data_is_read(capsys, tmp_path, model, culprit):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{junk")
    _one_line_error(capsys, ["eval", "--task", "vqav2", "--data", str(tmp_path / "no-data"), "--model",
                             model.format(tmp=tmp_path), "--out", str(tmp_path / "o")], culprit.format(tmp=tmp_path))


def test_eval_writes_to_a_new_folder(capsys, tmp_path):
    out = tmp_path / "deep" / "er"
    assert main(["eval", "--task", "easyvqa", "--model", BASE, "--max-samples", "2", "--no-progress",
                 "--out", str(out)]) == 0
    assert len(json.loads((out / "easyvqa_predictions.json").read_text())) == 2


@pytest.mark.parametrize("where", ["/proc/vlm-grades-test/s.json", "folder"])
def test_score_out_that_cannot_be_written_is_refused_before_scoring(capsys, tmp_path, where):
    out = Path(where) if where.startswith("/") else tmp_path
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"question_id": 0, "answer": "circle"}]))
    stdout = _one_line_error(capsys, ["score", "--task", "easyvqa", "--predictions", str(preds), "--partial",
                                      "--out", str(out)], f"--out {out}")
    assert "accuracy" not in stdout      # refused before the table, not after it


def test_export_out_that_cannot_be_written_is_refused_before_loading(capsys):
    _one_line_error(capsys, ["export", BASE, "--format", "nanovlm", "--out", "/proc/vlm-grades-test/x"],
                    "--out /proc/vlm-grades-test/x")


def test_spice_required_without_its_jars_is_refused_before_generating(capsys, tmp_path):
    _one_line_error(capsys, ["eval", "--task", "coco", "--data", str(tmp_path), "--model", BASE, "--spice",
                             "--spice-corenlp", str(tmp_path), "--out", str(tmp_path / "o")], "--spice: ")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["score", "--help"],
                                  ["score", "--task", "easyvqa", "--predictions", "{preds}", "--partial"]])
def test_output_into_a_closed_pipe_ends_quietly(argv, tmp_path):
    # `vlm-grades ... | head -1`: the reader is gone before the output is written (deterministic: its end of the
    # pipe is closed before the command starts)
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"question_id": 0, "answer": "circle"}]))
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "vlm_grades", *[a.format(preds=preds) for a in argv]],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
    assert done.returncode in (0, 141)   # argparse swallows the error of its own --help output
