"""The scenes corpus (stage 1 of a fine-tuning base): fixed, disjoint splits; answers that agree with the
drawn objects; words that cover easy-VQA's; loaded and scored through the common task entry points."""
from __future__ import annotations

import collections

from vlm_grades.data import load_samples
from vlm_grades.data.scenes import COLORS, SHAPES, caption, load_scenes
from vlm_grades.models.tokenizer_words import build_word_tokenizer


def test_splits_are_fixed_and_disjoint():
    a, b = load_scenes("test", pictures=3), load_scenes("test", pictures=3)
    assert [s.targets for s in a] == [s.targets for s in b]
    assert a[0].image.tobytes() == b[0].image.tobytes()
    train = {s.image.tobytes() for s in load_scenes("train", pictures=200) if s.id.endswith("-c0")}
    assert not any(s.image.tobytes() in train for s in load_scenes("test", pictures=200))


def test_answers_agree_with_the_caption():
    for s in load_scenes("val", pictures=60):
        if s.meta["answer_kind"] == "caption":
            objects = [tuple(part.split()[1:]) for part in s.targets[0].split(" and ")]
            assert caption(objects) == s.targets[0]
            continue
        q, a = s.meta["question"], s.targets[0]
        if s.meta["answer_kind"] == "yes/no":
            asked = [w for w in q.rstrip("?").split() if w in COLORS or w in SHAPES]
            present = all(any(w in obj for obj in objects) for w in asked) and \
                (len(asked) < 2 or tuple(asked) in objects)
            negated = " not " in f" {q} " or " no " in f" {q} "
            assert a == ("yes" if present != negated else "no"), (q, objects, a)
        elif s.meta["answer_kind"] == "count":
            assert a == ("one", "two", "three")[len(objects) - 1]
        else:
            assert any(a in obj for obj in objects), (q, objects, a)


def yes_share(split: str) -> tuple[float, float, float]:
    """(share of captions, share of "yes" among plain yes/no questions, among negated ones) of 600 pictures"""
    from vlm_grades.data.easyvqa import is_negated

    samples = load_scenes(split, pictures=600)
    kinds = collections.Counter(s.meta["answer_kind"] for s in samples)
    yes_no = [(is_negated(s.meta["question"]), s.targets[0]) for s in samples if s.meta["answer_kind"] == "yes/no"]
    negated = [a for n, a in yes_no if n]
    plain = [a for n, a in yes_no if not n]
    assert abs(len(negated) / len(yes_no) - 0.5) < 0.05
    return kinds["caption"] / sum(kinds.values()), plain.count("yes") / len(plain), negated.count("yes") / len(negated)


def test_train_prior_names_things_at_random_so_a_prior_answers_first():
    """stage 1a: the named colour or shape is drawn from the whole vocabulary (mostly absent), half the questions
    negated: given the negation the answer has a prior, the stage a from-scratch model learns first"""
    captions, plain, negated = yes_share("train-prior")
    assert abs(captions - 1 / 3) < 0.01
    assert plain < 0.35 and negated > 0.65


def test_train_and_held_out_yes_no_are_balanced_for_each_negation():
    for split in ("train", "test"):
        captions, plain, negated = yes_share(split)
        assert abs(plain - 0.5) < 0.05 and abs(negated - 0.5) < 0.05, split
    assert abs(yes_share("train")[0] - 1 / 3) < 0.01


def test_train_prior_has_the_train_pictures():
    prior, train = load_scenes("train-prior", pictures=5), load_scenes("train", pictures=5)
    assert [s.image.tobytes() for s in prior] == [s.image.tobytes() for s in train]
    assert [s.id for s in prior] == [s.id for s in train]


def test_its_words_cover_every_easyvqa_question_and_answer():
    import easy_vqa

    samples = load_samples("scenes", split="train")
    tok = build_word_tokenizer([s.prompt for s in samples] + [t for s in samples for t in s.targets])
    for questions, answers, _ in (easy_vqa.get_train_questions(), easy_vqa.get_test_questions()):
        words = {w for text in questions + answers for w in text.replace("?", " ?").split()}
        assert not [w for w in words if tok.convert_tokens_to_ids(w) == tok.unk_token_id]


def test_scored_per_answer_kind(tmp_path):
    from eval.runner import score_predictions, references_from_samples

    samples = load_scenes("test", pictures=5)
    refs = references_from_samples("scenes", samples)
    preds = {s.id: (s.targets[0] if s.meta["answer_kind"] != "color" else "nothing") for s in samples}
    result, _ = score_predictions("scenes", preds, refs)
    per_kind = result["metrics"]["per_kind"]
    assert per_kind["color"] == 0.0 and per_kind["caption"] == per_kind["yes/no"] == 100.0
    n_color = sum(s.meta["answer_kind"] == "color" for s in samples)
    assert abs(result["score"] - 100 * (len(samples) - n_color) / len(samples)) < 1e-9
