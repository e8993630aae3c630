"""GQA and easy-VQA accuracy: hand-computed expectations."""
import pytest

from eval import easyvqa, gqa


def _q(answer, structural, semantic, balanced=True):
    return {"answer": answer, "is_balanced": balanced, "structural": structural, "semantic": semantic}


REFS = {
    "a": _q("yes", "verify", "attr"),
    "b": _q("no", "logical", "obj"),
    "c": _q("left", "query", "rel"),
    "d": _q("red", "query", "attr"),
    "e": _q("table", "choose", "cat"),
    "u": _q("cup", "query", "obj", balanced=False),
}


def test_binary_open_split_over_balanced_questions():
    preds = {"a": "Yes.", "b": "yes", "c": "left", "d": "blue", "e": "table", "u": "cup"}
    summary, per_sample = gqa.score(preds, REFS, lmms_eval=True)
    # balanced: a b c d e; correct: a (after lmms-eval's preprocessing), c, e
    assert per_sample == {"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.0, "e": 1.0}
    assert summary["accuracy"] == pytest.approx(60.0)
    # open = structural "query" (c, d); binary = the rest (a, b, e)
    assert summary["open"] == pytest.approx(50.0) and summary["n_open"] == 2
    assert summary["binary"] == pytest.approx(200 / 3) and summary["n_binary"] == 3
    assert summary["per_structural_type"] == pytest.approx(
        {"choose": 100.0, "logical": 0.0, "query": 50.0, "verify": 100.0})
    assert summary["per_semantic_type"] == pytest.approx({"attr": 50.0, "cat": 100.0, "obj": 0.0, "rel": 100.0})
    assert summary["unbalanced_skipped"] == 1 and summary["n"] == 5
    assert summary["protocol"] == "lmms-eval"


def test_default_is_the_official_plain_string_equality():
    preds = {"a": "Yes.", "b": "no", "c": "left ", "d": "red", "e": "table", "u": "Cup"}
    summary, per_sample = gqa.score(preds, REFS)
    assert per_sample == {"a": 0.0, "b": 1.0, "c": 0.0, "d": 1.0, "e": 1.0}
    assert summary["accuracy"] == pytest.approx(60.0) and summary["protocol"] == "official"
    assert gqa.score(preds, REFS, lmms_eval=True)[0]["accuracy"] == pytest.approx(100.0)


def test_easyvqa_preprocessing():
    assert easyvqa.preprocess(" Yes. ") == "yes"
    assert easyvqa.preprocess("Left...") == "left"
    assert easyvqa.preprocess("3.5") == "3.5"


# prediction, answer, official (prediction == answer), lmms-eval 0.7.3 (strip the prediction; lowercase and drop
# every string.punctuation character on both sides), the former rule (strip, trailing periods, lowercase)
GQA_CASES = [
    ("a.m.", "a.m.", 1.0, 1.0, 0.0),
    ("A.M.", "a.m.", 0.0, 1.0, 0.0),
    ("am", "a.m.", 0.0, 1.0, 0.0),
    ("t-shirt", "t-shirt", 1.0, 1.0, 1.0),
    ("tshirt", "t-shirt", 0.0, 1.0, 0.0),
    ("Yes.", "yes", 0.0, 1.0, 1.0),
    (" yes\n", "yes", 0.0, 1.0, 1.0),
    ("yes!", "yes", 0.0, 1.0, 0.0),
    ("don't", "dont", 0.0, 1.0, 0.0),
    ("yes .", "yes", 0.0, 0.0, 1.0),     # the space before the period is not stripped again
    ("t shirt", "t-shirt", 0.0, 0.0, 0.0),
    ("red", "blue", 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("prediction,answer,official,lmms_eval,former", GQA_CASES)
def test_gqa_lmms_eval_rule(prediction, answer, official, lmms_eval, former):
    refs = {"q": _q(answer, "query", "attr")}
    assert gqa.score({"q": prediction}, refs)[1]["q"] == official
    assert gqa.score({"q": prediction}, refs, lmms_eval=True)[1]["q"] == lmms_eval


def test_gqa_protocol_names_the_lmms_eval_version():
    assert "lmms-eval 0.7.3" in gqa.PROTOCOLS["lmms-eval"] and "ignore_punctuation" in gqa.PROTOCOLS["lmms-eval"]


def test_easyvqa_per_kind():
    refs = {"0": {"answer": "circle"}, "1": {"answer": "red"}, "2": {"answer": "yes"}, "3": {"answer": "no"},
            "4": {"answer": "teal"}}
    preds = {"0": "Circle", "1": "red.", "2": "no", "3": "no", "4": "blue"}
    summary, per_sample = easyvqa.score(preds, refs)
    assert per_sample == {"0": 1.0, "1": 1.0, "2": 0.0, "3": 1.0, "4": 0.0}
    assert summary["accuracy"] == pytest.approx(60.0)
    assert summary["per_kind"] == pytest.approx({"color": 50.0, "shape": 100.0, "yes/no": 50.0})
    assert easyvqa.score(preds, refs, raw=True)[0]["accuracy"] == pytest.approx(20.0)


def test_easyvqa_package_references():
    refs = easyvqa.read_references(split="test")
    import easy_vqa

    questions, answers, _ = easy_vqa.get_test_questions()
    assert len(refs) == len(questions) == 9673
    assert refs["0"]["answer"] == answers[0] and refs["9672"]["answer"] == answers[-1]
    assert {r["kind"] for r in refs.values()} == {"shape", "color", "yes/no"}
