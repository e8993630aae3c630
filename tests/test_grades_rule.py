"""The GradES rule's decisions on hand-written statistics (GradES.check, the path a replay takes): smoothing,
patience and its resets, automatic thresholds, finalization, the stop; and the states a resume refuses."""
from __future__ import annotations

import math

import pytest

from conftest import tiny_nanovlm
from vlm_grades.components import build_registry
from vlm_grades.errors import UserError
from vlm_grades.grades import GradES

PROJ = "MP.proj"   # the projector's one matrix


def engine(model=None, steps: int = 100, **rule):
    """GradES on a tiny nanoVLM watching the projector only (one matrix) unless `tau` says otherwise; the
    statistic unsmoothed, a grace period of 1 step and patience 2 unless `rule` says otherwise."""
    model = model or tiny_nanovlm()
    settings = {"tau": {"vision": None, "projector": 1.0, "language": None}, "alpha": 1, "patience": 2,
                "smoothing": 0.0, "sketch": "off", **rule}
    log: list[tuple[str, dict]] = []
    grades = GradES(model, build_registry(model), settings, total_steps=steps, stop_events=True,
                    writer=lambda kind, record: log.append((kind, record)))
    return grades, log


def feed(grades, values, first: int = 1, name: str = PROJ) -> list[float | None]:
    """One check per value at steps first, first+1, ...; returns the smoothed value after each."""
    smoothed = []
    for step, v in enumerate(values, start=first):
        grades.check(step, {name: v})
        smoothed.append(grades.smoothed.get(name))
    return smoothed


def test_smoothing_is_the_exponential_average_of_the_values():
    grades, log = engine(smoothing=0.75)
    smoothed = feed(grades, [1.6, 0.4, 1.6, 0.2, 0.2, 0.2])
    # s1 = v1; s = 0.75 s + 0.25 v: 1.3, 1.375, 1.08125, 0.8609375 (below 1), 0.695703125 (below twice)
    assert smoothed[:5] == pytest.approx([1.6, 1.3, 1.375, 1.08125, 0.8609375])
    assert grades.frozen == {PROJ: 6}
    checks = [r for kind, r in log if kind == "convergence"]
    assert [c["smoothed"][PROJ] for c in checks] == pytest.approx(smoothed)
    assert [c["values"][PROJ] for c in checks] == [1.6, 0.4, 1.6, 0.2, 0.2, 0.2]


def test_patience_counts_consecutive_checks_strictly_below_tau():
    grades, _ = engine()
    feed(grades, [0.5, 1.0, 0.5, 2.0, 0.5])      # below, at tau (resets), below, above (resets), below
    assert grades.frozen == {} and grades.below[PROJ] == 1
    feed(grades, [0.5], first=6)
    assert grades.frozen == {PROJ: 6}


def test_a_nonfinite_value_resets_patience_and_leaves_the_average():
    grades, log = engine(patience=3, smoothing=0.5)
    smoothed = feed(grades, [0.1, 0.1, math.nan, 0.1, 0.1, math.inf, 0.1, 0.1])
    assert smoothed[2] == smoothed[1] and smoothed[5] == smoothed[4] == pytest.approx(0.1)
    assert grades.frozen == {} and grades.nonfinite == {PROJ: 2}
    feed(grades, [0.1], first=9)
    assert grades.frozen == {PROJ: 9}            # three in a row only at steps 7, 8, 9
    assert [r["step"] for kind, r in log if kind == "events" and r["type"] == "nonfinite"] == [3, 6]


def test_auto_tau_is_rho_times_the_mean_of_the_last_grace_checks():
    grades, _ = engine(tau={"vision": None, "projector": "auto", "language": None}, alpha=4, rho=0.5,
                       auto_window=2)
    feed(grades, [10.0, 2.0, 6.0])               # grace period: steps 1-3; the window keeps 2.0 and 6.0
    assert grades.frozen == {} and PROJ not in grades.auto_tau
    feed(grades, [2.5, 1.5], first=4)            # tau = 0.5 x 4.0 = 2.0: 2.5 is above, 1.5 below
    assert grades.auto_tau == {PROJ: 2.0} and grades.frozen == {}
    feed(grades, [1.5], first=6)
    assert grades.frozen == {PROJ: 6}


def test_auto_tau_without_a_check_in_the_grace_period_calibrates_on_the_first_check_after_it():
    grades, log = engine(tau={"vision": None, "projector": "auto", "language": None}, alpha=3, rho=0.5,
                         smoothing=0.5)
    feed(grades, [2.0], first=3)                 # no check before step 3: this one only calibrates
    assert grades.auto_tau == {PROJ: 1.0} and grades.below.get(PROJ, 0) == 0
    assert [r["tau"][PROJ] for kind, r in log if kind == "convergence"] == [None]
    feed(grades, [0.0, 0.0], first=4)            # smoothed 1.0 (not below 1.0), then 0.5
    assert grades.frozen == {}
    feed(grades, [0.0], first=6)
    assert grades.frozen == {PROJ: 6}


def test_a_modality_whose_matrices_all_froze_is_finalized_and_all_frozen_is_the_stop():
    model = tiny_nanovlm()
    grades, log = engine(model, tau={"vision": None, "projector": 1.0, "language": 1.0}, patience=1)
    language = [c.name for c in grades.components if c.modality == "language"]
    grades.check(1, {**{n: 0.5 for n in language}, PROJ: 5.0})
    assert grades.finalized == {"language": 1} and not grades.should_stop
    assert not any(p.requires_grad for p in model.decoder.parameters())       # embeddings and norms too
    assert all(p.requires_grad for p in model.MP.parameters())
    assert all(p.requires_grad for p in model.vision_encoder.parameters())    # not monitored: trains on
    events = [r for kind, r in log if kind == "events"]
    matrices = sum(c.numel for c in grades.components if c.modality == "language")
    assert [e for e in events if e["type"] == "finalize"] == [
        {"type": "finalize", "step": 1, "modality": "language",
         "parameters": sum(p.numel() for p in model.decoder.parameters()) - matrices}]
    grades.check(2, {PROJ: 0.5})
    assert grades.finalized == {"language": 1, "projector": 2}
    assert (grades.stop_step, grades.stop_reason) == (2, "all components frozen")
    assert [r for kind, r in log if kind == "events"][-1] == {"type": "stop", "step": 2,
                                                              "reason": "all components frozen"}


def test_no_finalization_and_a_stop_fraction():
    model = tiny_nanovlm()
    grades, _ = engine(model, tau={"vision": None, "projector": 1.0, "language": 1.0}, patience=1,
                       finalize_modalities=False, stop_fraction=0.95)
    language = [c.name for c in grades.components if c.modality == "language"]
    grades.check(1, {n: 0.5 for n in language[:-1]})
    assert not grades.should_stop                # 20 of 22 matrices: below the fraction
    grades.check(2, {language[-1]: 0.5})
    assert grades.finalized == {} and model.decoder.token_embedding.weight.requires_grad
    assert (grades.stop_step, grades.stop_reason) == (2, "21/22 components frozen (stop fraction 0.95)")


# ------------------------------------------------------------------ a resume refuses a state it cannot continue
@pytest.mark.parametrize("change,match", [
    ({"metric": "grad"}, "saved with metric='grad_change', configured 'grad'"),
    ({"normalization": "sum"}, "saved with normalization='mean', configured 'sum'"),
    ({"interval": 2}, "saved with interval=1, configured 2"),
    ({"tau": {"vision": None, "projector": 1.0, "language": 1.0}}, "monitored components differ"),
])
def test_load_state_dict_refuses_another_statistic_or_other_components(change, match):
    grades, _ = engine()
    feed(grades, [3.0, 2.0])
    other, _ = engine(**change)
    with pytest.raises(UserError, match=match):
        other.load_state_dict(grades.state_dict())


def test_load_state_dict_refuses_another_version_and_another_snr_window_and_takes_its_own():
    grades, _ = engine(metric="grad_snr", snr_window=10)
    feed(grades, [3.0, 0.5])
    state = grades.state_dict()
    with pytest.raises(UserError, match="version 0 is not 1"):
        engine(metric="grad_snr", snr_window=10)[0].load_state_dict({**state, "version": 0})
    with pytest.raises(UserError, match="saved with snr_window=10, configured 20"):
        engine(metric="grad_snr", snr_window=20)[0].load_state_dict(state)
    same, _ = engine(metric="grad_snr", snr_window=10)
    same.load_state_dict(state)
    feed(same, [0.5], first=3)
    assert same.frozen == {PROJ: 3}              # the patience count came back with the state
