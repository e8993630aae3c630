"""GradESConfig: what GradES measures, when a matrix counts as converged, and what freezing does.

Two presets. "default": gradient change (paper v3), mean per element (one tau fits matrices of every size),
automatic per-component thresholds, a sampled sketch for big matrices, patience 2, modality finalization.
"official": reproduces the official `grades` package (1.0.6) VLM callback: weight change since the last
check, summed, vision and language thresholds only, one value below tau freezes, no finalization.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Union

from vlm_grades.errors import UserError

MODALITIES = ("vision", "projector", "language")
METRICS = ("grad_change", "grad", "weight_change", "grad_snr")
NORMALIZATIONS = ("mean", "sum")
PRESETS = ("default", "official")
Tau = Union[float, str, None]          # a threshold, "auto", or None (modality not monitored)

OFFICIAL = dict(metric="weight_change", normalization="sum", smoothing=0.0, patience=1, sketch="off",
                finalize_modalities=False, stop_fraction=1.0, interval=1, alpha=0.3,
                tau={"vision": 1e-5, "projector": None, "language": 1e-4})   # the package's own defaults


@dataclass
class GradESConfig:
    preset: str = "default"
    metric: str = "grad_change"             # grad_change (paper v3) | grad (paper v1) | weight_change (official)
                                            # | grad_snr (ours: gradient consistency over snr_window checks)
    snr_window: int = 100                   # grad_snr: the running mean of the gradient spans ~N checks
    normalization: str = "mean"             # mean per element | sum (official)
    tau: Any = "auto"                       # "auto", one float for all, or {modality: float | "auto" | None}
    rho: float = 0.4                        # auto: converged at rho x the component's end-of-grace level
    auto_window: int = 100                  # auto: the level is the mean of the last N checks of the grace period
    alpha: float = 300                      # grace period: an absolute step (>= 1), or a fraction of the planned
                                            # steps (< 1; the official preset's form: it scales with --steps)
    interval: int = 1                       # check every N optimizer steps
    smoothing: float = 0.99                 # exponential smoothing factor beta of the statistic (0 = off)
    patience: int = 2                       # consecutive checks below tau before a matrix freezes
    sketch: str = "auto"                    # auto (big matrices sampled) | on (every matrix) | off (exact)
    sketch_fraction: float = 1 / 32         # entries sampled per sketched matrix ...
    sketch_min: int = 512                   # ... at least this many ...
    sketch_max: int = 65536                 # ... at most this many
    sketch_seed: int = 0
    stop_fraction: float = 1.0              # stop when this fraction of monitored matrices is frozen
    finalize_modalities: bool = True        # a fully frozen modality also freezes its norms and embeddings
    converge_window: int = 200              # "converged": a modality's pooled statistic fell by less than
    converge_tolerance: float = 0.1         # converge_tolerance (log units, ~10%) over its last window checks,
    converge_patience: int = 10             # on this many consecutive checks

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "GradESConfig":
        """Preset first, then the given keys on top (so `preset: official` plus `tau` works)."""
        d = dict(d or {})
        preset = d.get("preset") or "default"
        if preset not in PRESETS:
            raise UserError(f"grades.preset: unknown {preset!r}; choose one of {', '.join(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise UserError(f"grades: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        base: dict[str, Any] = dict(OFFICIAL) if preset == "official" else {}
        if d.get("tau") is not None:
            d["tau"] = layer_tau(preset, d["tau"])
        base.update({k: v for k, v in d.items() if v is not None})
        base["preset"] = preset
        cfg = cls(**base)
        cfg.tau = normalize_tau(cfg.tau)
        cfg.check()
        return cfg

    @classmethod
    def official(cls, vision_tau: float = 1e-5, language_tau: float = 1e-4, **kw: Any) -> "GradESConfig":
        return cls.from_dict({"preset": "official", "tau": {"vision": vision_tau, "language": language_tau}, **kw})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Checks that need no knowledge of the run; `validate(total_steps)` adds the rest."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UserError(f"grades.{msg}")

        need(self.metric in METRICS, f"metric: unknown {self.metric!r}; choose one of {', '.join(METRICS)}")
        need(self.normalization in NORMALIZATIONS,
             f"normalization: unknown {self.normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
        self.tau = normalize_tau(self.tau)
        need(any(v is not None for v in self.tau.values()), "tau: every modality is switched off (None)")
        need(_finite(self.rho) and 0 < self.rho < 1, f"rho: must be in (0, 1), got {self.rho}")
        need(isinstance(self.auto_window, int) and self.auto_window >= 1, "auto_window: must be an integer >= 1")
        need(isinstance(self.snr_window, int) and self.snr_window >= 2, "snr_window: must be an integer >= 2")
        need(isinstance(self.converge_window, int) and self.converge_window >= 2,
             "converge_window: must be an integer >= 2")
        need(isinstance(self.converge_patience, int) and self.converge_patience >= 1,
             "converge_patience: must be an integer >= 1")
        need(_finite(self.converge_tolerance) and self.converge_tolerance > 0,
             f"converge_tolerance: must be > 0, got {self.converge_tolerance}")
        need(_finite(self.alpha) and self.alpha >= 0, f"alpha: must be a fraction in [0, 1) or a step >= 1, "
                                                      f"got {self.alpha}")
        need(self.alpha < 1 or float(self.alpha).is_integer(),
             f"alpha: {self.alpha} is neither a fraction (< 1) nor a whole step number")
        need(isinstance(self.interval, int) and self.interval >= 1, f"interval: must be an integer >= 1, "
                                                                    f"got {self.interval}")
        need(_finite(self.smoothing) and 0 <= self.smoothing < 1, f"smoothing: must be in [0, 1), got {self.smoothing}")
        need(isinstance(self.patience, int) and self.patience >= 1, f"patience: must be an integer >= 1, "
                                                                    f"got {self.patience}")
        need(self.sketch in ("auto", "on", "off"), f"sketch: must be auto, on or off, got {self.sketch!r}")
        need(_finite(self.sketch_fraction) and 0 < self.sketch_fraction <= 1, "sketch_fraction: must be in (0, 1]")
        need(1 <= self.sketch_min <= self.sketch_max, "sketch_min/sketch_max: need 1 <= sketch_min <= sketch_max")
        need(_finite(self.stop_fraction) and 0 < self.stop_fraction <= 1,
             f"stop_fraction: must be in (0, 1], got {self.stop_fraction}")
        if self.preset == "official":
            need(self.tau.get("projector") is None, "tau: the official preset has no projector threshold")
            need(all(v != "auto" for v in self.tau.values()),
                 "tau: the official preset needs absolute vision and language thresholds, not 'auto'")

    def validate(self, total_steps: int | None) -> int:
        """Full validation for a run of `total_steps` optimizer steps; returns the grace period in steps."""
        self.check()
        fractional = self.alpha < 1
        if fractional and (total_steps is None or total_steps <= 0):
            raise UserError(f"grades.alpha: {self.alpha} is a fraction of the planned steps, but the total number "
                            f"of steps is unknown ({total_steps}); give an absolute step (alpha >= 1) or max_steps")
        grace = int(self.alpha * total_steps) if fractional else int(self.alpha)
        if grace == 0 and fractional and self.alpha > 0:
            raise UserError(f"grades.alpha: {self.alpha} of {total_steps} planned steps (--steps) is a grace period "
                            f"of 0 steps; plan more steps or give alpha as a step number (>= 1)")
        if grace == 0:
            if self.uses_auto:
                raise UserError("grades.alpha: tau 'auto' needs a grace period (alpha > 0) to measure each "
                                "matrix's starting level")
            raise UserError("grades.alpha: a zero grace period with an absolute tau would judge matrices on "
                            "their first noisy statistics (the official code then freezes everything at once); "
                            "use alpha > 0")
        return grace

    # ------------------------------------------------------------------ helpers
    @property
    def uses_auto(self) -> bool:
        return any(v == "auto" for v in self.tau.values())

    def monitored_modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if self.tau.get(m) is not None)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _one_tau(value: Any, where: str) -> Tau:
    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise UserError(f"grades.tau{where}: {value!r} is neither a number nor 'auto'") from None
    if not _finite(value) or value <= 0:
        raise UserError(f"grades.tau{where}: must be a finite number > 0, 'auto' or null, got {value!r}")
    return float(value)


def normalize_tau(tau: Any) -> dict[str, Tau]:
    """"auto" | number | {modality: number | "auto" | None} -> {modality: ...} for all three modalities."""
    if isinstance(tau, dict):
        _known(tau)
        return {m: _one_tau(tau.get(m), f".{m}") for m in MODALITIES}
    one = _one_tau(tau, "")
    if one is None:
        raise UserError("grades.tau: null switches every modality off; give a number, 'auto' or a mapping")
    return {m: one for m in MODALITIES}


def _known(tau: dict) -> None:
    unknown = sorted(set(tau) - set(MODALITIES), key=str)
    if unknown:
        raise UserError(f"grades.tau.{unknown[0]}: unknown modality; use {', '.join(MODALITIES)}")


def layer_tau(preset: str, *layers: Any) -> dict[str, Tau]:
    """The thresholds set by `layers` over the preset's own, later layers winning (defaults < YAML < flags): a
    number or "auto" sets every modality the preset monitors (official: vision and language), a mapping only
    the modalities it names (null switches one off), a tuple is several layers in order (the flags: --tau,
    then --tau-<modality>)."""
    official = preset == "official"
    tau: dict[str, Any] = dict(OFFICIAL["tau"]) if official else {m: "auto" for m in MODALITIES}
    for layer in _flat(layers):
        if isinstance(layer, dict):
            _known(layer)                          # a bad value may be overridden by a later layer: checked last
            tau.update(layer)
        elif layer is None:
            raise UserError("grades.tau: null switches every modality off; give a number, 'auto' or a mapping")
        else:
            tau.update({m: layer for m in (("vision", "language") if official else MODALITIES)})
    return normalize_tau(tau)


def _flat(layers: tuple) -> list:
    return [x for layer in layers for x in (_flat(layer) if isinstance(layer, tuple) else [layer])]
