"""Candidate statistics computed offline from record.py's recordings (numpy only).

Every function returns S[T, C]: the value after step t (row t-1), NaN where undefined.
Conventions: G[t-1] = g(t) (gradient of step t, after clipping), W[t] = W(t) (weights after step t), W[0] initial.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load(run: str | Path) -> dict:
    run = Path(run)
    r = run / "rec"
    names = json.loads((r / "names.json").read_text())
    d = {"names": [n["name"] for n in names], "mod": np.array([n["modality"] for n in names]),
         "numel": np.array([n["numel"] for n in names], float), "k": np.array([n["k"] for n in names], float),
         "G": np.load(r / "G.npy", mmap_mode="r"), "W": np.load(r / "W.npy", mmap_mode="r"),
         "loss": np.load(r / "loss.npy"), "lr": np.load(r / "lr.npy")}
    for f in ("full_g2", "full_dw2", "full_gchg1", "full_w2", "full_disp"):
        d[f] = np.load(r / f"{f}.npy")
    T = d["G"].shape[0]
    # the engine's own grad_change (sketch, mean per element) and its 0.99-smoothed value, from the run's log
    gc = np.full((T, len(names)), np.nan)
    gs = np.full((T, len(names)), np.nan)
    idx = {n: j for j, n in enumerate(d["names"])}
    for line in (run / "run" / "convergence.jsonl").read_text().splitlines():
        rec = json.loads(line)
        t = rec["step"] - 1
        for n, v in rec["values"].items():
            if n in idx and v is not None:
                gc[t, idx[n]] = v
        for n, v in (rec.get("smoothed") or {}).items():
            if n in idx and v is not None:
                gs[t, idx[n]] = v
    d["grad_change"], d["grad_change_s"] = gc, gs
    d["T"] = T
    return d


def ema(x: np.ndarray, beta: float) -> np.ndarray:
    """Bias-corrected exponential average over axis 0, NaN-skipping (a NaN row leaves the average as it is)."""
    out = np.full(x.shape, np.nan)
    m = np.zeros(x.shape[1:])
    w = np.zeros(x.shape[1:])
    for t in range(x.shape[0]):
        ok = np.isfinite(x[t])
        m = np.where(ok, beta * m + (1 - beta) * np.where(ok, x[t], 0), m)
        w = np.where(ok, beta * w + (1 - beta), w)
        out[t] = np.where(w > 0, m / np.where(w > 0, w, 1), np.nan)
    return out


def floor(beta: float, n) -> np.ndarray:
    n = np.asarray(n, float)
    return (1 - beta) * (1 + beta ** n) / ((1 + beta) * (1 - beta ** n))


def snr_of(X, window: int) -> np.ndarray:
    """StatBank.snr's formula applied to a sequence of sketched vectors X[T, C, K]:
    || EMA(x) ||^2 / (EMA(||x||^2) * floor(n)) with EMA of beta = 1 - 1/window (bias-corrected)."""
    b = 1 - 1 / window
    T, C, K = X.shape
    m = np.zeros((C, K))
    q = np.zeros(C)
    out = np.full((T, C), np.nan)
    for t in range(T):
        x = np.asarray(X[t], float)
        m = b * m + (1 - b) * x
        q = b * q + (1 - b) * (x * x).sum(1)
        n = t + 1
        msq = (m * m).sum(1)
        out[t] = msq * (1 + b) / (q * (1 - b) * (1 + b ** n))
    return out


def grad_snr(d, window: int) -> np.ndarray:
    return snr_of(d["G"], window)


def updates(d) -> np.ndarray:
    W = d["W"]
    return np.asarray(W[1:], np.float32) - np.asarray(W[:-1], np.float32)     # [T, C, K]: dW(t) at row t-1


def update_snr(d, window: int, U=None) -> np.ndarray:
    """EMA displacement ratio: grad_snr's formula on the updates dW(t) (iid-noise value 1; O(k) state:
    the previous weights' sketch and the running mean of dW)."""
    return snr_of(updates(d) if U is None else U, window)


def disp_ratio(d, L: int, U=None) -> np.ndarray:
    """R_L(t) = ||W(t) - W(t-L)||^2 / sum_{s=t-L+1..t} ||dW(s)||^2 (1 for a random walk of independent steps)."""
    W = d["W"]
    U = updates(d) if U is None else U
    T = U.shape[0]
    step2 = (U.astype(float) ** 2).sum(2)                     # [T, C]
    cs = np.concatenate([np.zeros((1, step2.shape[1])), np.cumsum(step2, 0)])
    out = np.full((T, step2.shape[1]), np.nan)
    for t in range(L, T + 1):
        disp = ((np.asarray(W[t], float) - np.asarray(W[t - L], float)) ** 2).sum(1)
        out[t - 1] = disp / (cs[t] - cs[t - L])
    return out


def progress(d, U=None) -> np.ndarray:
    """p(t) = -g(t+1) . dW(t): the first-order loss change of step t measured on the next, independent batch
    (sketch sum scaled to the whole matrix). Row t-1; the last row is NaN."""
    U = updates(d) if U is None else U
    G = d["G"]
    T = U.shape[0]
    out = np.full((T, U.shape[1]), np.nan)
    for t in range(T - 1):
        out[t] = -(np.asarray(G[t + 1], float) * U[t]).sum(1) * d["numel"] / d["k"]
    return out


def progress_cos(d, window: int, U=None) -> np.ndarray:
    """EMA(-g(t+1).dW(t)) / sqrt(EMA(||g(t+1)||^2) EMA(||dW(t)||^2)): scale- and lr-free, pure noise 0."""
    U = updates(d) if U is None else U
    G = d["G"]
    T = U.shape[0]
    b = 1 - 1 / window
    num = np.full((T, U.shape[1]), np.nan)
    gg = np.full_like(num, np.nan)
    uu = np.full_like(num, np.nan)
    for t in range(T - 1):
        g = np.asarray(G[t + 1], float)
        num[t] = -(g * U[t]).sum(1)
        gg[t] = (g * g).sum(1)
        uu[t] = (U[t].astype(float) ** 2).sum(1)
    return ema(num, b) / np.sqrt(ema(gg, b) * ema(uu, b))


# ------------------------------------------------------------------ decision rule (the engine's, offline)
def smooth(S: np.ndarray, beta: float) -> np.ndarray:
    """The engine's smoothing: s = beta * s + (1 - beta) * v, starting at the first value; NaN skipped."""
    if beta == 0:
        return S
    out = np.full(S.shape, np.nan)
    s = np.full(S.shape[1], np.nan)
    for t in range(S.shape[0]):
        v = S[t]
        ok = np.isfinite(v)
        s = np.where(ok, np.where(np.isfinite(s), beta * s + (1 - beta) * v, v), s)
        out[t] = s
    return out


def freeze_steps(S: np.ndarray, grace: int, thr: float, relative: bool, patience: int = 2,
                 auto_window: int = 100) -> np.ndarray:
    """Step (1-based) at which each matrix would freeze under the engine's rule on the (already smoothed)
    statistic S; relative: tau = thr * mean of S over the last auto_window steps of the grace period.
    Offline: ignores that freezing one matrix changes what the others see. inf: never."""
    T, C = S.shape
    out = np.full(C, np.inf)
    for j in range(C):
        if relative:
            lev = S[max(0, grace - 1 - auto_window):grace - 1, j]
            lev = lev[np.isfinite(lev)]
            if not len(lev):
                continue
            tau = thr * lev.mean()
        else:
            tau = thr
        below = 0
        for t in range(grace - 1, T):
            v = S[t, j]
            below = below + 1 if (np.isfinite(v) and v < tau) else 0
            if below >= patience:
                out[j] = t + 1
                break
    return out
