"""easy-VQA from the `easy-vqa` package: 64x64 images of one coloured shape, 13 one-word answers.

Splits: "train" and "val" are carved from the package's train images (every 10th image id goes to
val, with all its questions), "trainval" is both, and "test" is the package's test split.
Tasks: "vqa" (question answering) and "caption" ("a red triangle", derived from each image's questions).
"""
from __future__ import annotations

import random

from vlm_grades.data.prompts_easyvqa import EASYVQA_PROMPT, CAPTION_PROMPT
from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError

SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SPLITS = ("train", "val", "trainval", "test")


def _is_val_image(image_id: int) -> bool:
    return image_id % 10 == 0


def _package_split(split: str):
    import easy_vqa

    if split == "test":
        questions, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
        keep = lambda i: True  # noqa: E731
    else:
        questions, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
        keep = {"train": lambda i: not _is_val_image(i), "val": _is_val_image, "trainval": lambda i: True}[split]
    # n: the question's index in the package's list, its stable question id
    rows = [(n, q, a, i) for n, (q, a, i) in enumerate(zip(questions, answers, image_ids)) if keep(i)]
    return rows, paths


def answer_kind(answer: str) -> str:
    if answer in SHAPES:
        return "shape"
    if answer in COLORS:
        return "color"
    return "yes/no"


def is_negated(question: str) -> bool:
    """"is there not a red shape?", "is no circle present?": a yes answer says the thing is absent."""
    return " not " in f" {question} " or " no " in f" {question} "


def _mentioned(question: str, words: tuple[str, ...]) -> str | None:
    tokens = question.replace("?", " ").split()
    return next((w for w in words if w in tokens), None)


def image_attributes(questions: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """Colour and shape of an image, read from its questions' answers (open questions first,
    then yes/no questions: "is there a red shape?" yes, "does the image not contain a circle?" no)."""
    color = next((a for _, a in questions if a in COLORS), None)
    shape = next((a for _, a in questions if a in SHAPES), None)
    absent: set[str] = set()
    for q, a in questions:
        if a not in ("yes", "no"):
            continue
        negated = is_negated(q)
        word = _mentioned(q, COLORS) or _mentioned(q, SHAPES)
        if (a == "yes") != negated:
            color = color or _mentioned(q, COLORS)
            shape = shape or _mentioned(q, SHAPES)
        elif word:
            absent.add(word)
    for value, words in ((color, COLORS), (shape, SHAPES)):
        left = [w for w in words if w not in absent]
        if value is None and len(left) == 1:
            color, shape = (left[0], shape) if words is COLORS else (color, left[0])
    return color, shape


def load_easyvqa(split: str = "train", task: str = "vqa", max_samples: int | None = None,
                 seed: int = 0, shuffle: bool = False, prompt: str | None = None) -> list[Sample]:
    if split not in SPLITS:
        raise UserError(f"--split: easy-VQA has splits {', '.join(SPLITS)}, not {split!r}")
    rows, paths = _package_split(split)
    if task == "vqa":
        template = prompt or EASYVQA_PROMPT
        samples = [
            Sample(id=str(n), image=paths[i], prompt=template.format(question=q), targets=[a],
                   task="easyvqa", meta={"image_id": i, "question": q, "answer_kind": answer_kind(a)})
            for n, q, a, i in rows
        ]
    elif task == "caption":
        by_image: dict[int, list[tuple[str, str]]] = {}
        for _, q, a, i in rows:
            by_image.setdefault(i, []).append((q, a))
        samples = []
        for i in sorted(by_image):
            color, shape = image_attributes(by_image[i])
            if color and shape:
                samples.append(Sample(id=str(i), image=paths[i], prompt=prompt or CAPTION_PROMPT,
                                      targets=[f"a {color} {shape}"], task="easyvqa-caption",
                                      meta={"image_id": i}))
    else:
        raise UserError(f"--task: easy-VQA tasks are 'vqa' and 'caption', not {task!r}")
    if shuffle:
        random.Random(seed).shuffle(samples)
    return samples[:max_samples] if max_samples else samples
