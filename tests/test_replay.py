"""`vlm-grades replay`: the GradES rule replayed on a real run's convergence log (config.yaml keeps every
GradES setting, given or default). With the run's own settings it reproduces the run's freeze steps exactly;
a stricter rule never freezes a matrix earlier; an absolute threshold above every statistic freezes
everything once the patience is used up; bad input is one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlm_grades.cli import main
from vlm_grades.report.replay import replay
from vlm_grades.report.run_data import RunData


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("replay") / "run"
    # a short run with a loose unsmoothed rule, so that matrices freeze within 40 steps (the grace period is
    # given: the default, 300 steps, is longer than the run)
    assert main(["train", "--no-progress", "--steps", "40", "--max-samples", "256", "--batch-size", "8",
                 "--eval-split=", "--checkpoint-every", "100", "--smoothing", "0", "--auto-window", "5",
                 "--rho", "0.6", "--alpha", "12", "--converge-window", "8", "--out", str(out)]) == 0
    assert RunData.load(out).freeze_steps, "precondition: the run froze some matrices"
    saved = yaml.safe_load((out / "config.yaml").read_text())["grades"]
    assert saved["rho"] == 0.6 and saved["patience"] == 2 and saved["metric"] == "grad_change", saved
    return out


def test_replay_with_the_runs_settings_reproduces_its_freeze_steps(run):
    data = RunData.load(run)
    result = replay(run)
    assert result["frozen"] == data.freeze_steps
    assert result["unfollowed"] == {}
    stop = data.last_event("stop")
    if result["stop_step"] is not None:
        assert stop["step"] == result["stop_step"]


def test_a_stricter_rule_never_freezes_earlier(run):
    data = RunData.load(run)
    result = replay(run, {"rho": 0.3, "patience": 3})
    for name, step in result["frozen"].items():
        assert name in data.freeze_steps and step >= data.freeze_steps[name], name
    # what the run froze is either frozen later by the stricter rule or cannot be followed past its freeze
    assert set(data.freeze_steps) == set(result["frozen"]) | set(result["unfollowed"])
    assert len(result["frozen"]) < len(data.freeze_steps)


def test_a_threshold_above_every_statistic_freezes_all_when_patience_is_used_up(run):
    result = replay(run, {"tau": 1e9, "alpha": 5, "patience": 2})
    monitored = [n for names in result["monitored"].values() for n in names]
    assert len(monitored) == 30
    assert result["frozen"] == {n: 6 for n in monitored}            # checks at steps 5 and 6 below tau
    assert result["stop_step"] == 6 and result["stop_reason"] == "all components frozen"
    assert result["finalized"] == {"vision": 6, "projector": 6, "language": 6}


def test_the_rule_does_not_depend_on_the_cap(run):
    """--steps is a cap: replayed as runs capped at 22 and at 40 steps, the rule takes the same decisions up to
    step 22 (freezes and "converged"). A grace period given as a fraction of --steps does not."""
    short, long = replay(run, steps=22), replay(run, steps=40)
    assert short["grace"] == long["grace"] == 12

    def until(decisions, step=22):
        return {k: s for k, s in decisions.items() if s <= step}

    assert long["frozen"] and until(long["frozen"]) and until(long["frozen"]) == short["frozen"]
    assert until(long["converged"]) == short["converged"]
    fraction = [replay(run, {"alpha": 0.3}, steps=cap) for cap in (22, 40)]
    assert fraction[0]["grace"] != fraction[1]["grace"]
    assert until(fraction[1]["frozen"]) != fraction[0]["frozen"]


def test_cli_prints_the_modalities_beside_the_run(run, capsys):
    assert main(["replay", str(run), "--rho", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "rho=0.3" in out
    for m in ("vision", "projector", "language"):
        assert m in out
    assert main(["replay", str(run), "--tau", "1e9", "--alpha", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stop_step"] == 6


@pytest.mark.parametrize("order", ["tau-first", "modality-first"])
def test_a_modality_flag_overrides_tau_for_its_modality_only(run, capsys, order):
    flags = [["--tau", "1e9"], ["--tau-vision", "1e-30"]]
    flags = flags if order == "tau-first" else flags[::-1]
    assert main(["replay", str(run), *flags[0], *flags[1], "--alpha", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["tau"] == {"vision": 1e-30, "projector": 1e9, "language": 1e9}
    frozen = {m: [n for n in names if n in result["frozen"]] for m, names in result["monitored"].items()}
    assert frozen["vision"] == [] and frozen["projector"] == result["monitored"]["projector"]
    assert frozen["language"] == result["monitored"]["language"]


def test_bad_flags_are_one_line(run, capsys):
    with pytest.raises(SystemExit) as exit_:             # the statistic itself cannot be changed
        main(["replay", str(run), "--metric", "weight_change"])
    assert exit_.value.code == 2
    assert main(["replay", str(run), "--rho", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert "unrecognized arguments: --metric" in err[0] and "error: --rho: must be in (0, 1)" in err[1], err


def test_a_run_without_grades_statistics_is_a_clear_error(run, tmp_path, capsys):
    other = tmp_path / "none-run"
    other.mkdir()
    for name in ("components.json", "events.jsonl", "metrics.jsonl"):
        (other / name).write_bytes((run / name).read_bytes())
    config = yaml.safe_load((run / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump({**config, "stopping": "none"}))
    assert main(["replay", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{other}: no GradES statistics to replay" in err[0], err
