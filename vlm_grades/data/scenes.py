"""Scenes: a stage-1 corpus for a nanoVLM fine-tuning base, drawn with PIL by the project itself.

64x64 pictures of one shape (easy-VQA's three plus a diamond and a cross) in eleven colours
(easy-VQA's eight plus orange, purple, pink), at random sizes and positions, on tinted, graded or noisy
backgrounds; with captions, colour and shape questions, yes/no questions (negated ones too), questions
about a colour-and-shape pair and counting (the drawing code places up to three shapes; the corpus uses one,
see OBJECT_COUNT_WEIGHTS). easy-VQA is the downstream task: the same kind of question,
other pictures (its single flat shapes, its own palette), so fine-tuning on it is a real distribution shift.

Every picture is a pure function of (split, index): splits draw from disjoint seeds, so the held-out
"test" pictures are never trained on, and no easy-VQA picture is ever used.
"""
from __future__ import annotations

import random

from PIL import Image, ImageDraw

from vlm_grades.data.easyvqa import COLORS as EASYVQA_COLORS, SHAPES as EASYVQA_SHAPES, is_negated
from vlm_grades.data.prompts_easyvqa import CAPTION_PROMPT, EASYVQA_PROMPT
from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError

SHAPES = EASYVQA_SHAPES + ("diamond", "cross")
PALETTE = {   # name -> RGB centre; each drawing jitters it
    "red": (200, 30, 30), "green": (40, 160, 50), "blue": (40, 70, 210), "black": (20, 20, 20),
    "gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (130, 80, 35), "yellow": (235, 210, 30),
    "orange": (245, 140, 20), "purple": (120, 40, 160), "pink": (240, 130, 180),
}
COLORS = tuple(PALETTE)
assert set(EASYVQA_COLORS) <= set(COLORS)
NUMBERS = ("one", "two", "three")
# split: (pictures, seed stream, how yes/no questions name things; see scene_questions). "train-prior" is the
# train pictures with yes/no questions a model can first answer from a prior: stage 1a of the shipped base
SPLITS = {"train": (6000, 1, "present"), "train-prior": (6000, 1, "random"), "val": (300, 2, "present"),
          "test": (1000, 3, "present")}
SIZE = 64
QUESTIONS_PER_PICTURE = 8
# each picture's caption is repeated so captions are a third of the samples: a from-scratch vision encoder
# learns shapes far faster from captions (they name every object) than from questions (one in five asks)
CAPTIONS_PER_PICTURE = 4
# yes/no questions asked with the picture's caption in the prompt ("Caption: a red triangle. Question: is there
# a blue shape? Answer: no"), train split only: the comparison of attribute words, learnable from the text,
# before the same question about the picture alone (an experiment; 0 = off, see docs/GRADES.md)
BINDING_PER_PICTURE = 0
# Yes/no questions name a colour, shape or pair of the picture with probability PRESENT_SHARE (else one it does
# not have); half of them are negated, as in easy-VQA. From random weights the tiny model stays at chance on
# such balanced questions (6000 steps); named at random from the vocabulary ("train-prior": mostly absent, so
# the answer has a prior given the negation) it learns the prior first and the shape comparison by step ~1500,
# and then the balanced questions teach it the colours (docs/GRADES.md, "The shipped base").
PRESENT_SHARE = 0.5
NEGATED_SHARE = 0.5
# pictures with one, two, three shapes. Mixed scenes (80/15/5) learned shapes and yes/no far more slowly
# (shape 46% against 95% at step 1500), so the corpus is single shapes, like easy-VQA
OBJECT_COUNT_WEIGHTS = (100, 0, 0)

# question templates: (template, kind); <C> a colour, <S> a shape
COLOR_YESNO = ("is there a <C> shape?", "is a <C> shape present?", "does the image contain a <C> shape?",
               "is there a <C> shape in the image?", "is there not a <C> shape?", "is no <C> shape present?",
               "does the image not contain a <C> shape?", "is there not a <C> shape in the image?")
SHAPE_YESNO = tuple(t.replace("<C> shape", "<S>") for t in COLOR_YESNO)
PAIR_YESNO = ("is there a <C> <S>?", "is there a <C> <S> in the image?", "does the image contain a <C> <S>?",
              "does the image not contain a <C> <S>?")
SHAPE_OPEN = ("what shape is in the image?", "what shape does the image contain?", "what shape is present?",
              "what is the <C> shape?")
COLOR_OPEN = ("what color is the shape?", "what is the color of the shape?", "what color is the <S>?",
              "what is the color of the <S>?")
COUNT_OPEN = ("how many shapes are there?", "how many shapes are in the image?")


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int) -> tuple[int, ...]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)


def _background(rng: random.Random) -> Image.Image:
    tint = _jitter(rng, (238, 238, 238), 17)
    img = Image.new("RGB", (SIZE, SIZE), tint)
    style = rng.random()
    if style < 0.25:      # vertical gradient towards another light tint
        other = _jitter(rng, (225, 225, 225), 30)
        draw = ImageDraw.Draw(img)
        for y in range(SIZE):
            t = y / (SIZE - 1)
            draw.line([(0, y), (SIZE, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(tint, other)))
    elif style < 0.45:    # speckle noise
        px = img.load()
        for _ in range(400):
            x, y = rng.randrange(SIZE), rng.randrange(SIZE)
            px[x, y] = _jitter(rng, tint, 40)
    return img


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill, rng: random.Random):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "circle":
        d = min(w, h)
        draw.ellipse([x0, y0, x0 + d, y0 + d], fill=fill)
    elif shape == "rectangle":
        rw, rh = (w, int(h * rng.uniform(0.5, 1.0))) if rng.random() < 0.5 else (int(w * rng.uniform(0.5, 1.0)), h)
        draw.rectangle([x0, y0, x0 + rw, y0 + rh], fill=fill)
    elif shape == "triangle":
        apex = rng.uniform(0.2, 0.8)
        pts = [(x0 + w * apex, y0), (x0, y1), (x1, y1)]
        if rng.random() < 0.3:   # pointing down
            pts = [(x0 + w * apex, y1), (x0, y0), (x1, y0)]
        draw.polygon(pts, fill=fill)
    elif shape == "diamond":
        draw.polygon([(x0 + w / 2, y0), (x1, y0 + h / 2), (x0 + w / 2, y1), (x0, y0 + h / 2)], fill=fill)
    elif shape == "cross":
        t = max(2, min(w, h) // 3)
        draw.rectangle([x0 + (w - t) // 2, y0, x0 + (w + t) // 2, y1], fill=fill)
        draw.rectangle([x0, y0 + (h - t) // 2, x1, y0 + (h + t) // 2], fill=fill)


def draw_scene(rng: random.Random) -> tuple[Image.Image, list[tuple[str, str]]]:
    """One picture and its objects [(colour, shape)]: one to three objects (OBJECT_COUNT_WEIGHTS), in
    separate cells when several."""
    n = rng.choices((1, 2, 3), weights=OBJECT_COUNT_WEIGHTS)[0]
    objects: list[tuple[str, str]] = []
    while len(objects) < n:   # distinct colours and distinct shapes, so every question has one answer
        color, shape = rng.choice(COLORS), rng.choice(SHAPES)
        if all(color != c and shape != s for c, s in objects):
            objects.append((color, shape))
    img = _background(rng)
    draw = ImageDraw.Draw(img)
    cells = [(0, 0, SIZE, SIZE)] if n == 1 else rng.sample(
        [(0, 0, 32, 32), (32, 0, 64, 32), (0, 32, 32, 64), (32, 32, 64, 64)], n)
    for (color, shape), (cx0, cy0, cx1, cy1) in zip(objects, cells):
        cell = cx1 - cx0
        side = rng.randint(max(8, cell // 4), cell - 4)
        x0, y0 = rng.randint(cx0 + 1, cx1 - side - 1), rng.randint(cy0 + 1, cy1 - side - 1)
        _draw(draw, shape, (x0, y0, x0 + side, y0 + side), _jitter(rng, PALETTE[color], 25), rng)
    return img, objects


def _yes_no(template: str, present: bool) -> str:
    return "yes" if present != is_negated(template) else "no"


def _name(rng: random.Random, named: str, present: bool, has: list[str], vocabulary: tuple[str, ...]) -> str:
    """The colour or shape a yes/no question names: from the whole vocabulary ("random"), or one the picture
    has if `present` and one it lacks otherwise."""
    if named == "random":
        return rng.choice(vocabulary)
    return rng.choice(has) if present else rng.choice([x for x in vocabulary if x not in has])


def _template(rng: random.Random, templates: tuple[str, ...]) -> str:
    negated = rng.random() < NEGATED_SHARE
    return rng.choice([t for t in templates if is_negated(t) == negated])


def scene_questions(objects: list[tuple[str, str]], rng: random.Random, k: int,
                    named: str = "present") -> list[tuple[str, str, str]]:
    """k (question, answer, kind) about a scene; half of them yes/no, as in easy-VQA. Yes/no questions name
    what the picture has with probability PRESENT_SHARE (`named="present"`), or (`"random"`) a colour or shape
    drawn from the whole vocabulary, and for pairs the picture's colour with another shape."""
    colors, shapes = [c for c, _ in objects], [s for _, s in objects]
    out = []
    for _ in range(k):
        r = rng.random()
        if r < 0.5:   # yes/no: a colour, a shape or a pair
            present = rng.random() < PRESENT_SHARE   # "random": only pairs use it
            which = rng.random()
            if which < 0.8:   # a colour (0.4) or a shape
                has, vocabulary, templates, slot = ((colors, COLORS, COLOR_YESNO, "<C>") if which < 0.4
                                                    else (shapes, SHAPES, SHAPE_YESNO, "<S>"))
                word = _name(rng, named, present, has, vocabulary)
                t = _template(rng, templates).replace(slot, word)
                out.append((t, _yes_no(t, word in has), "yes/no"))
            else:
                c, s = rng.choice(objects)
                if not present and named == "random":   # the right colour with another shape
                    s = rng.choice([x for x in shapes if x != s] or [x for x in SHAPES if x not in shapes])
                elif not present and rng.random() < 0.5:   # the right colour with a shape the picture lacks
                    s = rng.choice([x for x in SHAPES if x not in shapes])
                elif not present:                        # the right shape with a colour the picture lacks
                    c = rng.choice([x for x in COLORS if x not in colors])
                t = _template(rng, PAIR_YESNO).replace("<C>", c).replace("<S>", s)
                out.append((t, _yes_no(t, present), "yes/no"))
        elif r < 0.72:
            c, s = rng.choice(objects)
            t = rng.choice(SHAPE_OPEN if len(objects) == 1 else SHAPE_OPEN[3:])
            out.append((t.replace("<C>", c), s, "shape"))
        elif r < 0.94:
            c, s = rng.choice(objects)
            t = rng.choice(COLOR_OPEN if len(objects) == 1 else COLOR_OPEN[2:])
            out.append((t.replace("<S>", s), c, "color"))
        else:
            out.append((rng.choice(COUNT_OPEN), NUMBERS[len(objects) - 1], "count"))
    return out


def _yes_no_questions(objects, rng: random.Random, k: int, named: str) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    while len(out) < k:
        out += [x for x in scene_questions(objects, rng, 4, named) if x[2] == "yes/no"][: k - len(out)]
    return out


def caption(objects: list[tuple[str, str]]) -> str:
    return " and ".join(f"a {c} {s}" for c, s in objects)


def load_scenes(split: str = "train", max_samples: int | None = None, seed: int = 0, shuffle: bool = False,
                prompt: str | None = None, pictures: int | None = None) -> list[Sample]:
    """Questions and captions of a split's pictures, in picture order (ids "<split>-<picture>-<n>" for the
    n-th question, "<split>-<picture>-c<n>" for the captions: CAPTIONS_PER_PICTURE copies in the training splits,
    one in the held-out splits; "train-prior" ids read "train"). `seed` only shuffles; the pictures are fixed by the split."""
    if split not in SPLITS:
        raise UserError(f"--split: scenes has splits {', '.join(SPLITS)}, not {split!r}")
    count, stream, named = SPLITS[split]
    training = split.startswith("train")
    template = prompt or EASYVQA_PROMPT
    samples: list[Sample] = []
    for i in range(pictures or count):
        rng = random.Random(stream * 1_000_003 + i)
        img, objects = draw_scene(rng)
        image_id = f"{split.split('-')[0]}-{i}"
        samples += [Sample(id=f"{image_id}-c{n}", image=img, prompt=CAPTION_PROMPT, targets=[caption(objects)],
                           task="scenes", meta={"image_id": image_id, "answer_kind": "caption"})
                    for n in range(CAPTIONS_PER_PICTURE if training else 1)]
        if training:
            for n, (q, a, _) in enumerate(_yes_no_questions(objects, rng, BINDING_PER_PICTURE, named)):
                text = f"{CAPTION_PROMPT} {caption(objects)}. " + template.replace("{question}", q)
                samples.append(Sample(id=f"{image_id}-b{n}", image=img, prompt=text, targets=[a], task="scenes",
                                      meta={"image_id": image_id, "question": q, "answer_kind": "yes/no text"}))
        for n, (q, a, kind) in enumerate(scene_questions(objects, rng, QUESTIONS_PER_PICTURE, named), start=1):
            samples.append(Sample(id=f"{image_id}-{n}", image=img, prompt=template.replace("{question}", q),
                                  targets=[a], task="scenes",
                                  meta={"image_id": image_id, "question": q, "answer_kind": kind}))
    if shuffle:
        random.Random(seed).shuffle(samples)
    return samples[:max_samples] if max_samples else samples
