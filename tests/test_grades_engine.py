"""GradES engine: statistics by hand, freezing, finalization, NaN safety, state round trip, config errors."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlm_grades.components import build_registry
from vlm_grades.errors import UserError
from vlm_grades.grades import GradES, GradESConfig
from vlm_grades.grades.statistics import Entry, StatBank, sketch_index, sketch_size

torch.set_num_threads(1)


# ------------------------------------------------------------------ a stand-in with nanoVLM's names
class Block(nn.Module):
    def __init__(self, d, vision):
        super().__init__()
        self.vision = vision
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.mlp = nn.Module(), nn.Module()
        if vision:
            self.attn.qkv_proj, self.attn.out_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        else:
            self.attn.q_proj, self.attn.k_proj = nn.Linear(d, d, bias=False), nn.Linear(d, d // 2, bias=False)
            self.attn.v_proj, self.attn.out_proj = nn.Linear(d, d // 2, bias=False), nn.Linear(d, d, bias=False)
            self.mlp.gate_proj, self.mlp.up_proj = nn.Linear(d, 2 * d, bias=False), nn.Linear(d, 2 * d, bias=False)
            self.mlp.down_proj = nn.Linear(2 * d, d, bias=False)

    def forward(self, x):
        h = self.ln1(x)
        if self.vision:
            q, k, v = self.attn.qkv_proj(h).chunk(3, -1)
        else:
            q, k, v = self.attn.q_proj(h), self.attn.k_proj(h).repeat(1, 1, 2), self.attn.v_proj(h).repeat(1, 1, 2)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), -1) @ v
        x = x + self.attn.out_proj(a)
        h = self.ln2(x)
        if self.vision:
            return x + self.mlp.fc2(F.gelu(self.mlp.fc1(h)))
        return x + self.mlp.down_proj(F.silu(self.mlp.gate_proj(h)) * self.mlp.up_proj(h))


class ToyVLM(nn.Module):
    """vision_encoder / MP / decoder with the nanoVLM parameter names; milliseconds per step."""

    def __init__(self, d=32, vocab=32, seed=0):
        torch.manual_seed(seed)
        super().__init__()
        self.vision_encoder = nn.Module()
        self.vision_encoder.patch_embedding = nn.Linear(12, d)
        self.vision_encoder.position_embedding = nn.Parameter(torch.randn(1, 8, d) * 0.02)
        self.vision_encoder.blocks = nn.ModuleList([Block(d, True) for _ in range(2)])
        self.vision_encoder.layer_norm = nn.LayerNorm(d)
        self.MP = nn.Module()
        self.MP.proj = nn.Linear(d, d, bias=False)
        self.decoder = nn.Module()
        self.decoder.token_embedding = nn.Embedding(vocab, d)
        self.decoder.blocks = nn.ModuleList([Block(d, False) for _ in range(2)])
        self.decoder.norm = nn.LayerNorm(d)

    def vision(self, images):
        v = self.vision_encoder
        x = v.patch_embedding(images) + v.position_embedding
        for b in v.blocks:
            x = b(x)
        return v.layer_norm(x)

    def forward(self, images, ids):
        x = torch.cat([self.MP.proj(self.vision(images)), self.decoder.token_embedding(ids)], 1)
        for b in self.decoder.blocks:
            x = b(x)
        logits = self.decoder.norm(x) @ self.decoder.token_embedding.weight.T
        return F.cross_entropy(logits[:, 8:-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


DATA = torch.Generator().manual_seed(1)
IMAGES, IDS = torch.randn(32, 8, 12, generator=DATA), torch.randint(0, 32, (32, 8), generator=DATA)


def batch(step):
    i = (step * 8) % 32
    return IMAGES[i:i + 8], IDS[i:i + 8]


def make(config, steps=40, lr=3e-3, wd=0.1, writer=None, seed=0, **kw):
    model = ToyVLM(seed=seed)
    reg = build_registry(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / (steps + 1))
    log = []
    grades = GradES(model, reg, GradESConfig.from_dict(config), optimizer=opt, total_steps=steps,
                    writer=writer or (lambda kind, rec: log.append((kind, copy.deepcopy(rec)))), **kw)
    return model, reg, opt, sched, grades, log


def train(model, opt, sched, grades, start, stop, before_observe=None, after_observe=None):
    for step in range(start, stop + 1):
        loss = model(*batch(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        if before_observe:
            before_observe(step)
        grades.observe(step)
        if after_observe:
            after_observe(step)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        grades.update(step)
        if grades.should_stop:
            return step
    return stop


def events(log, kind="freeze"):
    return [r for k, r in log if k == "events" and r["type"] == kind]


# ------------------------------------------------------------------ statistics by hand on a 2x3 matrix
def bank_for(w, sketch_k=None, normalization="sum"):
    p = nn.Parameter(w.clone())
    idx = None if sketch_k is None else sketch_index(6, sketch_k, 0, "m:weight", p.device)
    return p, StatBank([Entry("m:weight", 0, p, idx)], 1, normalization)


G1 = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
G2 = torch.tensor([[0.0, -1.0, 5.0], [0.5, 2.0, 1.0]])


@pytest.mark.parametrize("normalization,div", [("sum", 1.0), ("mean", 6.0)])
def test_statistics_equal_hand_computation(normalization, div):
    p, bank = bank_for(torch.zeros(2, 3), normalization=normalization)
    # grad_change: |0-1| + |-1+2| + |5-3| + |.5-.5| + |2-0| + |1+1| = 1 + 1 + 2 + 0 + 2 + 2 = 8
    p.grad = G1.clone()
    bank.snapshot("grad")
    p.grad = G2.clone()
    assert bank.change("grad") == [pytest.approx(8.0 / div)]
    # grad (paper v1): |0| + 1 + 5 + .5 + 2 + 1 = 9.5
    assert bank.magnitude("grad") == [pytest.approx(9.5 / div)]
    # weight_change: weights moved from 0 to W
    bank.snapshot("weight")
    with torch.no_grad():
        p.copy_(torch.tensor([[0.1, -0.2, 0.0], [0.0, 0.3, -0.4]]))
    assert bank.change("weight") == [pytest.approx(1.0 / div)]
    assert bank.change("weight") == [0.0]                     # the cache was refreshed at the check


def test_weight_and_bias_summed_then_averaged_and_sketch_scaled():
    w, b = nn.Parameter(torch.zeros(2, 3)), nn.Parameter(torch.zeros(2))
    bank = StatBank([Entry("m:weight", 0, w, None), Entry("m:bias", 0, b, None)], 1, "mean")
    w.grad, b.grad = G1.clone(), torch.tensor([1.0, -1.0])
    assert bank.magnitude("grad") == [pytest.approx((7.5 + 2.0) / 8)]
    # a sketch of 3 of the 6 entries: sum over the sampled entries, scaled by 6/3
    p, bank = bank_for(torch.zeros(2, 3), sketch_k=3)
    p.grad = G1.clone()
    bank.snapshot("grad")
    p.grad = G2.clone()
    idx = sketch_index(6, 3, 0, "m:weight", p.device).long()
    expected = (G2.flatten()[idx] - G1.flatten()[idx]).abs().sum().item() * 2
    assert bank.change("grad") == [pytest.approx(expected)]
    assert torch.equal(idx, sketch_index(6, 3, 0, "m:weight", p.device).long())     # fixed, seeded
    assert sketch_size(1000, "auto", 1 / 32, 512, 65536) is None        # too small to be worth it
    assert sketch_size(100_000, "auto", 1 / 32, 512, 65536) == 3125


def test_engine_values_match_hand_computed_grad_change():
    model, reg, opt, sched, grades, log = make({"alpha": 100, "tau": 1e-12, "normalization": "sum"}, steps=200)
    q = model.decoder.blocks[0].attn.q_proj.weight
    fc1 = model.vision_encoder.blocks[1].mlp.fc1
    seen = {}

    def grab(step):
        seen[step] = (q.grad.clone(), torch.cat([fc1.weight.grad.flatten(), fc1.bias.grad]))

    train(model, opt, sched, grades, 1, 3, before_observe=grab)
    conv = [r for k, r in log if k == "convergence"]
    assert [r["step"] for r in conv] == [2, 3]                # step 1 only stores the gradient
    for r in conv:
        s = r["step"]
        assert r["values"]["decoder.blocks.0.attn.q_proj"] == pytest.approx(
            (seen[s][0] - seen[s - 1][0]).abs().sum().item(), rel=1e-5)
    assert "vision_encoder.blocks.1.mlp.fc1" in conv[0]["values"]


def test_sketch_freeze_decisions_agree_with_exact():
    """Same gradient stream, two engines (exact and sketched); record when each would first freeze."""
    model = ToyVLM()
    reg = build_registry(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = {}

    def recorder(tag, names):
        def agree(flags, device):
            for n, f in zip(names, flags):
                if f:
                    first[tag].setdefault(n, recorder.step)
            return [False] * len(flags)
        first[tag] = {}
        return agree

    engines = {}
    for tag, sketch in (("exact", "off"), ("sketch", "on")):
        cfg = GradESConfig.from_dict({"alpha": 8, "rho": 0.5, "patience": 2, "smoothing": 0.5, "sketch": sketch,
                                      "sketch_fraction": 1 / 16, "sketch_min": 64})
        engines[tag] = GradES(model, reg, cfg, total_steps=60, agree=None)
        engines[tag].agree = recorder(tag, [c.name for c in engines[tag].components])
    for step in range(1, 61):
        recorder.step = step
        model(*batch(step)).backward()
        for g in engines.values():
            g.observe(step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for g in engines.values():
            g.update(step)
    assert engines["sketch"].memory_bytes() < engines["exact"].memory_bytes() / 4
    exact, sketch = first["exact"], first["sketch"]
    assert len(exact) >= 10                                  # the decisions being compared do happen
    same = sum(exact.get(n) == sketch.get(n) for n in set(exact) | set(sketch))
    close = sum(n in exact and n in sketch and abs(exact[n] - sketch[n]) <= 2 for n in set(exact) | set(sketch))
    assert close == len(set(exact) | set(sketch)), (exact, sketch)
    assert same >= 0.7 * len(set(exact) | set(sketch))


# ------------------------------------------------------------------ freezing
def test_frozen_component_stays_bit_identical_and_loses_optimizer_state():
    # vision tau huge: vision freezes at the first check after the grace period; language never
    model, reg, opt, sched, grades, log = make(
        {"alpha": 4, "tau": {"vision": 1e9, "projector": 1e-30, "language": 1e-30}, "patience": 1}, steps=30)
    train(model, opt, sched, grades, 1, 4)
    assert set(grades.frozen) == {c.name for c in reg.by_modality()["vision"]}
    assert all(s == 4 for s in grades.frozen.values())
    qkv = model.vision_encoder.blocks[0].attn.qkv_proj
    frozen_w, frozen_b = qkv.weight.detach().clone(), qkv.bias.detach().clone()
    other = model.decoder.blocks[0].mlp.up_proj.weight.detach().clone()
    for p in (qkv.weight, qkv.bias):
        assert not p.requires_grad and p.grad is None and p not in opt.state
    assert model.decoder.blocks[0].mlp.up_proj.weight in opt.state
    assert opt.param_groups[0]["lr"] > 0                         # schedule untouched
    train(model, opt, sched, grades, 5, 15)
    assert torch.equal(qkv.weight, frozen_w) and torch.equal(qkv.bias, frozen_b)   # weight decay too
    assert not torch.equal(model.decoder.blocks[0].mlp.up_proj.weight, other)
    fr = grades.frozen_fraction()
    assert fr["vision"] == 1.0 and fr["language"] == 0.0
    ev = events(log)
    assert len(ev) == 8 and ev[0]["modality"] == "vision" and ev[0]["tau"] == 1e9 and ev[0]["step"] == 4


def test_finalized_vision_tower_gets_no_backward():
    model, reg, opt, sched, grades, log = make(
        {"alpha": 3, "tau": {"vision": 1e9, "projector": 1e-30, "language": 1e-30}, "patience": 1}, steps=30)
    fired = []
    model.vision_encoder.blocks[0].register_full_backward_hook(lambda *a: fired.append(1))
    train(model, opt, sched, grades, 1, 3)
    assert fired                                                   # before: the tower's backward runs
    fin = events(log, "finalize")
    vision_rest = sum(p.numel() for n, p in reg.modality_parameters(model)["vision"]
                      if not any(n.startswith(c.name + ".") for c in reg.by_modality()["vision"]))
    assert fin == [{"type": "finalize", "step": 3, "modality": "vision", "parameters": vision_rest}]
    fired.clear()
    train(model, opt, sched, grades, 4, 6)
    assert not fired
    ve = model.vision_encoder
    for p in (ve.position_embedding, ve.layer_norm.weight, ve.blocks[0].ln1.weight, ve.patch_embedding.weight):
        assert not p.requires_grad and p.grad is None and p not in opt.state
    assert model.MP.proj.weight.requires_grad and model.decoder.norm.weight.requires_grad

    # paper parity: no finalization, the norms keep training and the backward still runs
    model, reg, opt, sched, grades, log = make(
        {"alpha": 3, "tau": {"vision": 1e9, "projector": 1e-30, "language": 1e-30}, "patience": 1,
         "finalize_modalities": False}, steps=30)
    train(model, opt, sched, grades, 1, 4)
    assert model.vision_encoder.layer_norm.weight.grad is None       # zeroed after the step
    model(*batch(5)).backward()
    assert model.vision_encoder.layer_norm.weight.grad is not None and not events(log, "finalize")


def test_nan_statistic_never_freezes_and_is_reported():
    model, reg, opt, sched, grades, log = make({"alpha": 3, "tau": 1e9, "patience": 1}, steps=20)
    q = model.decoder.blocks[1].attn.q_proj.weight

    def poison(step):
        q.grad[0, 0] = float("nan")

    def heal(step):                      # the optimizer must not spread the NaN through the model
        q.grad.nan_to_num_(0.0)

    stop = train(model, opt, sched, grades, 1, 20, before_observe=poison, after_observe=heal)
    assert "decoder.blocks.1.attn.q_proj" not in grades.frozen
    assert len(grades.frozen) == len(grades.components) - 1 and not grades.should_stop and stop == 20
    assert grades.nonfinite["decoder.blocks.1.attn.q_proj"] >= 15
    bad = events(log, "nonfinite")
    assert bad and all(r["component"] == "decoder.blocks.1.attn.q_proj" for r in bad)
    assert math.isnan(bad[0]["value"])


def test_stop_signal_and_stop_fraction():
    model, reg, opt, sched, grades, log = make({"alpha": 2, "tau": 1e9, "patience": 1}, steps=20,
                                               stop_events=True)
    assert train(model, opt, sched, grades, 1, 20) == 2
    assert grades.should_stop and grades.stop_reason == "all components frozen" and grades.stop_step == 2
    assert events(log, "stop") == [{"type": "stop", "step": 2, "reason": "all components frozen"}]
    model, reg, opt, sched, grades, log = make(
        {"alpha": 2, "tau": {"vision": 1e9, "projector": 1e9, "language": 1e-30}, "stop_fraction": 0.3,
         "patience": 1}, steps=20)
    assert train(model, opt, sched, grades, 1, 20) == 2 and "components frozen" in grades.stop_reason


# ------------------------------------------------------------------ state round trip
RESUME_CFG = {"alpha": 6, "rho": 0.6, "patience": 2, "smoothing": 0.3, "sketch": "on", "sketch_min": 64,
              "sketch_fraction": 1 / 8}


@pytest.mark.parametrize("metric, extra", [("grad_change", {}), ("weight_change", {}),
                                           ("grad_snr", {"snr_window": 5, "rho": 0.9})])
def test_resume_freezes_the_same_and_ends_identical(metric, extra):
    cfg = {**RESUME_CFG, "metric": metric, **extra}
    model, reg, opt, sched, grades, log = make(cfg, steps=40)
    end = train(model, opt, sched, grades, 1, 40)
    full_freeze = {r["component"]: r["step"] for r in events(log)}
    assert len(full_freeze) >= 5

    model2, reg2, opt2, sched2, grades2, log2 = make(cfg, steps=40)
    train(model2, opt2, sched2, grades2, 1, 13)
    buf = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict(),
                "grades": grades2.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model3, reg3, opt3, sched3, grades3, log3 = make(cfg, steps=40, seed=5)    # other init: all from the state
    model3.load_state_dict(saved["model"])
    grades3.load_state_dict(saved["grades"])
    opt3.load_state_dict(saved["opt"])
    sched3.load_state_dict(saved["sched"])
    end3 = train(model3, opt3, sched3, grades3, 14, 40)
    resumed_freeze = {r["component"]: r["step"] for r in events(log2) + events(log3)}
    assert resumed_freeze == full_freeze and end3 == end
    for (n, a), (_, b) in zip(model.state_dict().items(), model3.state_dict().items()):
        assert torch.equal(a, b), n


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize("config,steps,match", [
    ({"alpha": 0, "tau": 0.1}, 100, "zero grace period"),
    ({"alpha": 0.0}, 100, "needs a grace period"),
    ({"alpha": 0.3}, None, "total number of steps is unknown"),
    ({"tau": 0.0}, 100, "tau"),
    ({"tau": -1}, 100, "tau"),
    ({"tau": float("nan")}, 100, "tau"),
    ({"tau": {"vision": 0.1, "sound": 1}}, 100, "unknown modality"),
    ({"alpha": float("nan")}, 100, "alpha"),
    ({"alpha": 2.5}, 100, "whole step"),
    ({"rho": 1.5}, 100, "rho"),
    ({"metric": "loss"}, 100, "metric"),
    ({"interval": 0}, 100, "interval"),
    ({"patience": 0}, 100, "patience"),
    ({"smoothing": 1.0}, 100, "smoothing"),
    ({"preset": "official", "tau": "auto"}, 100, "absolute"),
    ({"preset": "fast"}, 100, "preset"),
    ({"bogus": 1}, 100, "unknown setting"),
])
def test_config_errors(config, steps, match):
    with pytest.raises(UserError, match=match):
        GradESConfig.from_dict(config).validate(steps)


def test_config_presets_and_round_trip():
    off = GradESConfig.from_dict({"preset": "official", "tau": {"vision": 0.3, "language": 6.0}, "alpha": 0.28,
                                  "interval": 20})
    assert (off.metric, off.normalization, off.smoothing, off.patience, off.finalize_modalities, off.sketch) == \
        ("weight_change", "sum", 0.0, 1, False, "off")
    assert off.tau == {"vision": 0.3, "projector": None, "language": 6.0}
    assert off.validate(1000) == 280
    assert GradESConfig.from_dict(off.to_dict()) == off
    d = GradESConfig()
    assert (d.metric, d.normalization, d.tau) == ("grad_change", "mean", "auto")
    assert GradESConfig.from_dict({"tau": 0.5}).tau == {"vision": 0.5, "projector": 0.5, "language": 0.5}
    assert GradESConfig.from_dict({"alpha": 50}).validate(None) == 50       # absolute grace: no total needed


def test_interval_grad_change_uses_the_step_before_and_grad_metric():
    model, reg, opt, sched, grades, log = make({"alpha": 100, "tau": 1e-12, "interval": 3, "sketch": "off"}, steps=200)
    up = model.decoder.blocks[1].mlp.up_proj.weight
    seen = {}
    train(model, opt, sched, grades, 1, 7, before_observe=lambda s: seen.__setitem__(s, up.grad.clone()))
    conv = [r for k, r in log if k == "convergence"]
    assert [r["step"] for r in conv] == [3, 6]
    for r in conv:                                   # mean per element of |g(t) - g(t-1)|, t = the check step
        s = r["step"]
        expected = (seen[s] - seen[s - 1]).abs().sum().item() / up.numel()
        assert r["values"]["decoder.blocks.1.mlp.up_proj"] == pytest.approx(expected, rel=1e-5)
    assert conv[0]["tau"]["decoder.blocks.1.mlp.up_proj"] == 1e-12 and conv[0]["frozen"] == []

    model, reg, opt, sched, grades, log = make({"alpha": 100, "tau": 1e-12, "metric": "grad",
                                                "normalization": "sum"}, steps=200)
    up = model.decoder.blocks[1].mlp.up_proj.weight
    train(model, opt, sched, grades, 1, 2, before_observe=lambda s: seen.__setitem__(s, up.grad.clone()))
    conv = [r for k, r in log if k == "convergence"]
    assert [r["step"] for r in conv] == [1, 2]
    assert conv[1]["values"]["decoder.blocks.1.mlp.up_proj"] == pytest.approx(seen[2].abs().sum().item(), rel=1e-5)
    assert grades.memory_bytes() == 0                # the gradient itself needs no storage


def test_auto_tau_is_rho_times_the_grace_level():
    model, reg, opt, sched, grades, log = make({"alpha": 5, "rho": 0.5, "auto_window": 2, "smoothing": 0}, steps=200)
    train(model, opt, sched, grades, 1, 5)
    conv = {r["step"]: r for k, r in log if k == "convergence"}
    name = "decoder.blocks.0.mlp.down_proj"
    assert conv[4]["tau"][name] is None                       # still calibrating
    level = (conv[3]["values"][name] + conv[4]["values"][name]) / 2
    assert conv[5]["tau"][name] == pytest.approx(0.5 * level)


def test_modality_frozen_by_the_user_is_not_watched():
    model = ToyVLM()
    reg = build_registry(model)
    for _, p in reg.modality_parameters(model)["vision"]:
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    grades = GradES(model, reg, GradESConfig.from_dict({"alpha": 2, "tau": 1e9, "patience": 1}), optimizer=opt,
                    total_steps=10)
    assert {c.modality for c in grades.components} == {"projector", "language"}
    assert grades.frozen_fraction()["vision"] == 1.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    assert train(model, opt, sched, grades, 1, 10) == 2 and grades.stop_reason == "all components frozen"


def test_public_freeze_matches_the_rule_and_finalizes():
    model, reg, opt, sched, grades, log = make({"alpha": 1}, steps=10)
    train(model, opt, sched, grades, 1, 2)
    vision = [c.name for c in reg.by_modality()["vision"]]
    grades.freeze(vision, step=2)
    assert set(grades.frozen) == set(vision) and set(grades.finalized) == {"vision"}
    assert all(not p.requires_grad and p not in opt.state for c in reg.by_modality()["vision"] for _, p in c.params)
    assert [e["component"] for e in events(log)] == vision
    assert not grades.should_stop
    with pytest.raises(UserError, match="'nope' is not a monitored component"):
        grades.freeze(["nope"])
    grades.freeze([c.name for c in reg.components], step=3)
    assert grades.should_stop and grades.stop_step == 3


def test_converged_needs_a_whole_window_of_checks_after_the_grace_period():
    """A flat statistic fills the plateau test's window only with checks after the grace period: with a grace
    period of 30 steps and a window of 20 checks, "converged" comes at step 49, not at 30 (a window reaching
    back into the grace period would have held at the first check after it)."""
    model, reg, opt, sched, grades, log = make({"alpha": 30, "tau": 1e-30, "converge_window": 20,
                                                "converge_tolerance": 0.1, "converge_patience": 1}, steps=200)
    flat = {c.name: 1e-3 * (1 + 0.01 * (i % 3)) for i, c in enumerate(grades.components)}
    for step in range(1, 49):
        grades.check(step, flat)
        assert grades.converged_step is None, step
    grades.check(49, flat)
    assert grades.converged_step == 49 and set(grades.converged) == {"vision", "projector", "language"}
    assert not grades.frozen                                     # the threshold nothing reaches froze nothing
