"""COCO caption metrics through pycocoevalcap 1.2: BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D), and SPICE
when its Stanford CoreNLP jars are present. Scores are reported x100.

Differences from COCOEvalCap.evaluate(), none of which change a score:
- references and predictions are PTB-tokenized in one Java run (the same command, the same jar),
  with its temporary file in a temporary folder, so a read-only install works;
- METEOR runs pycocoevalcap's own Meteor protocol code over one Java process that we start with an
  English locale (METEOR misparses its numbers under some locales) and an absolute jar path;
- SPICE is never constructed unless its CoreNLP jars are there (its constructor downloads them).
So Java starts at most twice (tokenizer, METEOR), three times with SPICE.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from vlm_grades.errors import UserError

TASK = "coco"
JAVA_LOCALE = ["-Duser.language=en", "-Duser.country=US", "-Dfile.encoding=UTF-8"]
# pycocoevalcap's PTBTokenizer drops these tokens after tokenizing
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                "...", ";"}
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SPICE_ENV = "VLM_GRADES_SPICE_CORENLP"
METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def package_dir() -> Path:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("COCO caption metrics need pycocoevalcap (pip install pycocoevalcap==1.2)")
    return Path(list(spec.submodule_search_locations)[0])


def find_java() -> str:
    java = shutil.which("java")
    if java is None and os.environ.get("JAVA_HOME"):
        candidate = Path(os.environ["JAVA_HOME"]) / "bin" / "java"
        java = str(candidate) if candidate.is_file() else None
    if java is None:
        raise UserError("java: not found on PATH; COCO caption metrics (PTB tokenizer, METEOR) need a Java "
                        "runtime 8+ (e.g. apt-get install default-jre-headless, or set JAVA_HOME)")
    return java


# --- tokenization ---------------------------------------------------------------------------------

def ptb_tokenize(sentences: list[str], java: str | None = None) -> list[str]:
    """pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1, -preserveLines -lowerCase, punctuation
    tokens removed) over all sentences in one Java run, its input file in a temporary folder."""
    java = java or find_java()
    jar = package_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    with tempfile.TemporaryDirectory(prefix="vlm-grades-ptb-") as tmp:
        src = Path(tmp) / "sentences.txt"
        # one line per sentence: line breaks of any kind inside a caption become spaces
        src.write_text("\n".join(" ".join(s.splitlines()) for s in sentences), encoding="utf-8")
        cmd = [java, *JAVA_LOCALE, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", src.name]
        proc = subprocess.run(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-500:]}")
    lines = proc.stdout.decode("utf-8").split("\n")
    lines += [""] * (len(sentences) - len(lines))  # a trailing empty caption yields no line
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
            for line in lines[:len(sentences)]]


# --- METEOR ---------------------------------------------------------------------------------------

def _meteor(java: str):
    """pycocoevalcap's Meteor (its compute_score protocol), over a process we start ourselves."""
    from pycocoevalcap.meteor.meteor import Meteor

    jar = package_dir() / "meteor" / "meteor-1.5.jar"
    meteor = Meteor.__new__(Meteor)
    meteor.meteor_cmd = [java, *JAVA_LOCALE, "-Xmx2G", "-jar", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
    meteor.stderr_file = tempfile.TemporaryFile()
    meteor.meteor_p = subprocess.Popen(meteor.meteor_cmd, cwd=str(jar.parent), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=meteor.stderr_file)
    meteor.lock = threading.Lock()
    return meteor


def _close_meteor(meteor) -> None:
    p = meteor.meteor_p
    if p.poll() is None:
        p.stdin.close()
        p.kill()
    p.wait()
    p.stdout.close()
    meteor.stderr_file.close()
    meteor.meteor_p = _Exited()  # pycocoevalcap's __del__ closes it again: make that a no-op


class _Exited:
    class _Pipe:
        def close(self):
            pass

    stdin = _Pipe()

    def kill(self):
        pass

    def wait(self):
        return 0


def _meteor_score(java: str, gts: dict, res: dict) -> tuple[float, list[float]]:
    meteor = _meteor(java)
    try:
        return meteor.compute_score(gts, res)
    except (ValueError, BrokenPipeError, OSError):
        meteor.stderr_file.seek(0)
        tail = meteor.stderr_file.read().decode(errors="replace")[-500:]
        raise RuntimeError(f"METEOR (Java) failed: {tail.strip() or 'no output'}") from None
    finally:
        _close_meteor(meteor)


# --- SPICE ----------------------------------------------------------------------------------------

def spice_corenlp_dir(folder: str | None = None) -> tuple[Path | None, str]:
    """The folder holding the CoreNLP 3.6.0 jars SPICE needs, or None and why not."""
    candidates = [Path(folder)] if folder else []
    if os.environ.get(SPICE_ENV):
        candidates.append(Path(os.environ[SPICE_ENV]))
    candidates.append(package_dir() / "spice" / "lib")
    for c in candidates:
        if all((c / j).is_file() for j in CORENLP_JARS):
            return c, ""
    return None, (f"SPICE skipped: Stanford CoreNLP jars ({' and '.join(CORENLP_JARS)}) not found; to add "
                  f"them, extract both from stanford-corenlp-full-2015-12-09.zip into a folder and set "
                  f"{SPICE_ENV}=FOLDER (or pass --spice-corenlp FOLDER)")


def _spice_score(java: str, corenlp: Path, gts: dict, res: dict) -> tuple[float, list[float]]:
    spice_dir = package_dir() / "spice"
    classpath = os.pathsep.join([str(spice_dir / "spice-1.0.jar"), str(spice_dir / "lib" / "*"),
                                 str(corenlp / "*")])
    ids = list(gts)
    with tempfile.TemporaryDirectory(prefix="vlm-grades-spice-") as tmp:
        src, out = Path(tmp) / "in.json", Path(tmp) / "out.json"
        src.write_text(json.dumps([{"image_id": i, "test": res[i][0], "refs": gts[i]} for i in ids]))
        cmd = [java, *JAVA_LOCALE, "-Xmx8G", "-cp", classpath, "edu.anu.spice.SpiceScorer", str(src),
               "-out", str(out), "-subset", "-silent"]
        proc = subprocess.run(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise RuntimeError(f"SPICE (Java) failed: {proc.stderr.decode(errors='replace')[-500:]}")
        results = {str(r["image_id"]): r["scores"]["All"]["f"] for r in json.loads(out.read_text())}
    scores = [float(results[i]) if results[i] is not None else float("nan") for i in ids]
    finite = [s for s in scores if s == s]
    return (sum(finite) / len(finite) if finite else float("nan")), scores


# --- scoring --------------------------------------------------------------------------------------

def score(predictions: dict[str, str], references: dict[str, list[str]], spice: bool | None = None,
          spice_corenlp: str | None = None, log=None) -> tuple[dict[str, Any], dict[str, dict]]:
    """Scores (x100) over the references' images (each must have one predicted caption).
    spice: None runs SPICE when its jars are present, True requires them, False skips it."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    log = log or (lambda msg: print(msg, file=sys.stderr))
    java = find_java()
    ids = list(references)
    for i in ids:
        if not references[i]:
            raise UserError(f"image {i}: no reference captions")
    flat = [c for i in ids for c in references[i]] + [predictions[i] for i in ids]
    tokens = iter(ptb_tokenize(flat, java))
    gts = {i: [next(tokens) for _ in references[i]] for i in ids}
    res = {i: [next(tokens)] for i in ids}

    summary: dict[str, Any] = {}
    per_sample: dict[str, dict[str, float]] = {i: {} for i in ids}

    def record(name, total, scores):
        summary[name] = 100 * float(total)
        for i, s in zip(ids, scores):
            per_sample[i][name] = 100 * float(s)

    bleu, bleu_scores = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        record(f"Bleu_{n + 1}", bleu[n], bleu_scores[n])
    record("METEOR", *_meteor_score(java, gts, res))
    record("ROUGE_L", *Rouge().compute_score(gts, res))
    record("CIDEr", *Cider().compute_score(gts, res))
    corenlp, why = spice_corenlp_dir(spice_corenlp)
    if spice is True and corenlp is None:
        raise UserError(why.replace("SPICE skipped: ", "--spice: "))
    if spice is not False and corenlp is not None:
        record("SPICE", *_spice_score(java, corenlp, gts, res))
    elif spice is None:
        log(why)
        summary["skipped"] = {"SPICE": why}
    summary["n"] = len(ids)
    return summary, per_sample


# --- references -----------------------------------------------------------------------------------

def _add(refs: dict[str, list[str]], image_id: Any, caption: Any, where: str) -> None:
    from eval.formats import key_of

    if not isinstance(caption, str):
        raise UserError(f"{where}: caption is not a string: {str(caption)[:60]!r}")
    refs.setdefault(key_of(image_id, where), []).append(caption)


def hf_image_id(row: dict) -> Any:
    """lmms-lab/COCO-Caption2017 names images "000000179765.jpg" (or "COCO_val2014_000000203564.jpg"):
    the last number of file_name (else question_id) is the image id, as the data reader reads it."""
    for name in ("file_name", "question_id"):
        value = row.get(name)
        if isinstance(value, str):
            digits = re.findall(r"\d+", Path(value).stem)
            if digits:
                return int(digits[-1])
    return row.get("id")


def locate(path: Path, split: str | None) -> tuple[Path, str | None]:
    """The captions file of `split` in an official folder (found as `vlm-grades train --data` finds it; without
    a split, the folder's only captions_*.json, else dataset_coco.json), else `path` itself; and the split."""
    from eval.formats import one_split
    from vlm_grades.data import coco as data
    from vlm_grades.data.files import find_file, official_files

    if not path.is_dir():
        return path, split
    if split:
        found = data.find_official(path, split)
        return (found[1] if found else path), split
    found = one_split(path, official_files(path, "captions_*.json"), "captions_", ".json")
    return found or find_file(path, [data.KARPATHY], deep=False) or path, None


def read_references(path: str, split: str | None = None) -> dict[str, list[str]]:
    """captions_*.json (COCO annotations), Karpathy's dataset_coco.json (split default "test"), a
    Hugging Face layout with the lmms-lab/COCO-Caption2017 columns (question_id, answer list), or a
    folder holding one of them."""
    from eval.formats import is_table, read_json, read_table

    where, split = locate(Path(path), split)
    path = str(where)
    refs: dict[str, list[str]] = {}
    if is_table(path):
        rows = read_table(path, ["question_id", "answer", "file_name", "id"], split=split,
                          optional=("file_name", "id"))
        for n, row in enumerate(rows):
            answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
            key = hf_image_id(row)
            if key is None:
                raise UserError(f"{path}: row {n} has no image id (file_name, question_id or id)")
            for caption in answers:  # every one, as in the official JSON (annotators repeat captions)
                _add(refs, key, caption, f"{path}: row {n}")
        if not refs:
            raise UserError(f"{path}: no captions")
        return refs
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        for n, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                raise UserError(f"{path}: annotation {n} has no image_id/caption")
            _add(refs, ann["image_id"], ann["caption"], f"{path}: annotation {n}")
    elif isinstance(data, dict) and isinstance(data.get("images"), list) and data["images"] \
            and "sentences" in data["images"][0]:
        split = split or "test"
        for n, img in enumerate(data["images"]):
            if img.get("split") != split:
                continue
            image_id = img.get("cocoid", img.get("imgid"))
            if str(image_id) in refs:
                raise UserError(f"{path}: duplicate image {image_id!r}")
            for sent in img.get("sentences", []):
                _add(refs, image_id, sent.get("raw") if isinstance(sent, dict) else sent, f"{path}: image {n}")
        if not refs:
            raise UserError(f"{path}: no images in split {split!r} (Karpathy splits: train, restval, val, test)")
    else:
        raise UserError(f"{path}: not a COCO captions file (expected captions_*.json with 'annotations' "
                        f"or Karpathy's dataset_coco.json with 'images'/'sentences')")
    if not refs:
        raise UserError(f"{path}: no captions")
    return refs


def references_from_samples(samples) -> dict[str, list[str]]:
    from eval.formats import key_of

    refs = {}
    for s in samples:
        k = key_of(s.meta.get("image_id", s.id), f"sample {s.id}")
        if k in refs:
            raise UserError(f"coco samples: two samples of image {k}")
        refs[k] = list(s.targets)
    return refs


def sample_key(sample) -> str:
    return str(sample.meta.get("image_id", sample.id)).strip()
