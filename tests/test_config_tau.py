"""GradES thresholds from defaults, a --config file and flags: defaults < YAML < flags, each layer setting only
the modalities it names (a number or 'auto': all the preset monitors), whatever the order of the flags."""
from __future__ import annotations

import pytest

from vlm_grades.cli import build_parser
from vlm_grades.commands.train import config_from_args
from vlm_grades.grades import GradESConfig

A = "auto"


def thresholds(tmp_path, yaml_text: str | None, *flags: str) -> dict:
    argv = ["train", *flags]
    if yaml_text is not None:
        (tmp_path / "settings.yaml").write_text(yaml_text)
        argv += ["--config", str(tmp_path / "settings.yaml")]
    cfg = config_from_args(build_parser().parse_args(argv))
    tau = GradESConfig.from_dict(cfg.grades).tau      # what the run uses and writes into config.yaml
    return (tau["vision"], tau["projector"], tau["language"])


CASES = [   # (YAML, flags, (vision, projector, language))
    (None, [], (A, A, A)),
    (None, ["--tau", "0.5"], (0.5, 0.5, 0.5)),
    (None, ["--tau-vision", "1"], (1.0, A, A)),
    (None, ["--tau", "0.5", "--tau-vision", "1"], (1.0, 0.5, 0.5)),
    (None, ["--tau-vision", "1", "--tau", "0.5"], (1.0, 0.5, 0.5)),
    (None, ["--tau-vision", "1", "--tau-language", "2"], (1.0, A, 2.0)),
    (None, ["--tau", "auto", "--tau-projector", "3"], (A, 3.0, A)),
    ("grades: {tau: 0.2}\n", [], (0.2, 0.2, 0.2)),
    ("grades: {tau: 0.2}\n", ["--tau-vision", "1"], (1.0, 0.2, 0.2)),
    ("grades:\n  tau: {vision: 0.2, language: 0.3}\n", [], (0.2, A, 0.3)),
    ("grades:\n  tau: {vision: 0.2, language: 0.3}\n", ["--tau-projector", "2"], (0.2, 2.0, 0.3)),
    ("grades:\n  tau: {vision: 0.2, projector: null, language: 0.3}\n", ["--tau-language", "1"], (0.2, None, 1.0)),
    ("grades:\n  tau: {vision: 0.2, language: 0.3}\n", ["--tau", "0.5"], (0.5, 0.5, 0.5)),
    ("grades:\n  tau: {vision: 0.2, language: 0.3}\n", ["--tau-projector", "2", "--tau", "0.5"], (0.5, 2.0, 0.5)),
    ("grades: {tau: auto, alpha: 0.1}\n", ["--tau-projector", "2"], (A, 2.0, A)),
    # the official preset monitors vision and language only; its own thresholds are the defaults
    (None, ["--grades-preset", "official"], (1e-5, None, 1e-4)),
    (None, ["--grades-preset", "official", "--tau-vision", "1"], (1.0, None, 1e-4)),
    (None, ["--grades-preset", "official", "--tau", "0.5"], (0.5, None, 0.5)),
    (None, ["--tau-vision", "1", "--grades-preset", "official", "--tau", "0.5"], (1.0, None, 0.5)),
    ("grades:\n  preset: official\n  tau: {language: 3}\n", ["--tau-vision", "1"], (1.0, None, 3.0)),
]


@pytest.mark.parametrize("yaml_text,flags,expected", CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_each_layer_sets_only_the_modalities_it_names(tmp_path, yaml_text, flags, expected):
    assert thresholds(tmp_path, yaml_text, *flags) == expected


def test_a_resumed_run_keeps_its_thresholds_and_refuses_others(tmp_path):
    """A resumed run trains with the thresholds it ran with (issue 26): flags that repeat them are accepted, a
    changed one is refused naming its flag."""
    from vlm_grades.errors import UserError

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("grades:\n  tau: {vision: 0.2, projector: 0.3, language: 0.4}\n")
    (out / "components.json").write_text("{}")
    (out / "events.jsonl").write_text('{"type": "start", "step": 0}\n')
    assert thresholds(tmp_path, None, "--resume", "--out", str(out)) == (0.2, 0.3, 0.4)
    assert thresholds(tmp_path, None, "--resume", "--out", str(out), "--tau-language", "0.4") == (0.2, 0.3, 0.4)
    with pytest.raises(UserError, match=r"^--resume: --tau-language 5.0 differs from the run's 0.4"):
        thresholds(tmp_path, None, "--resume", "--out", str(out), "--tau-language", "5")


def test_a_bad_modality_in_the_yaml_is_named_even_under_a_flag(tmp_path):
    from vlm_grades.errors import UserError

    with pytest.raises(UserError, match=r"^--config \S+settings.yaml: grades.tau.sound: unknown modality"):
        thresholds(tmp_path, "grades:\n  tau: {sound: 0.2}\n", "--tau-vision", "1")


@pytest.mark.parametrize("yaml_text,flags,message", [
    (None, ["--tau", "0.5", "--tau-vision", "-1"], "^--tau-vision: must be a finite number > 0"),
    (None, ["--tau-vision", "1", "--tau", "-2"], "^--tau: must be a finite number > 0"),
    ("grades:\n  tau: {vision: 0.2, language: 0}\n", ["--tau-vision", "1"],
     r"^--config \S+settings.yaml: grades.tau.language: must be a finite number > 0"),
])
def test_a_bad_threshold_is_named_as_given(tmp_path, yaml_text, flags, message):
    from vlm_grades.errors import UserError

    with pytest.raises(UserError, match=message):
        thresholds(tmp_path, yaml_text, *flags)


def test_a_flag_overrides_a_bad_threshold_of_the_config_file(tmp_path):
    assert thresholds(tmp_path, "grades:\n  tau: {vision: -1}\n", "--tau-vision", "1e-3") == (1e-3, A, A)
