"""Pure-noise and noisy-quadratic calibration of the candidates under the project's AdamW (betas 0.9, 0.95).

    python sim.py
"""
import numpy as np

import stats

K, T = 1024, 2000


def adam_run(grad_fn, w0, lr, T=T, b1=0.9, b2=0.95, eps=1e-8, wd=0.0, seed=0):
    rng = np.random.default_rng(seed)
    w = w0.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    G = np.zeros((T, 1, len(w)), np.float32)
    W = np.zeros((T + 1, 1, len(w)), np.float32)
    W[0, 0] = w
    for t in range(1, T + 1):
        g = grad_fn(w, rng)
        G[t - 1, 0] = g
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
        w = w - lr * wd * w - lr * mh / (np.sqrt(vh) + eps)
        W[t, 0] = w
    return {"G": G, "W": W, "numel": np.array([float(len(w))]), "k": np.array([float(len(w))])}


def cands(d):
    U = stats.updates(d)
    out = {}
    for n in (100, 300, 1000):
        out[f"grad_snr{n}"] = stats.grad_snr(d, n)[:, 0]
    for L in (50, 100, 200, 400):
        out[f"R{L}"] = stats.disp_ratio(d, L, U)[:, 0]
    for n in (100, 300, 1000):
        out[f"upd_snr{n}"] = stats.update_snr(d, n, U)[:, 0]
    for n in (100, 300):
        out[f"pcos{n}"] = stats.progress_cos(d, n, U)[:, 0]
    return out


def show(title, d):
    c = cands(d)
    rows = [499, 999, 1499, 1998]
    print(f"\n{title}  (values after steps {[r + 1 for r in rows]})")
    for k, v in c.items():
        print(f"  {k:12s}" + "".join(f"{v[r]:10.3g}" for r in rows))


rng0 = np.random.default_rng(1)
h = np.exp(rng0.uniform(np.log(0.1), np.log(10), K))      # curvatures
sigma = 1.0

# 1. pure noise, no curvature: a random walk driven by Adam
show("pure noise (no curvature), lr 1e-3", adam_run(lambda w, r: sigma * r.standard_normal(K), np.zeros(K), 1e-3))
# 2. noisy quadratic at the optimum (mean-reverting jitter), lr 1e-3 and 1e-4
for lr in (1e-3, 1e-4):
    show(f"quadratic at the optimum, lr {lr:g}",
         adam_run(lambda w, r: h * w + sigma * r.standard_normal(K), np.zeros(K), lr))
# 3. drift through noise: a constant gradient signal of s noise standard deviations per entry (a linear loss
#    far from any optimum), for s = 0.1 and 0.3 and two learning rates
for s_ in (0.1, 0.3):
    for lr in (1e-3, 1e-4):
        sgn = np.sign(rng0.standard_normal(K))
        show(f"drift: signal {s_} sigma per entry, lr {lr:g}",
             adam_run(lambda w, r: sgn * s_ * sigma + sigma * r.standard_normal(K), np.zeros(K), lr))
# 4. the same trajectory, weights x10 and gradients /10 (a 10x-scaled copy of the matrix): identical values
d = adam_run(lambda w, r: h * w + sigma * r.standard_normal(K), np.full(K, 5.0), 1e-3)
d10 = {**d, "G": d["G"] / 10, "W": d["W"] * 10}
a, b = cands(d), cands(d10)
print("\n10x-scaled copy: max relative difference per candidate:",
      {k: float(np.nanmax(np.abs(a[k] - b[k]) / np.abs(a[k]))) for k in a})
