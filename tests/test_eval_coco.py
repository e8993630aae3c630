"""COCO caption metrics: equal to pycocoevalcap's own scorers, Java started at most twice, no writes
into site-packages, clear errors. Needs Java (skipped without it, except the missing-Java test)."""
import math
import os
import shutil
import subprocess

import pytest

from eval import coco
from vlm_grades.errors import UserError

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Java not installed")

REFS = {
    "1": ["A man is riding a horse on the beach.", "A person rides a brown horse near the ocean.",
          "Someone on horseback, at the seaside!"],
    "2": ["Two dogs play with a red ball in the grass.", "A pair of dogs chasing a ball.",
          "Dogs playing on a lawn."],
    "3": ["A plate of food with broccoli and rice.", "Rice, broccoli and chicken on a white plate."],
    "4": ["A red double-decker bus drives down the street.", "The bus is on a city street."],
}
PREDS = {"1": "A man riding a horse on a beach.", "2": "Two dogs playing with a ball.",
         "3": "A plate of rice and broccoli.", "4": "A bus on the street"}


class _JavaCounter:
    def __init__(self, monkeypatch):
        self.launches = []
        real = subprocess.Popen
        counter = self

        class Counting(real):
            def __init__(self, args, *a, **k):
                if "java" in os.path.basename(str(args[0])):
                    counter.launches.append(list(args))
                super().__init__(args, *a, **k)

        monkeypatch.setattr(subprocess, "Popen", Counting)


def _tree(path):
    return sorted(str(p) for p in path.rglob("*") if "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def scored():
    mp = pytest.MonkeyPatch()
    counter = _JavaCounter(mp)
    before = _tree(coco.package_dir())
    try:
        summary, per_sample = coco.score(PREDS, REFS, spice=False)
    finally:
        mp.undo()
    return summary, per_sample, counter.launches, before, _tree(coco.package_dir())


@needs_java
def test_java_started_at_most_twice(scored):
    _, _, launches, _, _ = scored
    assert len(launches) == 2
    assert "edu.stanford.nlp.process.PTBTokenizer" in launches[0]
    assert any(a.endswith("meteor-1.5.jar") for a in launches[1])


@needs_java
def test_nothing_written_into_site_packages(scored):
    _, _, _, before, after = scored
    assert before == after


@needs_java
@pytest.mark.slow  # starts a second METEOR (about 10 s of Java start-up, 25 s on a busy machine)
def test_equal_to_pycocoevalcap_scorers(scored):
    summary, per_sample, _, _, _ = scored
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": PREDS[k]}] for k in REFS})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor_scorer = Meteor()
    meteor, meteor_each = meteor_scorer.compute_score(gts, res)
    del meteor_scorer
    rouge, _ = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    expected = {"Bleu_1": bleu[0], "Bleu_2": bleu[1], "Bleu_3": bleu[2], "Bleu_4": bleu[3],
                "METEOR": meteor, "ROUGE_L": rouge, "CIDEr": cider}
    for name, value in expected.items():
        assert summary[name] == pytest.approx(100 * value, rel=1e-12, abs=1e-12), name
    assert [per_sample[k]["CIDEr"] for k in REFS] == pytest.approx([100 * c for c in cider_each])
    assert [per_sample[k]["METEOR"] for k in REFS] == pytest.approx([100 * m for m in meteor_each])
    assert summary["CIDEr"] > 0 and summary["n"] == 4


@needs_java
def test_bleu1_single_caption_by_hand(monkeypatch):
    # METEOR is stubbed here (it is checked against pycocoevalcap above) to spare a Java start-up.
    # hypothesis "a dog runs" (3 tokens, all in the references: precision 1); both references have
    # 4 tokens, so the brevity penalty is exp(1 - 4/3); CIDEr-D of a single image is 0 (idf from it)
    monkeypatch.setattr(coco, "_meteor_score", lambda java, gts, res: (0.0, [0.0] * len(gts)))
    summary, _ = coco.score({"7": "A dog runs."}, {"7": ["A dog is running.", "The dog runs fast."]}, spice=False)
    assert summary["Bleu_1"] == pytest.approx(100 * math.exp(1 - 4 / 3), rel=1e-6)
    assert summary["CIDEr"] == 0.0


@needs_java
def test_tokenizer_keeps_empty_and_multiline_captions_aligned():
    out = coco.ptb_tokenize(["A man, riding.", "", "two\nlines here", "Last one!", ""])
    assert out == ["a man riding", "", "two lines here", "last one", ""]


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(UserError, match="java: not found"):
        coco.score(PREDS, REFS)


def test_spice_skipped_with_one_line_saying_how_to_add_it(monkeypatch, tmp_path):
    monkeypatch.delenv(coco.SPICE_ENV, raising=False)
    folder, why = coco.spice_corenlp_dir(str(tmp_path))
    if folder is not None:
        pytest.skip("CoreNLP jars are installed here")
    assert "\n" not in why and "SPICE skipped" in why and coco.SPICE_ENV in why
    with pytest.raises(UserError, match="--spice"):
        monkeypatch.setattr(coco, "find_java", lambda: "java")
        monkeypatch.setattr(coco, "ptb_tokenize", lambda texts, java=None: [t.lower() for t in texts])
        monkeypatch.setattr(coco, "_meteor_score", lambda java, gts, res: (0.0, [0.0] * len(gts)))
        coco.score(PREDS, REFS, spice=True)
