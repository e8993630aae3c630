"""Scoring dispatch shared by `vlm-grades score` (files) and `evaluate` (a model over samples), and the
evaluation runner the training loop calls at the end of training.

evaluate(adapter, samples, task, out_dir) writes to out_dir:
  <task>_predictions.json   the official result format
  <task>_samples.jsonl      one line per sample: id, prompt, prediction, references, score (and correct)
  <task>_scores.json        the scores (as returned)
predict(...) writes the first two (no references, no score) and <task>_submission.json, the file a
submission server takes (every question it expects, answered or empty).
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from eval import coco, easyvqa, formats, gqa, vqav2
from vlm_grades.errors import UserError
from vlm_grades.feature_cache.memory import DEFAULT_SIZE, FeatureCache, parse_size

DEFAULT_CACHE_BYTES = parse_size(DEFAULT_SIZE)

TASKS = ("vqav2", "gqa", "coco", "easyvqa", "easyvqa-caption", "scenes")
HEADLINE = {"vqav2": "accuracy", "gqa": "accuracy", "coco": "CIDEr", "easyvqa": "accuracy",
            "easyvqa-caption": "accuracy", "scenes": "accuracy"}
MAX_NEW_TOKENS = {"vqav2": 16, "gqa": 16, "coco": 64, "easyvqa": 8, "easyvqa-caption": 8, "scenes": 16}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise UserError(f"--task: unknown task {task!r} (choose from {', '.join(TASKS)})")


def score_predictions(task: str, predictions: dict[str, str], references: dict[str, Any], *,
                      partial: bool = False, pred_name: str = "predictions", ref_name: str = "references",
                      lmms_eval: bool = False, raw: bool = False, spice: bool | None = None,
                      spice_corenlp: str | None = None, log: Callable[[str], None] | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Align ids, then score with the task's metric. Returns (result, per-sample scores).
    result: {task, score (the headline metric), metric, metrics (the task's summary), coverage}."""
    _check_task(task)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    required = gqa.balanced_ids(references) if task == "gqa" else references
    kept, coverage = formats.align(predictions, references, required, pred_name, ref_name, partial)
    if coverage["missing_predictions"] or coverage["unknown_predictions"]:
        log(f"--partial: scoring {coverage['scored']} ids; {coverage['missing_predictions']} of "
            f"{ref_name} have no prediction, {coverage['unknown_predictions']} predictions are not in it")
    refs = {k: r for k, r in references.items()
            if k in kept or (task == "gqa" and not r["is_balanced"])}  # gqa counts the unbalanced it skips
    if task == "vqav2":
        metrics, per_sample = vqav2.score(kept, refs, lmms_eval=lmms_eval)
    elif task == "gqa":
        metrics, per_sample = gqa.score(kept, refs, lmms_eval=lmms_eval)
    elif task in ("easyvqa", "scenes"):   # scenes: the same exact match, per answer kind
        metrics, per_sample = easyvqa.score(kept, refs, raw=raw)
    elif task == "easyvqa-caption":
        metrics, per_sample = easyvqa.score_captions(kept, refs, raw=raw)
    else:
        metrics, per_sample = coco.score(kept, refs, spice=spice, spice_corenlp=spice_corenlp, log=log)
    result = {"task": task, "metric": HEADLINE[task], "score": metrics[HEADLINE[task]],
              "n": metrics["n"], "metrics": metrics, "coverage": coverage}
    return result, per_sample


def references_from_samples(task: str, samples: list) -> dict[str, Any]:
    _check_task(task)
    if task != "coco":
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            raise UserError(f"{task} samples: duplicate sample ids")
    if task == "easyvqa-caption":
        return easyvqa.caption_references_from_samples(samples)
    return {"vqav2": vqav2, "gqa": gqa, "coco": coco, "easyvqa": easyvqa,
            "scenes": easyvqa}[task].references_from_samples(samples)


def sample_key(task: str, sample) -> str:
    return coco.sample_key(sample) if task == "coco" else str(sample.id)


# --- generation -----------------------------------------------------------------------------------

class _Preprocessed:
    """Map-style dataset: per-sample preprocessing runs in DataLoader workers."""

    def __init__(self, adapter, samples):
        self.adapter, self.samples = adapter, samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.adapter.preprocess(self.samples[i], train=False)


def generate(adapter, samples: list, batch_size: int = 16, max_new_tokens: int = 16, num_workers: int = 0,
             progress: bool = True, desc: str = "eval", feature_cache: int = DEFAULT_CACHE_BYTES,
             stats: dict | None = None) -> list[str]:
    """Batched greedy generation in sample order, with a progress bar showing samples/s. feature_cache: bytes
    for the features of repeated images (the model is fixed here, so always valid; 0 = off); its statistics
    go to `stats` when given."""
    with _feature_cache(adapter, feature_cache) as cache:
        texts = _generate(adapter, samples, batch_size, max_new_tokens, num_workers, progress, desc)
        if cache is not None and stats is not None:
            stats["feature_cache"] = cache.stats()
    return texts


@contextlib.contextmanager
def _feature_cache(adapter, max_bytes: int):
    """A fresh feature cache on the adapter for one evaluation (None: off, or an adapter without one)."""
    if max_bytes <= 0 or not hasattr(adapter, "feature_cache"):
        yield None
        return
    previous, adapter.feature_cache = adapter.feature_cache, FeatureCache(max_bytes)
    try:
        yield adapter.feature_cache
    finally:
        adapter.feature_cache = previous


def _generate(adapter, samples: list, batch_size: int, max_new_tokens: int, num_workers: int, progress: bool,
              desc: str) -> list[str]:
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    loader = DataLoader(_Preprocessed(adapter, samples), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=adapter.collate)
    model = getattr(adapter, "model", None)
    was_training = bool(getattr(model, "training", False))
    if model is not None:
        model.eval()
    outputs: list[str] = []
    bar = tqdm(total=len(samples), desc=desc, unit="sample", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    try:
        with torch.no_grad():
            for batch in loader:
                texts = adapter.generate(batch, max_new_tokens)
                expected = min(batch_size, len(samples) - len(outputs))
                if len(texts) != expected:
                    raise RuntimeError(f"adapter.generate returned {len(texts)} answers for a batch of {expected}")
                outputs.extend(str(t) for t in texts)
                bar.update(len(texts))
    finally:
        bar.close()
        if model is not None and was_training:
            model.train()
    return outputs


def _generate_keyed(adapter, samples: list, task: str, batch_size: int, max_new_tokens: int | None,
                   num_workers: int, progress: bool, feature_cache: int
                   ) -> tuple[list[str], list[str], dict[str, Any]]:
    """(sample keys, generated texts, generation statistics)."""
    max_new_tokens = max_new_tokens or MAX_NEW_TOKENS[task]
    start = time.perf_counter()
    stats: dict[str, Any] = {}
    texts = generate(adapter, samples, batch_size, max_new_tokens, num_workers, progress, desc=f"eval {task}",
                     feature_cache=feature_cache, stats=stats)
    seconds = time.perf_counter() - start
    generation = {"samples": len(samples), "seconds": round(seconds, 3),
                  "samples_per_s": round(len(samples) / seconds, 3) if seconds > 0 else None,
                  "batch_size": batch_size, "max_new_tokens": max_new_tokens, **stats}
    return [sample_key(task, s) for s in samples], texts, generation


def _write_samples(path: Path, records) -> None:
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def evaluate(adapter, samples: list, task: str, out_dir: str | Path, batch_size: int = 16,
             max_new_tokens: int | None = None, num_workers: int = 0, progress: bool = True,
             feature_cache: int = DEFAULT_CACHE_BYTES, **score_options) -> dict[str, Any]:
    """Generate answers for `samples`, write them in the official format, score them (the same metric
    functions as `vlm-grades score`). score_options: lmms_eval (vqav2, gqa), raw (easyvqa), spice,
    spice_corenlp (coco). Returns the scores dict, also written to <task>_scores.json."""
    _check_task(task)
    if not samples:
        raise UserError(f"{task}: no samples to evaluate")
    references = references_from_samples(task, samples)  # validate before spending time generating
    keys, texts, generation = _generate_keyed(adapter, samples, task, batch_size, max_new_tokens, num_workers,
                                              progress, feature_cache)
    predictions = dict(zip(keys, texts))

    result, per_sample = score_predictions(task, predictions, references, pred_name=f"{task} generation",
                                           ref_name=f"{task} samples", **score_options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"predictions": out / f"{task}_predictions.json", "samples": out / f"{task}_samples.jsonl",
             "scores": out / f"{task}_scores.json"}
    formats.write_predictions(task, predictions, files["predictions"])
    _write_samples(files["samples"], (_sample_record(task, s, k, text, references, per_sample)
                                      for s, k, text in zip(samples, keys, texts)))
    result["generation"] = generation
    result["files"] = {k: str(v) for k, v in files.items()}
    from vlm_grades.training.run_folder import write_json_atomic

    write_json_atomic(files["scores"], result)
    return result


def predict(adapter, samples: list, task: str, out_dir: str | Path, batch_size: int = 16,
            max_new_tokens: int | None = None, num_workers: int = 0, progress: bool = True,
            submission_ids: list[str] | None = None, feature_cache: int = DEFAULT_CACHE_BYTES) -> dict[str, Any]:
    """Generate answers without scoring them (a split without public answers). Writes <task>_predictions.json,
    <task>_samples.jsonl and <task>_submission.json: the official result format over `submission_ids`
    (default: the samples'), an empty answer for each id without a prediction, as the servers want every
    question answered."""
    _check_task(task)
    if not samples:
        raise UserError(f"{task}: no samples to predict")
    if len({sample_key(task, s) for s in samples}) != len(samples):
        raise UserError(f"{task} samples: duplicate sample ids")
    keys, texts, generation = _generate_keyed(adapter, samples, task, batch_size, max_new_tokens, num_workers,
                                              progress, feature_cache)
    predictions = dict(zip(keys, texts))
    ids = list(submission_ids) if submission_ids is not None else list(keys)
    listed = set(ids)
    ids += [k for k in keys if k not in listed]
    submission = {k: predictions.get(k, "") for k in ids}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"predictions": out / f"{task}_predictions.json", "samples": out / f"{task}_samples.jsonl",
             "submission": out / f"{task}_submission.json"}
    formats.write_predictions(task, predictions, files["predictions"])
    formats.write_predictions(task, submission, files["submission"])
    _write_samples(files["samples"], ({"id": s.id, "prompt": s.prompt, "prediction": text}
                                      for s, text in zip(samples, texts)))
    answered = sum(1 for k in ids if k in predictions)
    return {"task": task, "n": len(samples), "scored": False, "generation": generation,
            "submission": {"questions": len(ids), "answered": answered, "empty": len(ids) - answered},
            "files": {k: str(v) for k, v in files.items()}}


def _sample_record(task, sample, key, text, references, per_sample) -> dict[str, Any]:
    ref = references[key]
    refs = (ref if task == "coco" else ref["answers"] if task == "vqav2"
            else [ref["caption"]] if task == "easyvqa-caption" else [ref["answer"]])
    record = {"id": sample.id, "prompt": sample.prompt, "prediction": text, "references": refs,
              "score": per_sample.get(key)}
    if task in ("gqa", "easyvqa", "easyvqa-caption", "scenes") and key in per_sample:
        record["correct"] = per_sample[key] == 1.0
    if task == "vqav2":
        record["correct"] = per_sample.get(key) == 1.0
    return record


# --- display --------------------------------------------------------------------------------------

def format_table(result: dict[str, Any]) -> str:
    """A plain two-column table of a score_predictions/evaluate result."""
    m = result["metrics"]
    rows: list[tuple[str, str]] = [("task", result["task"]), ("scored", str(result["n"]))]
    if "protocol" in m:
        rows.append(("protocol", {"vqav2": vqav2, "gqa": gqa}[result["task"]].PROTOCOLS[m["protocol"]]))

    def add(name, value, indent=0):
        rows.append(("  " * indent + name, f"{value:.2f}" if isinstance(value, float) else str(value)))

    task = result["task"]
    if task == "coco":
        for name in coco.METRICS + ("SPICE",):
            if name in m:
                add(name, m[name])
    elif task == "easyvqa-caption":
        for name in ("accuracy", "color", "shape"):
            add(name, m[name])
    else:
        add("accuracy", m["accuracy"])
        if task == "gqa":
            add(f"binary ({m['n_binary']})", m["binary"])
            add(f"open ({m['n_open']})", m["open"])
        groups = {"vqav2": ["per_answer_type", "per_question_type"],
                  "gqa": ["per_structural_type", "per_semantic_type"], "easyvqa": ["per_kind"],
                  "scenes": ["per_kind"]}[task]
        for g in groups:
            rows.append((g.replace("_", " "), ""))
            for k, v in m[g].items():
                add(k, v, indent=1)
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a.ljust(width)}  {b}".rstrip() for a, b in rows)
