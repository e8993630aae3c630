"""The statistics figure draws what the GradES rule compared with tau (the smoothed statistic), the raw statistic
faint behind it, freeze markers on the compared curve, and legends beside the panels, not over the curves."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fixtures_run import make_run
from vlm_grades.report import fig_statistics
from vlm_grades.report.run_data import RunData


@pytest.fixture(scope="module")
def smoothed_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("stat") / "run"
    truth = make_run(path, total_steps=300, smoothing=0.9, interval=2, seed=1)
    return RunData.load(path), truth


def _lines(ax):
    return [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1 and ln.get_linestyle() == "-"]


def test_main_lines_are_the_smoothed_statistic_and_raw_is_faint(smoothed_run):
    run, _ = smoothed_run
    fig = fig_statistics.figure(run)
    ax = fig.axes[0]                       # vision
    comps = run.components_of("vision")
    smoothed = [np.array(run.series(c.name, "smoothed")[1]) for c in comps]
    raw = [np.array(run.series(c.name)[1]) for c in comps]
    assert all(len(s) > 5 for s in smoothed) and not np.allclose(smoothed[0], raw[0])
    drawn = [(np.asarray(ln.get_ydata(), float), ln.get_alpha() or 1.0, ln.get_linewidth()) for ln in _lines(ax)]
    for s, r in zip(smoothed, raw):
        main = [a for y, a, w in drawn if len(y) == len(s) and np.allclose(y, s)]
        faint = [a for y, a, w in drawn if len(y) == len(r) and np.allclose(y, r)]
        assert main and min(main) >= 0.8, "the compared (smoothed) value is the main line"
        assert faint and max(faint) <= 0.3, "the raw statistic is drawn faint"
    assert "smoothed" in ax.get_ylabel() and "0.9" in ax.get_ylabel()


def test_freeze_markers_sit_on_the_compared_value_below_tau(smoothed_run):
    run, truth = smoothed_run
    fig = fig_statistics.figure(run)
    ax = fig.axes[0]
    points = ax.collections[-1].get_offsets()
    for step, value in points:
        name = next(n for n, s in truth.freeze_steps.items() if s == step and n.startswith("vision"))
        steps, values = run.series(name, "smoothed")
        assert math.isclose(value, values[steps.index(int(step))]) and value < 4e-3


def test_legends_do_not_cover_the_curves(smoothed_run):
    run, _ = smoothed_run
    fig = fig_statistics.figure(run)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        for other in fig.axes:
            assert not legend.overlaps(other.get_window_extent(renderer)), ax.get_title()
        assert legend.x1 <= fig.bbox.x1 + 1    # and it is inside the picture


def test_without_smoothing_the_statistic_itself_is_the_main_line(tmp_path):
    make_run(tmp_path / "run", total_steps=60, seed=2)
    run = RunData.load(tmp_path / "run")
    assert run.smoothing is None
    fig = fig_statistics.figure(run)
    name = run.components_of("vision")[0].name
    values = np.array(run.series(name)[1])
    assert any(len(ln.get_ydata()) == len(values) and np.allclose(ln.get_ydata(), values) and
               (ln.get_alpha() or 1) >= 0.8 for ln in _lines(fig.axes[0]))
