"""`vlm-grades eval` on a trained run reproduces the score that `vlm-grades train` printed."""
import json

import pytest

from vlm_grades.cli import main


@pytest.mark.slow
def test_eval_reproduces_training_score(trained_run, tmp_path):
    run, printed = trained_run
    trained = json.loads((run / "summary.json").read_text())["eval"]["score"]
    assert f"score {trained:.2f}" in printed

    rc = main(["eval", "--task", "easyvqa", "--model", str(run), "--max-samples", "16", "--batch-size", "7",
               "--out", str(tmp_path / "again"), "--no-progress"])
    assert rc == 0
    again = json.loads((tmp_path / "again" / "easyvqa_scores.json").read_text())
    assert again["score"] == pytest.approx(trained)
    # the same predictions, not just the same number: batch size and padding must not change answers
    first = [json.loads(l)["prediction"] for l in open(run / "eval" / "easyvqa_samples.jsonl")]
    second = [json.loads(l)["prediction"] for l in open(tmp_path / "again" / "easyvqa_samples.jsonl")]
    assert first == second
