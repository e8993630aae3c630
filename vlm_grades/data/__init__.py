"""Data readers: every one yields `Sample`s (schema.py)."""
from __future__ import annotations


def load_samples(task, source=None, split="train", **kwargs):
    """See vlm_grades.data.registry.load_samples; easy-VQA needs no source (it comes from its package)."""
    from vlm_grades.data.registry import load_samples as _load

    return _load(task, source, split=split, **kwargs)
