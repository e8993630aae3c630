"""`vlm-grades report --live`: refreshes until the end event, Ctrl-C ends it cleanly."""
from __future__ import annotations

import io
import json

from fixtures_run import make_run
from vlm_grades.cli import main
from vlm_grades.report.live import watch


def test_ended_run_prints_once(tmp_path, capsys):
    make_run(tmp_path / "run", total_steps=60)
    assert main(["report", "--live", str(tmp_path / "run"), "--interval", "0.01"]) == 0
    out = capsys.readouterr().out
    assert out.count("first / median / last freeze") == 1 and "run ended." in out
    assert not (tmp_path / "run" / "report").exists()


def test_refreshes_until_end_event(tmp_path):
    make_run(tmp_path / "run", total_steps=60, max_steps=30, running=True, torn_tail=True)
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:
            with open(tmp_path / "run" / "events.jsonl", "a") as f:
                f.write("\n" + json.dumps({"type": "end", "step": 30, "wall_time": 3.0, "stop_reason": "test"}) + "\n")

    stream = io.StringIO()
    assert watch(tmp_path / "run", interval=2.5, stream=stream, sleep=sleep) == 0
    text = stream.getvalue()
    assert sleeps == [2.5, 2.5] and text.count("refreshing every 2.5 s") == 2 and text.count("run ended.") == 1
    assert "step 30/60" in text


def test_waits_for_a_run_to_start_and_stops_on_ctrl_c(tmp_path):
    def interrupt(_):
        raise KeyboardInterrupt

    stream = io.StringIO()
    assert watch(tmp_path, interval=1, stream=stream, sleep=interrupt) == 0
    assert "waiting for the run to start" in stream.getvalue() and "stopped." in stream.getvalue()


def test_bad_interval_and_missing_folder(tmp_path, capsys):
    assert main(["report", "--live", str(tmp_path), "--interval", "0"]) == 2
    assert "--interval" in capsys.readouterr().err
    assert main(["report", "--live", str(tmp_path / "nope")]) == 2
