"""When training may use the feature cache, and what it reports.

The cache goes on once every parameter of the vision encoder and of the projector is frozen (by --freeze from
step 1, or finalized by GradES) and the adapter names nothing that makes an image's features vary between steps
(random augmentation, dropout in the tower, LoRA adapters on it). The decision follows from the freeze state
alone, which the engine keeps identical on every process, so every process switches at the same step; each
caches the images it sees (a disk tier: its own file). Once on, it stays on: frozen parameters never thaw.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from vlm_grades.feature_cache.memory import FeatureCache, format_size

TOWER = ("vision", "projector")


class FeatureCacheSwitch:
    def __init__(self, adapter, modality_params: dict[str, list], max_bytes: int,
                 emit: Callable[[str, dict], None] | None = None, say: Callable[[str], None] | None = None,
                 disk_bytes: int = 0, disk_path: Path | None = None, blocker: str | None = None):
        self.adapter, self.params, self.max_bytes = adapter, modality_params, max_bytes
        self.blocker = blocker   # a reason of the run's own (not the adapter's) that keeps the cache off
        self.disk_bytes, self.disk_path = disk_bytes, disk_path
        if disk_bytes > 0:   # a folder that cannot be made fails now, not when the tower freezes
            self._disk_error(lambda: disk_path.parent.mkdir(parents=True, exist_ok=True))
        self.emit, self.say = emit, say
        self.cache: FeatureCache | None = None
        self.on_step: int | None = None
        self._blocked_told = False

    def tower_frozen(self) -> bool:
        return not any(p.requires_grad for m in TOWER for _, p in self.params.get(m, ()))

    def update(self, step: int) -> None:
        """Call after the freeze state may have changed (start of training, after each optimizer step)."""
        if self.cache is not None or self.max_bytes <= 0 or not self.tower_frozen():
            return
        blocker = self.blocker or getattr(self.adapter, "feature_cache_blocker",
                                          lambda: "this model adapter has no feature cache")()
        if blocker:
            if not self._blocked_told:
                self._blocked_told = True
                self._tell(step, {"state": "off", "reason": blocker},
                           f"feature cache off: {blocker} (vision and projector are frozen from step {step})")
            return
        self.cache, self.on_step = FeatureCache(self.max_bytes, self._disk_tier()), step
        self.adapter.feature_cache = self.cache
        record, disk = {"state": "on", "max_bytes": self.max_bytes}, ""
        if self.disk_bytes > 0:
            record["disk_bytes"] = self.disk_bytes
            disk = f" in memory, {format_size(self.disk_bytes)} on disk"
        self._tell(step, record, f"feature cache on from step {step}: vision and projector frozen, features of "
                                 f"up to {format_size(self.max_bytes)}{disk} kept")

    def _disk_tier(self):
        if self.disk_bytes <= 0:
            return None
        from vlm_grades.feature_cache.disk import DiskTier

        return self._disk_error(lambda: DiskTier(self.disk_path, self.disk_bytes))

    def _disk_error(self, make: Callable[[], Any]) -> Any:
        from vlm_grades.errors import UserError

        try:
            return make()
        except OSError as e:
            raise UserError(f"--feature-cache-dir {self.disk_path.parent}: cannot write the disk tier "
                            f"({e.strerror or e})") from None

    def close(self) -> None:
        """End of training: the disk tier's file goes."""
        if self.cache is not None:
            self.cache.close()

    def _tell(self, step: int, record: dict[str, Any], line: str) -> None:
        if self.emit is not None:
            self.emit("events", {"type": "feature_cache", "step": step, **record})
        if self.say is not None:
            self.say(line)

    def step_record(self, reduce_sum: Callable[[list[int]], list[int]] | None = None, rank: int = 0,
                    processes: int = 1) -> dict[str, Any] | None:
        """metrics.jsonl fields of this step (None while off): this process's cache statistics, the tower rows
        the step skipped (summed over processes with reduce_sum, as `tokens` are) and, with several processes,
        every process's hits and misses (its slot of the same sum)."""
        if self.cache is None:
            return None
        skipped = self.cache.take_skipped_rows()
        stats = self.cache.stats()
        counts = ("hits", "misses", "disk_hits") if self.cache.disk is not None else ("hits", "misses")
        values = [skipped[m] for m in TOWER]
        if reduce_sum is not None:
            slots = [0] * (len(counts) * processes)
            slots[rank * len(counts):(rank + 1) * len(counts)] = [stats[c] for c in counts]
            values = reduce_sum(values + slots)
        record = {"feature_cache": stats, "cached_rows": dict(zip(TOWER, values[:len(TOWER)]))}
        if reduce_sum is not None:
            per_rank = values[len(TOWER):]
            record["feature_cache_ranks"] = [dict(zip(counts, per_rank[r * len(counts):(r + 1) * len(counts)]))
                                             for r in range(processes)]
        return record

    def postfix(self) -> str:
        return f" | {self.cache.describe()}" if self.cache is not None else ""
