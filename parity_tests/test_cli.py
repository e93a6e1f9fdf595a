"""The nnparity command: a short real run writes a complete side-by-side report;
bad arguments exit 2 with one clear line and write nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnparity.cli.main import main

QUICK = ["--epochs", "2", "--train-size", "600", "--test-size", "300", "--parity-steps", "3", "--no-progress"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    assert main(["run", "mlp1000", "--out", str(out), *QUICK]) == 0
    return out / "mlp1000"


def test_run_writes_report_metrics_and_plots(quick_run):
    names = sorted(p.name for p in quick_run.iterdir())
    assert names == ["accuracy.png", "drift.png", "error.png", "loss.png", "metrics.json", "report.md"]
    assert not [n for n in names if n.startswith(".")]  # no temporary files left


def test_metrics_schema(quick_run):
    m = json.loads((quick_run / "metrics.json").read_text())
    assert m["net"] == "mlp1000" and m["status"] == "complete" and m["recipe"]["lr"] == 0.001
    assert m["parity"]["ok"] and m["parity"]["steps"] == 3
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    for e in m["epochs"]:
        for side in ("scratch", "torch"):
            assert set(e[side]) >= {"train_loss", "train_error", "test_accuracy", "seconds"}
            assert 0 <= e[side]["train_error"] <= 100 and 0 <= e[side]["test_accuracy"] <= 100
        assert e["max_abs_weight_diff"] < 1e-12  # float64, 12 steps: the sides agree to rounding
    assert m["epochs"][1]["scratch"]["train_loss"] < m["epochs"][0]["scratch"]["train_loss"]


def test_report_shows_both_sides(quick_run):
    text = (quick_run / "report.md").read_text()
    assert "| final test accuracy % |" in text and "## Per epoch" in text and "![loss](loss.png)" in text
    assert "Produced by `nnparity run mlp1000 --out" in text or "Produced by `nnparity run mlp1000" in text


def test_list():
    assert main(["list"]) == 0


@pytest.mark.parametrize("args,expected", [
    (["run", "mlp9"], "unknown network 'mlp9'; known networks: mlp1000"),
    (["run", "mlp1000", "--epochs", "0"], "must be a positive integer, got 0"),
    (["run", "mlp1000", "--epochs", "two"], "expected a positive integer, got 'two'"),
    (["run", "mlp1000", "--dtype", "float16"], "invalid choice: 'float16'"),
    (["bench", "nope"], "unknown network 'nope'"),
])
def test_bad_arguments_exit_2_with_one_line(args, expected, tmp_path, cli_process):
    proc = cli_process.run([*args, "--out", str(tmp_path / "r")] if args[0] == "run" else args)
    assert proc.returncode == 2
    assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "r").exists()


def test_missing_data_dir_is_one_clear_line(tmp_path, cli_process):
    proc = cli_process.run(["parity", "mlp1000", "--steps", "1", "--data-dir", str(tmp_path / "nothing")],
                           env={"NNPARITY_NO_DOWNLOAD": "1"})
    assert proc.returncode == 2
    assert "MNIST not found in" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_reader_that_closes_early_ends_the_command_quietly_with_status_141():
    """`nnparity list | head -0`: the reader is gone before the first line is written (closed
    here before the child, a fresh interpreter, has even imported its modules, so the pipe is
    broken whatever the size of the output). The command stops like `yes | head`: nothing on stderr (no
    "error: [Errno 32] Broken pipe", no "Exception ignored" at interpreter exit), status 141
    (128 + SIGPIPE), not the 2 of an argument or data error."""
    p = subprocess.Popen([sys.executable, "-m", "nnparity.cli.main", "list"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdout.close()
    err = p.stderr.read()
    p.stderr.close()
    assert p.wait(timeout=60) == 141 and err == ""


_SIGNAL_IN_A_CALLBACK = """
import os, signal, time, weakref
from nnparity.core.signals import catch_interrupts
catch_interrupts()
class Held: pass
def callback(_):  # a weakref callback, as the import system's module-lock cleanup is
    os.kill(os.getpid(), signal.SIGTERM)  # its handler runs here, where no exception can get out
    for _ in range(10000): pass
held = Held()
ref = weakref.ref(held, callback)
try:
    del held
    time.sleep(5)
    print("not interrupted")
except KeyboardInterrupt as e:
    print("interrupted", e.args[0])
"""


def test_a_signal_that_lands_in_a_weakref_callback_still_interrupts():
    """Seen in CI: a SIGTERM during a run's start-up landed in importlib's module-lock
    callback, Python printed "Exception ignored in ..." with a traceback and the run went on.
    The handler's KeyboardInterrupt is now given back as the signal, outside the callback."""
    out = subprocess.run([sys.executable, "-c", _SIGNAL_IN_A_CALLBACK], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["interrupted", "SIGTERM"], (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr


_SIGNAL_IN_AN_IMPORT = """
import os, sys, time
from nnparity.core.signals import catch_interrupts
catch_interrupts()
try:
    import signalled  # its body sends this process SIGTERM, then goes on for 50 ms
    time.sleep(5)
    print("not interrupted")
except KeyboardInterrupt as e:
    print("interrupted", e.args[0], "imported" if getattr(sys.modules.get("signalled"), "DONE", False) else "cut")
"""


def test_a_signal_that_lands_in_an_import_interrupts_after_it(tmp_path):
    """Seen in CI and here: a SIGINT during ``import torch`` raised inside Python code that
    torch's C++ had called (``torch._C._c10d_init``); pybind11 cannot pass an exception on
    there and the process aborted (exit -6, "terminate called after throwing an instance of
    'pybind11::error_already_set'"). A signal that lands in an import now interrupts once the
    import is over: here the module's whole body runs, and then the script is interrupted."""
    (tmp_path / "signalled.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the import\n"
        "time.sleep(0.05)\n"
        "DONE = True\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    out = subprocess.run([sys.executable, "-c", _SIGNAL_IN_AN_IMPORT], capture_output=True, text=True,
                         timeout=60, cwd=root, env=env)
    assert out.stdout.split() == ["interrupted", "SIGTERM", "imported"], (out.stdout, out.stderr)
    assert out.stderr == "", out.stderr


def test_a_signal_while_a_worker_starts_is_raised_once_it_has_started():
    """Seen here: a SIGINT while a spawned worker was being sent its start left that child
    printing "EOFError: Ran out of input" with a traceback. A signal inside
    ``signals_deferred`` (around a worker's start) is raised when the block ends."""
    import signal

    from nnparity.core.signals import handled_signals, signals_deferred

    reached = []
    with handled_signals(), pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("the rest of the block")
    assert reached == ["the rest of the block"]


SIGINT_BLOCKED_SCRIPT = r"""
import multiprocessing, os, signal, sys, threading
from nnparity.core.signals import handled_signals, signals_deferred


def blocked(conn):  # in the child: is SIGINT blocked in this process from its start?
    conn.send(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))


if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    reader, writer = ctx.Pipe(duplex=False)  # a pipe, not a queue: a queue's lock starts multiprocessing's
    p = ctx.Process(target=blocked, args=(writer,))  # resource tracker before the block, and hides the first start
    idle = threading.Event()
    threading.Thread(target=idle.wait, daemon=True).start()
    try:
        with handled_signals():
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            try:
                with signals_deferred():
                    p.start()
                    os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt as e:
                print("raised after the block:", e)
            print("mask restored:", signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask)
        print("child blocked:", reader.recv() if reader.poll(60) else "no answer")
    finally:
        idle.set()
        p.kill()
        p.join()
"""


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_process_started_inside_signals_deferred_never_receives_ctrl_c(method, tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: a spawned child with Python's default
    handler could be hit while it imported torch and abort with pybind11's message. A process
    started inside ``signals_deferred`` inherits SIGINT blocked, the first one a fresh process
    spawns too (multiprocessing's resource tracker, started by that first spawn, unblocks SIGINT
    in the parent as it starts); the parent's mask comes back after the block, and a SIGINT sent
    inside it still reaches the parent then (with an idle thread beside the main one, as
    OpenBLAS's or torch's: a signal it takes is not lost)."""
    script = tmp_path / "started_inside.py"
    script.write_text(SIGINT_BLOCKED_SCRIPT)
    out = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines() == ["raised after the block: SIGINT", "mask restored: True",
                                       "child blocked: True"], (out.stdout, out.stderr)


def test_an_error_that_follows_a_signal_is_reported_as_the_interrupt(monkeypatch, capsys):
    """Seen in CI: a SIGTERM while NumPy's extension imported ``datetime`` came out of the
    import as an ImportError with a traceback. An error after the handler raised is the interrupt."""
    import signal

    from nnparity.cli import main as cli
    from nnparity.core import signals

    def start_up(argv):
        try:
            signals._interrupt(signal.SIGTERM, None)  # the handler, as the signal calls it
        except KeyboardInterrupt:
            raise ImportError("PyCapsule_Import could not import module \"datetime\"") from None

    monkeypatch.setattr(cli, "_main", start_up)
    monkeypatch.setattr(signals, "_raised", [])
    assert cli.main(["run", "mlp16"]) == 130
    assert capsys.readouterr().err == "nnparity: interrupted\n"
    monkeypatch.setattr(signals, "_raised", [])
    monkeypatch.setattr(cli, "_main", lambda argv: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # with no signal, an error is the error
        cli.main(["run", "mlp16"])
    monkeypatch.setattr(signals, "_raised", ["SIGINT"])  # an earlier command of this process was interrupted
    with pytest.raises(ZeroDivisionError):  # this command took no signal: its error is still the error
        cli.main(["run", "mlp16"])
