"""The evaluation runner with a tiny fake adapter (the metrics themselves are real): batching, files in
the official formats, per-sample JSONL, and the same scores as `vlm-grades score` on the written files."""
import json

import pytest
import torch

from eval import formats, runner
from nanovlm import BASE_DIR
from conftest import one_line_error
from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError

# a real model folder (the shipped nanoVLM base) for `eval --model`, which is checked before the data is read;
# the tests below answer with fake adapters in its place
BASE = str(BASE_DIR)


class FakeAdapter:
    """Answers from a lookup table keyed by prompt; records batch sizes."""
    architecture = "fake"

    def __init__(self, answers, short=False):
        self.answers, self.short = answers, short
        self.model = torch.nn.Linear(2, 2)
        self.batches, self.modes = [], []

    def preprocess(self, sample, train=False):
        assert train is False
        return {"prompt": sample.prompt}

    def collate(self, items):
        return {"prompts": [i["prompt"] for i in items]}

    def generate(self, batch, max_new_tokens):
        self.batches.append(len(batch["prompts"]))
        self.modes.append((self.model.training, torch.is_grad_enabled()))
        out = [self.answers[p] for p in batch["prompts"]]
        return out[:-1] if self.short else out


def _vqa_samples():
    rows = [("1", ["yes"] * 10, "yes/no", "is the", "yes"),
            ("2", ["2"] * 2 + ["3"] * 8, "number", "how many", "two"),
            ("3", ["red"] * 10, "other", "what color", "blue"),
            ("4", ["1"] * 10, "number", "how many", "1"),
            ("5", ["dog"] * 9 + ["puppy"], "other", "what is", "A dog.")]
    samples = [Sample(id=q, image="unused.png", prompt=f"Q{q}?", targets=[a[0]], task="vqav2",
                      meta={"answers": a, "answer_type": t, "question_type": qt}) for q, a, t, qt, _ in rows]
    return samples, {f"Q{q}?": pred for q, *_, pred in rows}


def test_evaluate_vqav2_writes_official_files_and_scores(tmp_path):
    samples, answers = _vqa_samples()
    adapter = FakeAdapter(answers)
    adapter.model.train()
    result = runner.evaluate(adapter, samples, "vqav2", tmp_path, batch_size=2, progress=False)
    assert adapter.batches == [2, 2, 1]
    assert adapter.modes[0] == (False, False)          # eval mode, no autograd during generation
    assert adapter.model.training                       # restored for the training loop
    # 1: 1.0, 2: "two" -> "2", 2 matches -> 0.6, 3: 0, 4: 1.0, 5: "A dog." -> "dog", 9 matches -> 1.0
    assert result["score"] == pytest.approx(100 * 3.6 / 5)
    assert result["metrics"]["per_answer_type"]["number"] == pytest.approx(80.0)
    assert result["generation"]["samples"] == 5 and result["generation"]["max_new_tokens"] == 16

    written = json.loads((tmp_path / "vqav2_predictions.json").read_text())
    assert written[0] == {"question_id": 1, "answer": "yes"} and len(written) == 5
    lines = [json.loads(l) for l in (tmp_path / "vqav2_samples.jsonl").read_text().splitlines()]
    assert lines[1]["id"] == "2" and lines[1]["prompt"] == "Q2?" and lines[1]["prediction"] == "two"
    assert lines[1]["references"] == ["2"] * 2 + ["3"] * 8 and lines[1]["score"] == pytest.approx(0.6)
    assert lines[0]["correct"] is True and lines[2]["correct"] is False
    assert json.loads((tmp_path / "vqav2_scores.json").read_text())["score"] == pytest.approx(result["score"])

    # scoring the written file from the outside gives the same numbers
    refs = runner.references_from_samples("vqav2", samples)
    again, _ = runner.score_predictions("vqav2", formats.read_predictions("vqav2", tmp_path / "vqav2_predictions.json"), refs)
    assert again["metrics"] == result["metrics"]


def test_evaluate_gqa_and_easyvqa(tmp_path):
    types = [("verify", "attr"), ("query", "rel"), ("query", "obj")]
    samples = [Sample(id=f"g{i}", image="x.png", prompt=f"P{i}", targets=[a], task="gqa",
                      meta={"is_balanced": i != 2, "types": {"structural": s, "semantic": m}})
               for i, (a, (s, m)) in enumerate(zip(["yes", "left", "cup"], types))]
    adapter = FakeAdapter({"P0": "Yes.", "P1": "right", "P2": "cup"})
    result = runner.evaluate(adapter, samples, "gqa", tmp_path, progress=False)
    assert result["score"] == 0.0 and result["metrics"]["protocol"] == "official"    # "Yes." is not "yes"
    result = runner.evaluate(adapter, samples, "gqa", tmp_path, progress=False, lmms_eval=True)
    assert result["score"] == 50.0 and result["metrics"]["binary"] == 100.0 and result["metrics"]["open"] == 0.0
    assert result["metrics"]["unbalanced_skipped"] == 1
    written = json.loads((tmp_path / "gqa_predictions.json").read_text())
    assert written[0] == {"questionId": "g0", "prediction": "Yes."}
    lines = [json.loads(l) for l in (tmp_path / "gqa_samples.jsonl").read_text().splitlines()]
    assert lines[2]["score"] is None and "correct" not in lines[2] and lines[0]["correct"] is True

    samples = [Sample(id=str(i), image="x.png", prompt=f"E{i}", targets=[a], task="easyvqa",
                      meta={"answer_kind": k}) for i, (a, k) in enumerate([("red", "color"), ("circle", "shape")])]
    result = runner.evaluate(FakeAdapter({"E0": "red", "E1": "square"}), samples, "easyvqa", tmp_path, progress=False)
    assert result["score"] == 50.0 and result["metrics"]["per_kind"] == {"color": 100.0, "shape": 0.0}


def test_evaluate_easyvqa_caption(tmp_path):
    samples = [Sample(id=str(i), image="x.png", prompt="Caption:" + str(i), targets=[c], task="easyvqa-caption",
                      meta={"image_id": i}) for i, c in enumerate(["a red triangle", "a blue circle", "a teal circle"])]
    adapter = FakeAdapter({"Caption:0": "A red triangle.", "Caption:1": "a red circle", "Caption:2": "a teal square"})
    result = runner.evaluate(adapter, samples, "easyvqa-caption", tmp_path, progress=False)
    m = result["metrics"]
    assert m["accuracy"] == pytest.approx(100 / 3)
    assert m["color"] == pytest.approx(200 / 3) and m["shape"] == pytest.approx(200 / 3)
    written = json.loads((tmp_path / "easyvqa-caption_predictions.json").read_text())
    assert written[0] == {"image_id": 0, "caption": "A red triangle."}
    assert "accuracy" in runner.format_table(result)


def test_evaluate_errors(tmp_path):
    samples, answers = _vqa_samples()
    with pytest.raises(RuntimeError, match="returned 1 answers for a batch of 2"):
        runner.evaluate(FakeAdapter(answers, short=True), samples, "vqav2", tmp_path, batch_size=2, progress=False)
    with pytest.raises(UserError, match="unknown task"):
        runner.evaluate(FakeAdapter(answers), samples, "mmstar", tmp_path, progress=False)
    with pytest.raises(UserError, match="duplicate sample ids"):
        runner.evaluate(FakeAdapter(answers), samples + samples[:1], "vqav2", tmp_path, progress=False)
    with pytest.raises(UserError, match="no samples"):
        runner.evaluate(FakeAdapter(answers), [], "vqav2", tmp_path, progress=False)


def test_eval_cli_with_easyvqa(monkeypatch, tmp_path, capsys):
    """`vlm-grades eval` wiring: real easy-VQA samples, a fake model answering "yes"."""
    import vlm_grades.models
    from vlm_grades.cli import main

    class Yes(FakeAdapter):
        def generate(self, batch, max_new_tokens):
            return ["yes"] * len(batch["prompts"])

    monkeypatch.setattr(vlm_grades.models, "load_for_eval", lambda path: Yes({}))
    code = main(["eval", "--task", "easyvqa", "--model", BASE, "--max-samples", "30",
                 "--batch-size", "8", "--out", str(tmp_path / "out"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "easyvqa_scores.json").read_text())
    assert result["n"] == 30 and "accuracy" in out
    lines = (tmp_path / "out" / "easyvqa_samples.jsonl").read_text().splitlines()
    assert len(lines) == 30
    assert main(["eval", "--task", "vqav2", "--model", "x"]) == 2
    assert "--data" in capsys.readouterr().err


def test_predictions_are_on_disk_before_scoring_starts(tmp_path, monkeypatch):
    samples = [Sample(id=str(i), image="x.png", prompt="Q?", targets=["yes"], task="easyvqa") for i in range(3)]

    def scoring_fails(*args, **kwargs):
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(runner, "score_predictions", scoring_fails)
    with pytest.raises(RuntimeError):
        runner.evaluate(FakeAdapter({"Q?": "yes"}), samples, "easyvqa", tmp_path / "out", progress=False)
    assert len(json.loads((tmp_path / "out" / "easyvqa_predictions.json").read_text())) == 3


@pytest.mark.slow
def test_evaluate_coco(tmp_path):
    import shutil
    if shutil.which("java") is None:
        pytest.skip("Java not installed")
    samples = [Sample(id=str(i), image="x.png", prompt="Caption:", targets=refs, task="coco", meta={"image_id": i})
               for i, refs in [(5, ["a cat on a mat", "a cat sits on a mat"]), (6, ["a dog in the park", "a dog runs"])]]
    result = runner.evaluate(FakeAdapter({"Caption:": "a cat on a mat"}), samples, "coco", tmp_path, progress=False,
                             spice=False)
    assert result["metric"] == "CIDEr" and result["n"] == 2
    written = json.loads((tmp_path / "coco_predictions.json").read_text())
    assert written == [{"image_id": 5, "caption": "a cat on a mat"}, {"image_id": 6, "caption": "a cat on a mat"}]
    line = json.loads((tmp_path / "coco_samples.jsonl").read_text().splitlines()[0])
    assert set(line["score"]) >= {"Bleu_4", "METEOR", "CIDEr"}


class Echo(FakeAdapter):
    """Answers each question with the id written in it ("... thing 9001?", "Is the object 20000001 on ...")."""

    def __init__(self):
        super().__init__({})

    def generate(self, batch, max_new_tokens):
        return [p.split("thing ")[-1].split("object ")[-1].split("?")[0].split(" ")[0] for p in batch["prompts"]]


def _eval(monkeypatch, capsys, *argv):
    import vlm_grades.models
    from vlm_grades.cli import main

    monkeypatch.setattr(vlm_grades.models, "load_for_eval", lambda path: Echo())
    code = main(["eval", "--model", BASE, "--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_vqav2_test_dev_submission_covers_every_test2015_question(monkeypatch, capsys, tmp_path):
    from fixtures_data import write_vqav2

    dev = write_vqav2(tmp_path / "vqa", split="test-dev", annotations=False)
    full = write_vqav2(tmp_path / "vqa", split="test", annotations=False, image_ids=(9, 25, 42, 77))
    out = tmp_path / "out"
    argv = ("--task", "vqav2", "--data", str(tmp_path / "vqa"), "--split", "test-dev", "--out", str(out))
    code, _, err = _eval(monkeypatch, capsys, *argv)
    assert code == 2 and "--allow-unanswered" in err and not out.exists()

    code, stdout, err = _eval(monkeypatch, capsys, *argv, "--allow-unanswered")
    assert code == 0, err
    submission = json.loads((out / "vqav2_submission.json").read_text())
    # the six test-dev questions answered, the two other test2015 questions empty, in the test2015 file's order
    assert submission == [{"question_id": q, "answer": str(q) if q in dev["question_ids"] else ""}
                          for q in full["question_ids"]]
    assert len(json.loads((out / "vqav2_predictions.json").read_text())) == 6
    assert not (out / "vqav2_scores.json").exists()
    assert "not scored" in stdout and "8 questions (6 answered, 2 empty)" in stdout
    assert "v2_OpenEnded_mscoco_test2015_questions.json" in stdout

    # without the test2015 questions file: the test-dev questions only, and a note saying what the server expects
    (tmp_path / "vqa" / "v2_OpenEnded_mscoco_test2015_questions.json").unlink()
    code, stdout, err = _eval(monkeypatch, capsys, *argv, "--allow-unanswered")
    assert code == 0, err
    submission = json.loads((out / "vqav2_submission.json").read_text())
    assert submission == [{"question_id": q, "answer": str(q)} for q in dev["question_ids"]]
    assert "every test2015 question" in err and "v2_OpenEnded_mscoco_test2015_questions.json" in err


def test_gqa_questions_without_answers_give_a_predictions_file(monkeypatch, capsys, tmp_path):
    from fixtures_data import write_gqa

    d = write_gqa(tmp_path / "gqa")
    records = {q: {k: v for k, v in r.items() if k not in ("answer", "fullAnswer")} for q, r in d["records"].items()}
    d["questions"].write_text(json.dumps(records))
    out = tmp_path / "out"
    argv = ("--task", "gqa", "--data", d["source"], "--split", "testdev_balanced", "--out", str(out))
    code, _, err = _eval(monkeypatch, capsys, *argv)
    assert code == 2
    one_line_error(err, "missing field 'answer'", "`vlm-grades eval --allow-unanswered`")
    code, stdout, err = _eval(monkeypatch, capsys, *argv, "--allow-unanswered")
    assert code == 0, err
    assert json.loads((out / "gqa_submission.json").read_text()) == [
        {"questionId": q, "prediction": q} for q in d["question_ids"]]
    assert "not scored" in stdout and "6 questions (6 answered, 0 empty)" in stdout


class Silent(FakeAdapter):
    def generate(self, batch, max_new_tokens):
        return ["" if i % 3 else " " for i in range(len(batch["prompts"]))]


def test_submission_summary_counts_empty_generations_as_empty(monkeypatch, capsys, tmp_path):
    import vlm_grades.models
    from fixtures_data import write_gqa
    from vlm_grades.cli import main

    d = write_gqa(tmp_path / "gqa")
    monkeypatch.setattr(vlm_grades.models, "load_for_eval", lambda path: Silent({}))
    code = main(["eval", "--model", BASE, "--no-progress", "--task", "gqa", "--data", d["source"], "--split",
                 "testdev_balanced", "--out", str(tmp_path / "out"), "--allow-unanswered"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "6 questions (0 answered, 6 empty)" in stdout


@pytest.mark.parametrize("argv,message", [
    (("--task", "coco", "--data", "x"), "--allow-unanswered: only for vqav2 and gqa"),
    (("--task", "gqa", "--data", "x", "--lmms-eval"), "--allow-unanswered: predictions are not scored"),
])
def test_allow_unanswered_bad_combinations(monkeypatch, capsys, argv, message):
    code, _, err = _eval(monkeypatch, capsys, *argv, "--allow-unanswered")
    assert code == 2
    one_line_error(err, message)
