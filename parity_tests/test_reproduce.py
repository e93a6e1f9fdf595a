"""``nnparity reproduce``: every documented run through the one run path, one progress
display, the folder's results table and the total time (tiny smoke settings here; the
whole reproduction is measured by the command itself, never in a test)."""

import io
import json
import os
import signal

import pytest

from nnparity.cli import main as cli
from nnparity.cli import reproduce
from nnparity.reporting import results

SMOKE = ["--epochs", "1", "--train-size", "96", "--test-size", "48", "--no-progress"]


@pytest.fixture
def run_calls(monkeypatch):
    """Every call reproduce makes of ``cli.run.run_network`` (the function ``nnparity run`` calls),
    passed through to it."""
    calls, real = [], reproduce.run_network

    def spy(name, **kw):
        calls.append((name, kw))
        return real(name, **kw)
    monkeypatch.setattr(reproduce, "run_network", spy)
    return calls


def test_a_smoke_reproduction_runs_each_network_through_the_run_path_and_writes_its_table(tmp_path, run_calls,
                                                                                           capsys):
    out = tmp_path / "rp"
    assert cli.main(["reproduce", "--out", str(out), "--only", "toy221,mlp16", *SMOKE]) == 0
    assert [name for name, _ in run_calls] == ["mlp16", "toy221"]  # the results table's order
    assert run_calls[0][1]["epochs"] == 1 and run_calls[0][1]["train_size"] == 96
    assert run_calls[1][1] == {**run_calls[1][1], "epochs": 1} and "train_size" not in run_calls[1][1]
    for name in ("mlp16", "toy221"):
        assert json.loads((out / name / "metrics.json").read_text())["status"] == "complete"
    record = json.loads((out / "reproduce.json").read_text())
    assert record["status"] == "complete" and record["smoke"] and record["seconds"] > 0
    assert [(r["net"], r["status"]) for r in record["runs"]] == [("mlp16", "complete"), ("toy221", "complete")]
    assert all(r["seconds"] > 0 and isinstance(r["load_before"], float) for r in record["runs"])
    assert record["load"]["readings"][0]["when"] == "before" and record["load"]["readings"][-1]["when"] == "after"
    assert ("Warning: figures taken under load" in (out / "reproduce.md").read_text()) == record["load"]["under_load"]
    assert record["runs"][1]["command"] == f"nnparity run toy221 --out {out} --steps 1"
    md = (out / "reproduce.md").read_text()
    assert "A smoke run (epochs 1, train size 96, test size 48)" in md
    assert results.results_table(out, ["mlp16", "toy221"]) in md
    printed = capsys.readouterr().out
    assert "total wall time" in printed and "step parity" not in printed  # the runs' output is in the log
    assert "step parity: 20 steps" in (out / "reproduce.log").read_text()


def test_an_interrupt_stops_before_the_next_run_leaves_finished_folders_and_says_so(tmp_path, monkeypatch):
    real = reproduce.run_network

    def interrupted(name, **kw):
        if name == "toy221":  # Ctrl-C as the second run starts
            os.kill(os.getpid(), signal.SIGINT)
        return real(name, **kw)
    monkeypatch.setattr(reproduce, "run_network", interrupted)
    out = tmp_path / "rp"
    assert cli.main(["reproduce", "--out", str(out), "--only", "mlp16,toy221", *SMOKE]) == 130
    assert json.loads((out / "mlp16" / "metrics.json").read_text())["status"] == "complete"
    assert not (out / "toy221").exists()
    record = json.loads((out / "reproduce.json").read_text())
    assert record["status"] == "interrupted" and "run 2 of 2, toy221" in record["interrupted"]
    assert [r["net"] for r in record["runs"]] == ["mlp16"]


def test_only_takes_documented_runs_and_refuses_others_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["reproduce", "--only", "mlp16,nope"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err, err
    assert "nope is not a documented run; the documented runs: mlp1000, mlp16" in err, err


def test_the_progress_display_names_the_run_and_epoch_and_estimates_what_remains():
    stream = io.StringIO()
    plan = [("mlp1000", 100, 400.0), ("linear10", 2000, 100.0), ("toy221", None, 0.0)]
    with reproduce.Progress(plan, show=True, stream=stream) as bar:
        bar.start(0)
        bar.line("epoch  25/100  loss 0.1 | 0.1 ...")
        assert bar.text().startswith("[1/3 mlp1000] epoch 25/100 | elapsed 0:00:")
        assert bar.remaining() is not None and "remaining ~" in bar.text()
        bar.finish(10.0)
        bar.start(1)
        bar.line("      correct seed 3 epoch  12/200  train acc 90% ...")
        assert bar.text().startswith("[2/3 linear10] correct seed 3 epoch 12/200 |")
        bar.line("parity ok: worst margin 1e-5")  # not an epoch line: the display stays
        assert bar.where == "correct seed 3 epoch 12/200"
    assert "[1/3 mlp1000] starting" in stream.getvalue()  # off a terminal: a line when it changes
    unweighed = reproduce.Progress([("mine", 3, None)], show=False)
    assert "not estimated" in unweighed.text()


def test_remaining_time_is_the_expected_time_left_scaled_by_the_speed_so_far(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(reproduce.time, "perf_counter", lambda: now[0])
    bar = reproduce.Progress([("a", 10, 100.0), ("b", 10, 300.0)], show=False)
    bar.start(0)
    now[0] += 20.0
    for _ in range(5):
        bar.line("epoch   1/10 ")
    # half of a's 100 expected seconds took 20 s: the machine runs at 0.4x the committed reports' time
    assert bar.remaining() == pytest.approx(0.4 * (50 + 300))
