"""When training may use the feature cache, and what it reports.

The cache goes on once every parameter of the vision encoder and of the projector is frozen (by --freeze from
step 1, or finalized by GradES) and the adapter names nothing that makes an image's features vary between steps
(random augmentation, dropout in the tower, LoRA adapters on it). The decision follows from the freeze state
alone, which the engine keeps identical on every process, so every process switches at the same step; each
caches the images it sees. Once on, it stays on: frozen parameters never thaw.
"""
from __future__ import annotations

from typing import Any, Callable

from vlm_grades.feature_cache import FeatureCache, format_size

TOWER = ("vision", "projector")


class FeatureCacheSwitch:
    def __init__(self, adapter, modality_params: dict[str, list], max_bytes: int,
                 emit: Callable[[str, dict], None] | None = None, say: Callable[[str], None] | None = None):
        self.adapter, self.params, self.max_bytes = adapter, modality_params, max_bytes
        self.emit, self.say = emit, say
        self.cache: FeatureCache | None = None
        self._blocked_told = False

    def tower_frozen(self) -> bool:
        return not any(p.requires_grad for m in TOWER for _, p in self.params.get(m, ()))

    def update(self, step: int) -> None:
        """Call after the freeze state may have changed (start of training, after each optimizer step)."""
        if self.cache is not None or self.max_bytes <= 0 or not self.tower_frozen():
            return
        blocker = getattr(self.adapter, "feature_cache_blocker", lambda: "this model adapter has no feature cache")()
        if blocker:
            if not self._blocked_told:
                self._blocked_told = True
                self._tell(step, {"state": "off", "reason": blocker},
                           f"feature cache off: {blocker} (vision and projector are frozen from step {step})")
            return
        self.cache = FeatureCache(self.max_bytes)
        self.adapter.feature_cache = self.cache
        self._tell(step, {"state": "on", "max_bytes": self.max_bytes},
                   f"feature cache on from step {step}: vision and projector frozen, features of up to "
                   f"{format_size(self.max_bytes)} kept")

    def _tell(self, step: int, record: dict[str, Any], line: str) -> None:
        if self.emit is not None:
            self.emit("events", {"type": "feature_cache", "step": step, **record})
        if self.say is not None:
            self.say(line)

    def step_record(self, reduce_sum: Callable[[list[int]], list[int]] | None = None) -> dict[str, Any] | None:
        """metrics.jsonl fields of this step (None while off): this process's cache statistics, and the tower
        rows the step skipped (summed over processes with reduce_sum, as `tokens` are)."""
        if self.cache is None:
            return None
        skipped = self.cache.take_skipped_rows()
        values = [skipped[m] for m in TOWER]
        if reduce_sum is not None:
            values = reduce_sum(values)
        return {"feature_cache": self.cache.stats(), "cached_rows": dict(zip(TOWER, values))}

    def postfix(self) -> str:
        return f" | {self.cache.describe()}" if self.cache is not None else ""
