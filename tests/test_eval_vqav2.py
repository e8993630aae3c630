"""VQAv2 accuracy and normalization: hand-computed expectations of the official evaluator's outcome."""
import pytest

from eval import vqav2

# ten answers with k of them "yes": the official leave-one-out accuracy
@pytest.mark.parametrize("k,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9)] + [(k, 1.0) for k in range(4, 11)])
def test_leave_one_out(k, expected):
    answers = ["yes"] * k + ["no"] * (10 - k)
    assert vqav2.question_accuracy("yes", answers) == pytest.approx(expected, abs=1e-12)


def test_leave_one_out_by_hand():
    # 2 matches: the 2 matching answers left out see 1 match (1/3), the 8 others see 2 (2/3)
    answers = ["2", "2", "3", "3", "3", "4", "4", "4", "4", "5"]
    assert vqav2.question_accuracy("2", answers) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqav2.question_accuracy("3", answers) == pytest.approx(0.9)
    assert vqav2.question_accuracy("4", answers) == pytest.approx(1.0)
    assert vqav2.question_accuracy("5", answers) == pytest.approx(0.3)


@pytest.mark.parametrize("text,expected", [
    # a punctuation mark touching a space anywhere is deleted everywhere, else replaced by a space
    ("t-shirt", "t shirt"),
    ("t - shirt", "t shirt"),
    ("well-known - thing", "wellknown thing"),
    ("hello,world", "hello world"),
    ("hello, world", "hello world"),
    ("(left)", "left"),
    ("yes!", "yes"),
    ("yes !", "yes"),
    ("what?", "what"),
    ("a/b", "b"),          # "a b" then the article "a" goes
    ("x/y", "x y"),
    # digit-comma-digit anywhere: every punctuation mark is deleted, none replaced
    ("1,000", "1000"),
    ("1,000 t-shirts", "1000 tshirts"),
    # periods: deleted unless a digit follows
    ("3.5", "3.5"),
    ("2.", "2"),
    ("mr. t", "mr t"),
    (".5", ".5"),
    ("yes.", "yes"),
    # number words (after lowercasing), only none/zero..ten
    ("Two", "2"), ("none", "0"), ("zero", "0"), ("Ten", "10"), ("eleven", "eleven"),
    ("two dogs", "2 dogs"),
    # articles
    ("a dog", "dog"), ("The", ""), ("An apple", "apple"), ("the cat in a hat", "cat in hat"),
    # contractions, word by word, quirks of the official table included
    ("dont", "don't"), ("im", "im"), ("Im", "im"), ("somebody'd", "somebodyd"), ("isnt it", "isn't it"),
    ("youre right", "you're right"), ("let's", "let's"),
    # whitespace collapses
    ("  many   things ", "many things"),
])
def test_normalize(text, expected):
    assert vqav2.normalize(text) == expected


def test_period_rule_applies_at_most_32_times():
    # re.UNICODE (32) was passed as the count: periods beyond the 32nd survive
    assert vqav2.normalize("." * 40 + "x") == "." * 8 + "x"


def test_no_normalization_when_all_ten_answers_identical():
    ten_yes = ["yes"] * 10
    assert vqav2.question_accuracy("Yes", ten_yes) == 0.0
    assert vqav2.question_accuracy("yes.", ten_yes) == 0.0
    assert vqav2.question_accuracy(" yes\n", ten_yes) == 1.0      # the strip always happens
    assert vqav2.question_accuracy("yes\tno", ["yes no"] * 10) == 1.0
    assert vqav2.question_accuracy("two", ["2"] * 10) == 0.0
    # one differing answer switches normalization on: "Yes" now matches the nine "yes"
    assert vqav2.question_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0
    assert vqav2.question_accuracy("two", ["2"] * 9 + ["3"]) == 1.0
    # answers identical only after normalization still count as different strings
    assert vqav2.question_accuracy("T-Shirt", ["t-shirt"] * 5 + ["t shirt"] * 5) == 1.0


# Hand-computed under three rules. official: GT-Vision-Lab vqaEval.py. lmms_03: lmms-eval 0.3.x (the prediction
# always through EvalAIAnswerProcessor, lowercase and "'s" split included; the answers only when they differ).
# lmms_073: lmms-eval 0.5.0 to 0.7.3 (strip, then process_punctuation with EvalAI's comma rule and
# process_digit_article on the prediction and on every answer, always), the rule `--lmms-eval` reproduces.
RULE_CASES = [
    # prediction, answers, official, lmms_03, lmms_073
    ("two", ["two"] * 10, 1.0, 0.0, 1.0),         # 0.3.x turned the prediction into "2", not the answers
    ("2", ["two"] * 10, 0.0, 0.0, 1.0),
    ("Yes", ["yes"] * 10, 0.0, 1.0, 1.0),
    ("yes.", ["yes"] * 10, 0.0, 1.0, 1.0),
    ("t-shirt", ["t-shirt"] * 10, 1.0, 0.0, 1.0),  # "t shirt" on both sides in 0.7.3
    ("a.m.", ["a.m."] * 10, 1.0, 0.0, 1.0),        # "am" on both sides in 0.7.3
    ("it's red, I think?", ["it's red i think"] * 10, 0.0, 0.0, 1.0),
    ("1000", ["1,,000"] * 10, 0.0, 0.0, 1.0),      # EvalAI's (?<=\d)(,)+(?=\d) deletes the double comma
    # 3 of ten answers "1,,000": officially "1 000" (the comma becomes a space), EvalAI "1000"
    ("1000", ["1,,000"] * 3 + ["seven"] * 7, 0.0, 0.9, 0.9),
    ("T-Shirt", ["t-shirt"] * 5 + ["t shirt"] * 5, 1.0, 1.0, 1.0),
    ("Yes", ["yes"] * 9 + ["no"], 1.0, 1.0, 1.0),
    ("two", ["2"] * 9 + ["3"], 1.0, 1.0, 1.0),
    ("no", ["yes"] * 10, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("prediction,answers,official,lmms_03,lmms_073", RULE_CASES)
def test_official_and_lmms_eval_rules(prediction, answers, official, lmms_03, lmms_073):
    assert vqav2.question_accuracy(prediction, answers) == pytest.approx(official)
    assert vqav2.question_accuracy(prediction, answers, lmms_eval=True) == pytest.approx(lmms_073)


def test_cases_separate_the_current_lmms_eval_rule_from_the_others():
    assert any(c[4] != c[2] for c in RULE_CASES) and any(c[4] != c[3] for c in RULE_CASES)


def test_lmms_eval_version_is_named():
    assert vqav2.LMMS_EVAL_VERSION == "0.7.3" and "0.7.3" in vqav2.PROTOCOLS["lmms-eval"]


def test_score_overall_and_breakdowns():
    refs = {
        "1": {"answers": ["yes"] * 10, "answer_type": "yes/no", "question_type": "is the"},
        "2": {"answers": ["2"] * 2 + ["3"] * 8, "answer_type": "number", "question_type": "how many"},
        "3": {"answers": ["red"] * 10, "answer_type": "other", "question_type": "what color is the"},
        "4": {"answers": ["1"] * 10, "answer_type": "number", "question_type": "how many"},
    }
    preds = {"1": "yes", "2": "2", "3": "blue", "4": "1"}
    summary, per_sample = vqav2.score(preds, refs)
    assert per_sample == pytest.approx({"1": 1.0, "2": 0.6, "3": 0.0, "4": 1.0})
    assert summary["accuracy"] == pytest.approx(100 * 2.6 / 4)
    assert summary["per_answer_type"] == pytest.approx({"number": 80.0, "other": 0.0, "yes/no": 100.0})
    assert summary["per_question_type"]["how many"] == pytest.approx(80.0)
    assert summary["n"] == 4
