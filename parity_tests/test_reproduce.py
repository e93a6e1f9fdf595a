"""``nnparity reproduce``: every documented run through the one run path, one progress
display, the folder's results table and the total time (tiny smoke settings here; the
whole reproduction is measured by the command itself, never in a test)."""

import io
import json
import os
import signal
import threading

import pytest

from nnparity.cli import main as cli
from nnparity.cli import reproduce
from nnparity.reporting import results

SMOKE = ["--epochs", "1", "--train-size", "96", "--test-size", "48", "--no-progress"]
RUN_LIMIT_S = 300  # a run of these tests takes seconds; one not ended by then never will


@pytest.fixture
def bounded_runs(monkeypatch):
    """Every run the test's reproduce starts is killed, its whole session, once ``RUN_LIMIT_S``
    have passed (a later one at once), and the test fails: a run that never ends fails the
    test instead of holding the suite for ever, as the other tests' subprocess timeouts do
    (a CI run once hung here until its 90 minutes were over)."""
    runs, killed, expired = [], [], threading.Event()
    start = reproduce._Run.__init__

    def kill(r):
        if r.proc.poll() is None:
            killed.append(r.run["net"])
            os.killpg(r.proc.pid, signal.SIGKILL)

    def started(self, *args, **kwargs):
        start(self, *args, **kwargs)
        runs.append(self)
        if expired.is_set():  # a run started after the limit: at once
            kill(self)

    def limit():
        expired.set()
        for r in list(runs):
            kill(r)
    monkeypatch.setattr(reproduce._Run, "__init__", started)
    timer = threading.Timer(RUN_LIMIT_S, limit)
    timer.start()
    yield
    timer.cancel()
    timer.join()  # no thread of this test outlives it (a later test's worker may be forked)
    assert not killed, f"not ended after {RUN_LIMIT_S} s, killed: {', '.join(killed)}"


def test_a_smoke_reproduction_runs_each_network_as_nnparity_run_and_writes_its_table(tmp_path, capsys, bounded_runs):
    out = tmp_path / "rp"
    assert cli.main(["reproduce", "--out", str(out), "--only", "toy221,mlp16", "--jobs", "2", *SMOKE]) == 0
    record = json.loads((out / "reproduce.json").read_text())
    assert record["status"] == "complete" and record["smoke"] and record["seconds"] > 0 and record["jobs"] == 2
    assert [(r["net"], r["status"]) for r in record["runs"]] == [("mlp16", "complete"), ("toy221", "complete")]
    assert record["runs"][1]["command"] == f"nnparity run toy221 --out {out} --steps 1"
    for r in record["runs"]:
        metrics = json.loads((out / r["net"] / "metrics.json").read_text())
        assert metrics["status"] == "complete" and r["folder"] == str(out / r["net"])
        assert metrics["command"] == r["command"]  # each run is that very command, in a process of its own
        assert r["seconds"] > 0 and isinstance(r["load_before"], float)
        log = (out / "logs" / f"{r['net']}.log").read_text()
        assert log.startswith(f"===== {r['command']}\n") and r["log"] == str(out / "logs" / f"{r['net']}.log")
    mlp16 = json.loads((out / "mlp16" / "metrics.json").read_text())
    assert mlp16["recipe"]["train_size"] == 96 and mlp16["epochs_planned"] == 1
    # two at a time: the second started before the first ended
    first, second = sorted(record["runs"], key=lambda r: r["started_at"])
    assert second["started_at"] < first["started_at"] + first["seconds"]
    assert record["load"]["readings"][0]["when"] == "before" and record["load"]["readings"][-1]["when"] == "after"
    md = (out / "reproduce.md").read_text()
    assert ("Warning: figures taken under load" in md) == record["load"]["under_load"]
    assert "A smoke run (epochs 1, train size 96, test size 48)" in md and "2 runs at a time (`--jobs 2`)" in md
    assert results.results_table(out, ["mlp16", "toy221"]) in md
    printed = capsys.readouterr().out
    assert "total wall time" in printed and "step parity" not in printed  # the runs' output is in their logs
    assert "step parity: 20 steps" in (out / "logs" / "mlp16.log").read_text()


def test_an_interrupt_is_passed_to_the_run_under_way_and_no_later_run_starts(tmp_path, monkeypatch, bounded_runs):
    """Each run has a session of its own (a terminal's Ctrl-C reaches ``nnparity reproduce`` only):
    the signal is passed on, the run ends as ``nnparity run`` does, and it is waited for."""
    real = reproduce.Progress.line

    def interrupted(self, index, text):
        real(self, index, text)
        if text.startswith("epoch   1/"):  # Ctrl-C once the first run trains
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(reproduce.Progress, "line", interrupted)
    out = tmp_path / "rp"
    endless = ["--epochs", "100000", "--train-size", "96", "--test-size", "48", "--no-progress"]
    assert cli.main(["reproduce", "--out", str(out), "--only", "mlp16,toy221", "--jobs", "1", *endless]) == 130
    assert not (out / "mlp16").exists() and not (out / "logs" / "toy221.log").exists()
    stopped = json.loads((out / "mlp16.incomplete" / "metrics.json").read_text())
    assert stopped["status"] == "incomplete" and stopped["status_detail"].startswith("interrupted (SIGINT) during epoch")
    assert "interrupted: writing the report" in (out / "logs" / "mlp16.log").read_text()
    record = json.loads((out / "reproduce.json").read_text())
    assert record["status"] == "interrupted" and "SIGINT during run 1 of 2, mlp16" in record["interrupted"]
    assert "did not start: toy221" in record["interrupted"]
    assert [(r["net"], r["status"], r["folder"]) for r in record["runs"]] == [
        ("mlp16", "interrupted", str(out / "mlp16.incomplete"))]


def test_a_signal_that_ends_a_run_after_its_folder_is_in_place_does_not_fail_it(tmp_path):
    """The signal can come as the run ends, after its complete folder is in place: the run
    completed (seen: a Ctrl-C as linear10 printed its last line was counted as a failure)."""
    out = tmp_path / "rp"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "mlp16.log").write_text("")
    run = reproduce._Run.__new__(reproduce._Run)
    run.run, run.log_path = {"net": "mlp16", "command": "nnparity run mlp16"}, out / "logs" / "mlp16.log"
    run.folders = (out / "mlp16", out / "mlp16.incomplete")
    run.stamps = [reproduce._stamp(f) for f in run.folders]  # neither there when it started
    run._reader = open(run.log_path, encoding="utf-8")
    run.t0, run.load_before, run.watch = 0.0, 0.0, reproduce.LoadWatch()
    run.watch.start("mlp16")
    (out / "mlp16").mkdir()
    (out / "mlp16" / "metrics.json").write_text(json.dumps({"status": "complete"}))
    run.proc = type("Ended", (), {"returncode": -signal.SIGINT})()
    done = run.result(0.0)
    assert (done["status"], done["exit"], done["folder"]) == ("complete", 0, str(out / "mlp16"))
    assert "SIGINT came after the run had put its folder in place" in done["note"]
    (out / "mlp16").rename(out / "mlp16.incomplete")  # cut short instead: the run did not complete
    run._reader = open(run.log_path, encoding="utf-8")
    run.watch.start("mlp16")
    done = run.result(0.0)
    assert (done["status"], done["folder"]) == ("killed by SIGINT", str(out / "mlp16.incomplete"))


def test_only_takes_documented_runs_and_refuses_others_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["reproduce", "--only", "mlp16,nope"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err, err
    assert "nope is not a documented run; the documented runs: mlp1000, mlp16" in err, err


def test_the_progress_display_names_the_runs_and_epochs_and_estimates_what_remains():
    stream = io.StringIO()
    plan = [("mlp1000", 100, 400.0), ("linear10", 2000, 100.0), ("toy221", None, 0.0)]
    with reproduce.Progress(plan, show=True, stream=stream) as bar:
        bar.start(0)
        bar.line(0, "epoch  25/100  loss 0.1 | 0.1 ...")
        assert bar.text().startswith("[1/3 mlp1000] epoch 25/100 | elapsed 0:00:")
        assert bar.remaining() is not None and "remaining ~" in bar.text()
        bar.start(1)  # two under way: both named
        bar.line(1, "      correct seed 3 epoch  12/200  train acc 90% ...")
        assert bar.text().startswith("[1/3 mlp1000] epoch 25/100; [2/3 linear10] correct seed 3 epoch 12/200 |")
        bar.finish(0, 10.0)
        assert bar.text().startswith("[2/3 linear10] correct seed 3 epoch 12/200 |")
        bar.line(1, "parity ok: worst margin 1e-5")  # not an epoch line: the display stays
        assert bar.active[1]["where"] == "correct seed 3 epoch 12/200"
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
        bar.line(0, "epoch   1/10 ")
    # half of a's 100 expected seconds took 20 s: the machine runs at 0.4x the committed reports' time
    assert bar.remaining() == pytest.approx(0.4 * (50 + 300))


def test_with_two_runs_at_once_what_remains_is_the_later_of_the_two_lanes(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(reproduce.time, "perf_counter", lambda: now[0])
    plan = [("a", 10, 100.0), ("b", 10, 300.0), ("c", 10, 50.0)]
    order = reproduce.start_order(plan)
    assert order == [1, 0, 2]  # the longest expected first
    bar = reproduce.Progress(plan, show=False, jobs=2, order=order)
    bar.start(1)
    bar.start(0)
    now[0] += 20.0
    for _ in range(5):
        bar.line(0, "epoch   1/10 ")
    # speed 0.4 (a: half of 100 s in 20 s); a's lane: 20 s left, then c (20 s); b's lane: 120 s
    assert bar.remaining() == pytest.approx(120.0)
    assert reproduce.start_order([("x", 1, None), ("y", 1, 5.0), ("z", 1, 5.0)]) == [1, 2, 0]
