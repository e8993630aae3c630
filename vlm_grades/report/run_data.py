"""A run folder read into memory for reporting: logs cleaned of resume duplicates and torn lines.

Resumed runs append to the same logs. A record whose step is not larger than the one before it marks a
resume point: records of the earlier attempt from that step on are dropped, so the latest attempt wins.
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlm_grades.errors import UserError
from vlm_grades.training.run_folder import RunFolder

MODALITIES = ("vision", "projector", "language")


def num(value: Any) -> float:
    """A logged number; "nan"/"inf"/"-inf" strings (see RUN_FOLDER.md) and junk become floats/nan."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def finite(value: Any) -> bool:
    return math.isfinite(num(value))


@dataclass
class Component:
    name: str
    modality: str
    layer: int
    kind: str
    numel: int


def _resolve_by_step(records: list[dict]) -> list[dict]:
    """Keep the latest attempt's records: a step that goes back drops what the earlier attempt wrote
    from that step on; the result is sorted by step with one record per step."""
    kept: list[dict] = []
    for r in records:
        step = r.get("step")
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            continue
        if kept and step <= kept[-1]["step"]:
            kept = [k for k in kept if k["step"] < step]
        kept.append(r)
    return kept


def _resume_step(start: dict) -> int | None:
    src = start.get("resumed_from")
    if src is None:
        return None
    if isinstance(src, (int, float)) and not isinstance(src, bool):
        return int(src)
    m = re.search(r"(\d+)\D*$", str(src))
    if m:
        return int(m.group(1))
    step = start.get("step")
    return int(step) if isinstance(step, (int, float)) else None


def _resolve_events(records: list[dict]) -> list[dict]:
    """A resumed start event drops events of the earlier attempt after the checkpoint it resumed from."""
    kept: list[dict] = []
    for e in records:
        if not isinstance(e.get("type"), str):
            continue
        if e["type"] == "start":
            s = _resume_step(e)
            if s is not None:
                kept = [k for k in kept if k["type"] == "start" or num(k.get("step", 0)) <= s]
        kept.append(e)
    return kept


@dataclass
class RunData:
    path: Path
    config: dict
    config_text: str
    architecture: str
    modality_info: dict[str, dict]
    components: list[Component]
    checks: list[dict]
    events: list[dict]
    metrics: list[dict]
    freeze_steps: dict[str, int] = field(default_factory=dict)
    finalize_steps: dict[str, int] = field(default_factory=dict)

    # ---------- loading
    @classmethod
    def load(cls, path: str | Path) -> "RunData":
        run = RunFolder.open_existing(path)
        config_text = (run.path / "config.yaml").read_text()
        try:
            config = yaml.safe_load(config_text) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{run.path / 'config.yaml'}: not valid YAML ({e})") from None
        try:
            reg = run.read_json("components.json")
        except ValueError as e:
            raise UserError(f"{run.path / 'components.json'}: not valid JSON ({e})") from None
        if not isinstance(reg, dict) or not isinstance(reg.get("components"), list):
            raise UserError(f"{run.path / 'components.json'}: no 'components' list")
        comps = []
        for i, c in enumerate(reg["components"]):
            try:
                layer = c.get("layer")
                comps.append(Component(str(c["name"]), str(c["modality"]), int(layer) if layer is not None else 0,
                                       str(c.get("kind") or c["name"].rsplit(".", 1)[-1]), int(c.get("numel", 0))))
            except (KeyError, TypeError, ValueError, AttributeError):
                raise UserError(f"{run.path / 'components.json'}: component {i} lacks name/modality/layer") from None
        data = cls(
            path=run.path, config=config if isinstance(config, dict) else {}, config_text=config_text,
            architecture=str(reg.get("architecture", "?")), modality_info=dict(reg.get("modalities") or {}),
            components=comps,
            checks=_resolve_by_step([r for r in run.read("convergence") if isinstance(r, dict)]),
            events=_resolve_events([r for r in run.read("events") if isinstance(r, dict)]),
            metrics=_resolve_by_step([r for r in run.read("metrics") if isinstance(r, dict)]),
        )
        data._index_events()
        return data

    def _index_events(self) -> None:
        known = {c.name for c in self.components}
        for e in self.events:
            if e["type"] == "freeze" and e.get("component") in known and finite(e.get("step")):
                self.freeze_steps[e["component"]] = int(num(e["step"]))
            elif e["type"] == "finalize" and e.get("modality") and finite(e.get("step")):
                self.finalize_steps[e["modality"]] = int(num(e["step"]))
        # Older logs without freeze events: the first check listing a component as frozen.
        if not any(e["type"] == "freeze" for e in self.events):
            for chk in self.checks:
                for name in chk.get("frozen") or []:
                    if name in known:
                        self.freeze_steps.setdefault(name, int(chk["step"]))

    # ---------- views
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def modalities(self) -> list[str]:
        present = {c.modality for c in self.components} | set(self.modality_info)
        return [m for m in MODALITIES if m in present] + sorted(present - set(MODALITIES))

    def components_of(self, modality: str) -> list[Component]:
        return [c for c in self.components if c.modality == modality]

    def modality_parameters(self, modality: str) -> int:
        info = self.modality_info.get(modality) or {}
        p = info.get("parameters")
        if isinstance(p, (int, float)) and p > 0:
            return int(p)
        return sum(c.numel for c in self.components_of(modality))

    def last_event(self, kind: str) -> dict | None:
        found = [e for e in self.events if e["type"] == kind]
        return found[-1] if found else None

    @property
    def start(self) -> dict | None:
        starts = [e for e in self.events if e["type"] == "start"]
        return starts[0] if starts else None

    @property
    def end(self) -> dict | None:
        return self.last_event("end")

    @property
    def ended(self) -> bool:
        return self.end is not None

    @property
    def stop_reason(self) -> str | None:
        for kind, key in (("end", "stop_reason"), ("stop", "reason")):
            e = self.last_event(kind)
            if e and e.get(key):
                return str(e[key])
        return None

    @property
    def total_steps(self) -> int | None:
        for e in reversed([e for e in self.events if e["type"] == "start"]):
            if finite(e.get("total_steps")):
                return int(num(e["total_steps"]))
        train = self.config.get("train") if isinstance(self.config.get("train"), dict) else {}
        for key in ("total_steps", "steps", "max_steps"):
            for source in (self.config, train):
                if finite(source.get(key)):
                    return int(num(source[key]))
        return None

    @property
    def grace_end(self) -> float | None:
        """Last step of the grace period (alpha * planned steps), when the configuration says alpha."""
        grades = self.config.get("grades") if isinstance(self.config.get("grades"), dict) else {}
        alpha, total = num(grades.get("alpha")), self.total_steps
        return alpha * total if (total and math.isfinite(alpha) and alpha > 0) else None

    @property
    def last_step(self) -> int:
        steps = [0]
        for kind in ("end", "stop"):
            e = self.last_event(kind)
            if e and finite(e.get("step")):
                steps.append(int(num(e["step"])))
        if self.metrics:
            steps.append(int(self.metrics[-1]["step"]))
        if self.checks:
            steps.append(int(self.checks[-1]["step"]))
        return max(steps)

    @property
    def wall_time(self) -> float | None:
        e = self.end
        if e and finite(e.get("wall_time")):
            return num(e["wall_time"])
        walls = [num(m.get("wall")) for m in self.metrics if finite(m.get("wall"))]
        return walls[-1] if walls else None

    @property
    def evals(self) -> list[dict]:
        return [e for e in self.events if e["type"] == "eval" and finite(e.get("score"))]

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """Steps and statistic values of one component (only the checks that included it)."""
        steps, values = [], []
        for chk in self.checks:
            vals = chk.get("values") or {}
            if name in vals:
                steps.append(int(chk["step"]))
                values.append(num(vals[name]))
        return steps, values

    def tau_of(self, name: str) -> float:
        """The threshold last in force for a component (nan if never logged)."""
        for chk in reversed(self.checks):
            t = (chk.get("tau") or {}).get(name)
            if t is not None and finite(t):
                return num(t)
        for e in self.events:
            if e["type"] == "freeze" and e.get("component") == name and finite(e.get("tau")):
                return num(e["tau"])
        return math.nan

    def levels(self, name: str) -> tuple[float, float]:
        """(start, end) statistic level: the first non-zero finite value (the first check of a weight-change
        statistic only fills its cache and reads 0) and the last finite value."""
        _, values = self.series(name)
        good = [v for v in values if math.isfinite(v)]
        nonzero = [v for v in good if v != 0]
        start = nonzero[0] if nonzero else (good[0] if good else math.nan)
        return start, (good[-1] if good else math.nan)

    @property
    def metric_name(self) -> str | None:
        for chk in self.checks:
            if chk.get("metric"):
                norm = chk.get("normalization")
                return f"{chk['metric']}" + (f" ({norm})" if norm else "")
        return None


def median(values: list[float]) -> float:
    good = [v for v in values if math.isfinite(v)]
    return statistics.median(good) if good else math.nan
