"""Per-component convergence statistics, computed in batches with torch._foreach ops.

  grad_change    || g(t) - g(t-1) ||_1   (paper v3; the previous gradient is kept)
  grad           || g(t) ||_1            (paper v1; nothing kept)
  weight_change  || W(t) - W(last check) ||_1   (the official code; the weights at the last check are kept)

summed over a component's parameters (weight and bias, or LoRA A and B), then "sum" or "mean" per element.

  grad_snr       || m(t) ||^2 / (q(t) * floor(t))   (ours; the running mean m of the gradient is kept)

m is an exponential average (beta) of the gradient, q one of its squared L2 norm, both bias-corrected;
floor(t) is what || m ||^2 / q is for gradients of pure zero-mean noise after t checks, so the statistic is
about 1 once a matrix only sees noise and grows with the part of its gradient that keeps one direction over
about 1 / (1 - beta) checks. A ratio of two norms of the same entries: the same value for a matrix scaled by
any factor, and under any learning rate that leaves the gradients' direction statistics alike.

Storage of the previous tensor is exact (a copy) or a sketch: a fixed, seeded random subset of k entries of
the matrix. The sketch's L1 sum over the k entries, scaled by numel/k, is an unbiased estimate of the full sum;
its memory is k values plus k int32 indices instead of a full copy.

Sharded parameters (FSDP2): every rank measures its own shard, with the sketch positions drawn on the whole
matrix and kept where they fall in that shard; the partial sums are added across ranks (grades/shards.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlm_grades.grades.shards import Shard, all_reduce_sum, gather_runs, local, local_index, shard_of, take_run


@dataclass(eq=False)
class Entry:
    key: str                       # "<component>:<param suffix>"
    comp: int                      # position of the component in the engine's monitored list
    param: nn.Parameter
    index: torch.Tensor | None     # sketch: int32 flat positions of the whole matrix, sorted; None: exact
    prev: torch.Tensor | None = None
    shard: Shard | None = None     # the flat run of a sharded parameter held by this rank
    lindex: torch.Tensor | None = None   # the sketch positions inside that run (index itself when unsharded)

    def __post_init__(self) -> None:
        self.shard = shard_of(self.param)

    @property
    def numel(self) -> int:
        return self.param.numel()

    @property
    def scale(self) -> float:
        return 1.0 if self.index is None else self.numel / self.index.numel()

    def nbytes(self) -> int:
        n = 0 if self.prev is None else self.prev.numel() * self.prev.element_size()
        return n + (0 if self.index is None else self.index.numel() * self.index.element_size())


def sketch_size(numel: int, mode: str, fraction: float, k_min: int, k_max: int) -> int | None:
    """Entries sampled for a matrix of `numel` entries, or None for exact storage.
    auto: sample only when it saves at least 4x (small matrices and biases stay exact)."""
    if mode == "off":
        return None
    k = int(min(max(round(numel * fraction), k_min), k_max))
    if k >= numel or (mode == "auto" and 4 * k > numel):
        return None
    return k


def sketch_index(numel: int, k: int, seed: int, key: str, device: torch.device) -> torch.Tensor:
    """A fixed random subset of k of numel flat positions: the same for the same (seed, key, numel)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed((seed * 1_000_003 + _stable_hash(key)) % (2 ** 63))
    if numel <= 16 * k:
        idx = torch.randperm(numel, generator=gen)[:k]
    else:                       # no permutation of a huge matrix: draw, deduplicate, top up
        idx = torch.empty(0, dtype=torch.long)
        while idx.numel() < k:
            idx = torch.unique(torch.cat([idx, torch.randint(numel, (k,), generator=gen)]))
        idx = idx[torch.randperm(idx.numel(), generator=gen)[:k]]
    return idx.sort().values.to(device=device, dtype=torch.int32)


def _stable_hash(s: str) -> int:
    h = 1469598103934665603
    for b in s.encode():
        h = ((h ^ b) * 1099511628211) % (2 ** 64)
    return h


class StatBank:
    """Holds the monitored parameters of the active components and what the metric keeps of them."""

    def __init__(self, entries: list[Entry], n_components: int, normalization: str):
        self.entries = entries
        self.n_components = n_components
        self.normalization = normalization
        self.snr_q: list[float] = [0.0] * n_components   # grad_snr: running mean of || g ||^2 per component
        self.snr_count: list[int] = [0] * n_components   # grad_snr: finite checks averaged per component
        self._rebuild()

    def _rebuild(self) -> None:
        self.exact = [e for e in self.entries if e.index is None]
        self.sketched = [e for e in self.entries if e.index is not None]
        order = self.exact + self.sketched
        self.order = order
        for e in self.sketched:
            e.lindex = e.index if e.shard is None else local_index(e.index, e.shard)
        self.sharded = any(e.shard is not None for e in order)
        if not order:
            return
        device = order[0].param.device
        self.device = device
        self._comp = torch.tensor([e.comp for e in order], dtype=torch.long, device=device)
        self._scale = torch.tensor([e.scale for e in order], dtype=torch.float32, device=device)
        numel = torch.zeros(self.n_components, dtype=torch.float64)
        for e in order:
            numel[e.comp] += e.numel
        self._numel = numel.to(device=device, dtype=torch.float32)
        self._multi_device = any(e.param.device != device for e in order)

    # ------------------------------------------------------------------ bookkeeping
    def keep(self, components: set[int]) -> None:
        """Drop the entries (and their stored tensors) of components no longer active."""
        self.entries = [e for e in self.entries if e.comp in components]
        self._rebuild()

    def has_prev(self) -> bool:
        return bool(self.entries) and all(e.prev is not None for e in self.entries)

    def nbytes(self) -> int:
        return sum(e.nbytes() for e in self.entries)

    # ------------------------------------------------------------------ sources
    @staticmethod
    def grads(entries: list[Entry]) -> list[torch.Tensor]:
        return [e.param.grad if e.param.grad is not None else torch.zeros_like(e.param) for e in entries]

    @staticmethod
    def weights(entries: list[Entry]) -> list[torch.Tensor]:
        return [e.param.detach() for e in entries]

    def _current(self, source: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        get = self.grads if source == "grad" else self.weights
        exact = [local(t) for t in get(self.exact)]
        sampled = [local(t).reshape(-1).index_select(0, e.lindex) for t, e in zip(get(self.sketched), self.sketched)]
        return exact, sampled

    # ------------------------------------------------------------------ operations
    @torch.no_grad()
    def snapshot(self, source: str) -> None:
        """Store the current gradients / weights (exact copy or sketch) as the previous ones."""
        exact, sampled = self._current(source)
        for e, t in zip(self.exact + self.sketched, exact + sampled):
            if e.prev is None or e.prev.shape != t.shape:
                e.prev = t.detach().clone()
            else:
                e.prev.copy_(t)

    @torch.no_grad()
    def change(self, source: str) -> list[float]:
        """|| current - previous ||_1 per component (normalized), then current becomes previous."""
        exact, sampled = self._current(source)
        cur = exact + sampled
        prev = [e.prev for e in self.order]
        if any(p is None for p in prev):
            raise RuntimeError("StatBank.change before snapshot")
        torch._foreach_sub_(prev, cur)                                  # prev <- prev - cur (no new memory)
        norms = torch._foreach_norm(prev, 1, dtype=torch.float32)
        torch._foreach_copy_(prev, cur)
        return self._reduce(norms)

    @torch.no_grad()
    def magnitude(self, source: str) -> list[float]:
        """|| current ||_1 per component (normalized); nothing stored."""
        exact, sampled = self._current(source)
        return self._reduce(torch._foreach_norm(exact + sampled, 1, dtype=torch.float32))

    @torch.no_grad()
    def snr(self, beta: float) -> list[float]:
        """grad_snr per component (module docstring): the running mean of the gradient becomes
        beta * m + (1 - beta) * g. A component with a non-finite gradient entry is not updated and gets NaN."""
        exact, sampled = self._current("grad")
        cur = exact + sampled
        for e, t in zip(self.order, cur):
            if e.prev is None:
                e.prev = torch.zeros_like(t)
        sq = self._sum(torch._foreach_norm(cur, 2, dtype=torch.float32), power=2).tolist()
        bad = {i for i, v in enumerate(sq) if not math.isfinite(v)}
        keep = [j for j, e in enumerate(self.order) if e.comp not in bad]
        means = [self.order[j].prev for j in keep]
        if means:
            torch._foreach_lerp_(means, [cur[j] for j in keep], 1.0 - beta)   # m <- m + (1 - beta)(g - m)
        msq = self._sum(torch._foreach_norm([e.prev for e in self.order], 2, dtype=torch.float32), power=2).tolist()
        out = [float("nan")] * self.n_components
        for i in {e.comp for e in self.order}:
            if i in bad:
                continue
            self.snr_q[i] = beta * self.snr_q[i] + (1 - beta) * sq[i]
            self.snr_count[i] += 1
            n, q = self.snr_count[i], self.snr_q[i]
            # bias-corrected ||m||^2 / (q * floor) with floor = (1 - b)(1 + b^n) / ((1 + b)(1 - b^n))
            out[i] = msq[i] * (1 + beta) / (q * (1 - beta) * (1 + beta ** n)) if q > 0 else 0.0
        return out

    def _sum(self, norms, power: int = 1) -> torch.Tensor:
        """Per-entry norms (to `power`) summed per component, each sketch scaled up to its whole matrix."""
        if self._multi_device:
            norms = [n.to(self.device) for n in norms]
        per_param = torch.stack(list(norms)) ** power * self._scale
        sums = torch.zeros(self.n_components, dtype=torch.float32, device=self.device)
        sums.index_add_(0, self._comp, per_param)
        return all_reduce_sum(sums) if self.sharded else sums   # one collective: partial sums of every shard

    def _reduce(self, norms: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list[float]:
        if not norms:
            return [float("nan")] * self.n_components
        sums = self._sum(norms)
        if self.normalization == "mean":
            sums = sums / self._numel.clamp_min(1)
        return sums.tolist()                                            # the one host sync per check

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Stored tensors in their whole-matrix form (sharded: gathered, so every rank must call this)."""
        prev = {e.key: e.prev.detach().cpu().clone() for e in self.entries if e.prev is not None}
        if self.sharded:
            prev = gather_runs(prev)
        return {"prev": prev,
                "index": {e.key: e.index.cpu().clone() for e in self.entries if e.index is not None},
                "snr_q": list(self.snr_q), "snr_count": list(self.snr_count)}

    def load_state_dict(self, state: dict) -> None:
        prev, index = state.get("prev", {}), state.get("index", {})
        self.snr_q = list(state.get("snr_q", self.snr_q))
        self.snr_count = list(state.get("snr_count", self.snr_count))
        for e in self.entries:
            if e.key in index:
                e.index = index[e.key].to(device=e.param.device, dtype=torch.int32)
            elif e.index is not None and e.key in prev and prev[e.key].numel() == e.numel:
                e.index = None           # saved exact, configured sketched now: keep what was saved
            saved = prev.get(e.key)
            if saved is not None and e.shard is not None:
                saved = take_run(saved, e.shard, e.index.cpu() if e.index is not None else None)
            e.prev = saved.to(e.param.device).clone() if saved is not None else None
        self._rebuild()
