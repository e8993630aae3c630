"""`vlm-grades score`: official files and Hugging Face layouts in, a table and JSON out; bad input gives
one-line errors naming the file."""
import json

import pytest

from eval import coco, gqa, vqav2
from vlm_grades.cli import main
from vlm_grades.errors import UserError


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def _vqa_annotations():
    def ann(qid, answers, atype, qtype):
        return {"question_id": qid, "image_id": qid // 10, "question_type": qtype, "answer_type": atype,
                "multiple_choice_answer": answers[0],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}
    return [ann(10, ["yes"] * 10, "yes/no", "is the"),
            ann(11, ["2"] * 2 + ["3"] * 8, "number", "how many"),
            ann(20, ["red"] * 9 + ["dark red"], "other", "what color is the")]


@pytest.fixture
def vqa_files(tmp_path):
    anns = _vqa_annotations()
    annotations = _write(tmp_path / "annotations.json", {"annotations": anns})
    questions = _write(tmp_path / "questions.json", {"questions": [
        {"question_id": a["question_id"], "image_id": a["image_id"], "question": "?"} for a in anns]})
    preds = _write(tmp_path / "results.json", [{"question_id": 10, "answer": "yes"},
                                               {"question_id": 11, "answer": "two"},
                                               {"question_id": 20, "answer": "Red"}])
    return tmp_path, annotations, questions, preds


def _run(capsys, *argv):
    code = main(["score", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error(capsys, *argv):
    code, out, err = _run(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlm-grades score: error: "), err
    return lines[0]


def test_vqav2_official_files(capsys, vqa_files):
    tmp, annotations, questions, preds = vqa_files
    out_json = tmp / "scores.json"
    code, out, _ = _run(capsys, "--task", "vqav2", "--predictions", preds, "--annotations", annotations,
                        "--questions", questions, "--out", str(out_json))
    assert code == 0
    # 10: 1.0; 11: "two" -> "2" (answers differ) matches 2 -> 0.6; 20: "Red" -> "red" matches 9 -> 1.0
    result = json.loads(out_json.read_text())
    assert result["score"] == pytest.approx(100 * 2.6 / 3)
    assert result["metrics"]["per_answer_type"] == pytest.approx({"yes/no": 100.0, "number": 60.0, "other": 100.0})
    assert "accuracy" in out and "86.67" in out and "how many" in out


def test_vqav2_lmms_eval(capsys, vqa_files, tmp_path):
    _, annotations, _, _ = vqa_files
    # 10 (ten "yes"): "Yes" is 0 officially, 1 in lmms-eval (its prediction is lowercased); 11: "3" matches 8 of
    # "2" x2 + "3" x8 -> 1; 20 (nine "red", "dark red"): "red" -> 1
    preds = _write(tmp_path / "r.json", [{"question_id": 10, "answer": "Yes"}, {"question_id": 11, "answer": "3"},
                                         {"question_id": 20, "answer": "red"}])
    out_json = tmp_path / "s.json"
    code, out, _ = _run(capsys, "--task", "vqav2", "--predictions", preds, "--annotations", annotations,
                        "--out", str(out_json))
    assert code == 0 and json.loads(out_json.read_text())["score"] == pytest.approx(200 / 3)
    assert json.loads(out_json.read_text())["metrics"]["protocol"] == "official"
    assert "protocol" in out and "official" in out
    code, out, _ = _run(capsys, "--task", "vqav2", "--predictions", preds, "--annotations", annotations,
                        "--lmms-eval", "--out", str(out_json))
    assert code == 0 and json.loads(out_json.read_text())["score"] == pytest.approx(100.0)
    assert json.loads(out_json.read_text())["metrics"]["protocol"] == "lmms-eval"
    assert json.loads(out_json.read_text())["metrics"]["lmms_eval_version"] == "0.7.3"
    assert "lmms-eval 0.7.3" in out
    # ten "two" against a prediction "2": 0 officially, 1 in lmms-eval 0.7.3 (it normalizes the ten answers too)
    anns = _write(tmp_path / "a.json", {"annotations": [{"question_id": 1, "question_type": "how many",
                                                          "answer_type": "number", "multiple_choice_answer": "two",
                                                          "answers": [{"answer": "two"}] * 10}]})
    two = _write(tmp_path / "two.json", [{"question_id": 1, "answer": "2"}])
    for flags, score in (((), 0.0), (("--lmms-eval",), 100.0)):
        assert _run(capsys, "--task", "vqav2", "--predictions", two, "--annotations", anns, *flags,
                    "--out", str(out_json))[0] == 0
        assert json.loads(out_json.read_text())["score"] == score


def test_vqav2_hugging_face_layouts(tmp_path, vqa_files):
    import pyarrow as pa
    import pyarrow.parquet as pq

    anns = _vqa_annotations()
    rows = [{**a, "question": "?", "image": {"bytes": b"", "path": None}} for a in anns]
    folder = tmp_path / "hf" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "validation-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), folder / "testdev-00000-of-00001.parquet")
    from_parquet = vqav2.read_references(str(tmp_path / "hf"), split="validation")
    with pytest.raises(UserError, match="several splits; choose one with --split"):
        vqav2.read_references(str(tmp_path / "hf"))
    official = vqav2.read_references(vqa_files[1])
    assert from_parquet == official

    import datasets
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert vqav2.read_references(str(tmp_path / "saved")) == official
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows),
                          "testdev": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "dd"))
    assert vqav2.read_references(str(tmp_path / "dd"), split="val") == official
    with pytest.raises(UserError, match="choose a split with --split"):
        vqav2.read_references(str(tmp_path / "dd"))


def test_gqa_official_and_hugging_face(capsys, tmp_path):
    questions = {
        "q1": {"imageId": "i1", "question": "?", "answer": "yes", "fullAnswer": "Yes.", "isBalanced": True,
               "types": {"structural": "verify", "semantic": "attr", "detailed": "x"}},
        "q2": {"imageId": "i1", "question": "?", "answer": "left", "fullAnswer": "", "isBalanced": True,
               "types": {"structural": "query", "semantic": "rel", "detailed": "x"}},
        "q3": {"imageId": "i2", "question": "?", "answer": "cup", "fullAnswer": "", "isBalanced": False,
               "types": {"structural": "query", "semantic": "obj", "detailed": "x"}},
    }
    qfile = _write(tmp_path / "testdev_balanced_questions.json", questions)
    # an unbalanced question needs no prediction, as in the official script
    preds = _write(tmp_path / "p.json", [{"questionId": "q1", "prediction": "Yes."},
                                         {"questionId": "q2", "prediction": "right"}])
    out_json = tmp_path / "s.json"
    # the official metric: "Yes." is not "yes"
    code, out, _ = _run(capsys, "--task", "gqa", "--predictions", preds, "--questions", qfile, "--out", str(out_json))
    assert code == 0 and "official (prediction == answer)" in out
    result = json.loads(out_json.read_text())
    assert result["score"] == 0.0 and result["metrics"]["protocol"] == "official"
    code, out, _ = _run(capsys, "--task", "gqa", "--predictions", preds, "--references", qfile, "--lmms-eval",
                        "--out", str(out_json))
    assert code == 0 and "lmms-eval" in out
    result = json.loads(out_json.read_text())
    assert result["score"] == 50.0 and result["metrics"]["binary"] == 100.0 and result["metrics"]["open"] == 0.0
    assert _run(capsys, "--task", "gqa", "--predictions", preds, "--references", qfile, "--raw",
                "--out", str(out_json))[0] == 0          # the default, named as before
    assert json.loads(out_json.read_text())["score"] == 0.0

    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"id": k, **v} for k, v in questions.items()]
    path = tmp_path / "testdev_balanced_instructions.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert gqa.read_references(str(path)) == gqa.read_references(qfile)


def test_coco_reference_layouts(tmp_path):
    captions = {"images": [{"id": 1}, {"id": 2}],
                "annotations": [{"image_id": 1, "id": 1, "caption": "a cat"}, {"image_id": 1, "id": 2, "caption": "a cat."},
                                {"image_id": 2, "id": 3, "caption": "a dog"}]}
    expected = {"1": ["a cat", "a cat."], "2": ["a dog"]}
    assert coco.read_references(_write(tmp_path / "captions_val2014.json", captions)) == expected
    karpathy = {"images": [
        {"cocoid": 1, "split": "test", "sentences": [{"raw": "a cat"}, {"raw": "a cat."}]},
        {"cocoid": 2, "split": "test", "sentences": [{"raw": "a dog"}]},
        {"cocoid": 3, "split": "train", "sentences": [{"raw": "a cow"}]}]}
    kfile = _write(tmp_path / "dataset_coco.json", karpathy)
    assert coco.read_references(kfile) == expected
    assert coco.read_references(kfile, split="train") == {"3": ["a cow"]}

    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"question_id": "000000000001.jpg", "answer": ["a cat", "a cat."], "id": 7, "file_name": "000000000001.jpg"},
            {"question_id": "000000000002.jpg", "answer": ["a dog"], "id": 8, "file_name": "000000000002.jpg"}]
    (tmp_path / "hf").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hf" / "val-00000-of-00001.parquet")
    assert coco.read_references(str(tmp_path / "hf"), split="val") == expected
    assert coco.read_references(str(tmp_path / "hf"), split="validation") == expected
    assert coco.read_references(str(tmp_path / "hf")) == expected


def test_easyvqa_package_default_and_partial(capsys, tmp_path):
    import easy_vqa
    _, answers, _ = easy_vqa.get_test_questions()
    preds = [{"question_id": i, "answer": "yes"} for i in range(len(answers))]
    pfile = _write(tmp_path / "p.json", preds)
    out_json = tmp_path / "s.json"
    assert _run(capsys, "--task", "easyvqa", "--predictions", pfile, "--out", str(out_json))[0] == 0
    result = json.loads(out_json.read_text())
    assert result["score"] == pytest.approx(100 * answers.count("yes") / len(answers))
    assert result["metrics"]["per_kind"]["shape"] == 0.0

    few = _write(tmp_path / "few.json", preds[:10] + [{"question_id": 99999, "answer": "no"}])
    line = _error(capsys, "--task", "easyvqa", "--predictions", few)
    assert few in line and "9663 of the 9673 ids" in line and "1 of its 11 ids" in line and "--partial" in line
    code, out, err = _run(capsys, "--task", "easyvqa", "--predictions", few, "--partial", "--out", str(out_json))
    assert code == 0 and "9663" in err
    result = json.loads(out_json.read_text())
    assert result["n"] == 10 and result["coverage"]["missing_predictions"] == 9663
    assert result["coverage"]["unknown_predictions"] == 1


@pytest.mark.parametrize("content,message", [
    (None, "file not found"),
    ("", "file is empty"),
    ("[{", "not valid JSON"),
    ("{}", "expected a JSON list"),
    ("[]", "no predictions"),
    ('[{"question_id": 10}]', "item 0 is not an object with 'question_id' and 'answer'"),
    ('[{"question_id": 10, "answer": 3}]', "'answer' is not a string"),
    ('[{"question_id": [1], "answer": "a"}]', "is not an integer or a string"),
    ('[{"question_id": 10, "answer": "a"}, {"question_id": 10, "answer": "b"}]', "duplicate question_id 10"),
    ('[{"question_id": 10, "answer": "a"}, {"question_id": 11, "answer": "b"}]', "1 of the 3 ids"),
])
def test_prediction_file_errors(capsys, vqa_files, content, message):
    tmp, annotations, _, _ = vqa_files
    path = tmp / "bad.json"
    if content is not None:
        path.write_text(content)
    line = _error(capsys, "--task", "vqav2", "--predictions", str(path), "--annotations", annotations)
    assert str(path) in line and message in line


def test_reference_file_errors(capsys, vqa_files, tmp_path):
    _, annotations, _, preds = vqa_files
    line = _error(capsys, "--task", "vqav2", "--predictions", preds)
    assert "--annotations" in line
    bad = _write(tmp_path / "bad_ann.json", {"questions": []})
    assert "not a VQAv2 annotations file" in _error(capsys, "--task", "vqav2", "--predictions", preds,
                                                    "--annotations", bad)
    dup = _write(tmp_path / "dup.json", {"annotations": _vqa_annotations() + _vqa_annotations()[:1]})
    assert "duplicate question_id 10" in _error(capsys, "--task", "vqav2", "--predictions", preds,
                                                "--annotations", dup)
    qs = _write(tmp_path / "q.json", {"questions": [{"question_id": 10}]})
    assert "do not match" in _error(capsys, "--task", "vqav2", "--predictions", preds, "--annotations",
                                    annotations, "--questions", qs)
    assert "--lmms-eval: only for vqav2 and gqa, not coco" in _error(capsys, "--task", "coco", "--predictions",
                                                                      preds, "--lmms-eval")
    gq = _write(tmp_path / "g.json", ["not", "a", "dict"])
    gp = _write(tmp_path / "gp.json", [{"questionId": "1", "prediction": "x"}])
    assert "not a GQA questions file" in _error(capsys, "--task", "gqa", "--predictions", gp, "--references", gq)
    assert "not a COCO captions file" in _error(capsys, "--task", "coco", "--predictions",
                                                _write(tmp_path / "cp.json", [{"image_id": 1, "caption": "x"}]),
                                                "--references", gq)
    (tmp_path / "empty_dir").mkdir()
    assert "no .parquet files" in _error(capsys, "--task", "vqav2", "--predictions", preds, "--references",
                                         str(tmp_path / "empty_dir"))


def test_coco_mismatch_fails_before_starting_java(capsys, tmp_path):
    refs = _write(tmp_path / "captions.json", {"annotations": [{"image_id": 1, "caption": "a"},
                                                               {"image_id": 2, "caption": "b"}]})
    preds = _write(tmp_path / "p.json", [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "c"}])
    assert "duplicate image_id 1" in _error(capsys, "--task", "coco", "--predictions", preds, "--references", refs)
    preds = _write(tmp_path / "p2.json", [{"image_id": 1, "caption": "a"}])
    assert "1 of the 2 ids" in _error(capsys, "--task", "coco", "--predictions", preds, "--references", refs)


def test_coco_hugging_face_references_keep_every_caption(tmp_path):
    """COCO keeps a caption that a second annotator wrote word for word: so must both readers of the layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fixtures_data import image_bytes
    from vlm_grades.data import load_samples

    def row(image_id, answer):
        return {"question_id": f"{image_id:012d}.jpg", "image": {"bytes": image_bytes(image_id, "JPEG"), "path": None},
                "answer": answer, "id": image_id, "file_name": f"{image_id:012d}.jpg"}

    rows = [row(1, ["a cat", "a cat", "a cat on a mat"]),
            row(2, ["a dog"]), row(2, ["a dog"]), row(2, ["a brown dog"])]   # one caption per row
    (tmp_path / "hf").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hf" / "val-00000-of-00001.parquet")
    expected = {"1": ["a cat", "a cat", "a cat on a mat"], "2": ["a dog", "a dog", "a brown dog"]}
    assert coco.read_references(str(tmp_path / "hf"), split="val") == expected
    samples = load_samples("coco", str(tmp_path / "hf"), split="val")
    assert {s.id: s.targets for s in samples} == expected


@pytest.mark.parametrize("fmt", ["disk", "parquet"])
def test_gqa_accepts_the_folders_train_accepts(capsys, tmp_path, fmt):
    """The lmms-lab/GQA folder (*_instructions + *_images configs) and the official folder, as `train --data`."""
    from fixtures_data import write_gqa, write_hf_gqa

    hf = write_hf_gqa(tmp_path / "hf", fmt=fmt)
    official = write_gqa(tmp_path / "official")
    expected = gqa.read_references(str(official["questions"]))
    assert len(expected) == 6
    for folder in (hf["source"], official["source"]):
        assert gqa.read_references(folder, split="testdev") == expected
        assert gqa.read_references(folder) == expected                  # the folder's only split
    preds = _write(tmp_path / "p.json", [{"questionId": q, "prediction": a} for q, a in hf["answers"].items()])
    out_json = tmp_path / "s.json"
    code, out, err = _run(capsys, "--task", "gqa", "--predictions", preds, "--references", hf["source"],
                          "--split", "testdev_balanced", "--out", str(out_json))
    assert code == 0, err
    assert f"references: {hf['source']}/testdev_balanced_instructions\n" in out     # the folder's file, named
    assert json.loads(out_json.read_text())["score"] == 100.0
    write_hf_gqa(tmp_path / "hf", fmt=fmt, split="val_balanced")
    capsys.readouterr()
    line = _error(capsys, "--task", "gqa", "--predictions", preds, "--references", hf["source"])
    assert "several splits" in line and "testdev_balanced" in line and "val_balanced" in line and "--split" in line


def test_vqav2_and_coco_accept_the_official_folders_train_accepts(capsys, tmp_path):
    from fixtures_data import write_coco, write_coco_karpathy, write_vqav2

    d = write_vqav2(tmp_path / "vqa")
    expected = vqav2.read_references(str(d["annotations"]))
    assert vqav2.read_references(d["source"], split="val") == expected
    assert vqav2.read_references(d["source"]) == expected                  # the folder's only split
    write_vqav2(tmp_path / "vqa", split="train")
    with pytest.raises(UserError, match="several splits; choose one with --split .*train2014, val2014"):
        vqav2.read_references(d["source"])

    c = write_coco(tmp_path / "coco")
    expected = coco.read_references(str(c["annotations"]))
    assert coco.read_references(c["source"], split="val") == expected == coco.read_references(c["source"])
    k = write_coco_karpathy(tmp_path / "karpathy")
    assert coco.read_references(k["source"], split="test") == coco.read_references(str(k["file"]), split="test")


@pytest.mark.parametrize("command", ["score", "eval"])
def test_help_names_the_reproduced_lmms_eval_version(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "lmms-eval 0.7.3" in text and "ignore_punctuation" in text
