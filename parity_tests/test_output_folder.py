"""An output folder holds one complete run, whatever happens (``nnparity.core.io.RunFolder``).

A run writes into a hidden work folder beside ``OUT/NET`` and swaps it in at the end; an
interrupted, diverged or failed run leaves ``OUT/NET`` as it was and its own files, all
consistent, in ``OUT/NET.incomplete``. The interrupt harness sends SIGINT, SIGTERM and
SIGKILL at seeded random moments in every phase of a run (start-up, data, step parity,
drift envelope, training, report writing) and checks, after each, that the previous
report is byte for byte intact (or wholly replaced by a complete new one), that every
file of a folder comes from the same run, and that nothing is left over (``.tmp``
files, the work folder, the lock) once the next run has cleaned up after a SIGKILL.

The runs are real processes, forked from a Python that has imported torch and the other
libraries (the ``cli_process`` fixture), except where the moment is the interpreter's
start-up itself (a fresh ``sys.executable``).
"""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnparity.core import io
from nnparity.cli.main import build_parser, main
from nnparity.reporting.bench import concurrent_available

NET = "mlp16"
TINY = ["--train-size", "256", "--test-size", "64", "--no-progress"]


def command(out, seed, epochs=3, *extra):
    """The arguments of ``nnparity`` for a small run of NET into ``out``."""
    return ["run", NET, "--out", str(out), "--seed", str(seed), "--epochs", str(epochs), "--parity-steps", "3",
            "--envelope-steps", "20", *TINY, *extra]


def fresh_process(args):
    """``python -m nnparity.cli.main ARGS`` in a fresh interpreter (its start-up is what is tested)."""
    return subprocess.Popen([sys.executable, "-m", "nnparity.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def snapshot(folder: Path) -> dict:
    """{file name: bytes} of a folder (hidden names included)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def assert_one_run(folder: Path, seed: int, status: str) -> None:
    """Every file of ``folder`` is from one run: metrics.json and report.md agree on the
    seed and the status, nothing hidden or temporary is there."""
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names
    m = json.loads((folder / "metrics.json").read_text())
    assert (m["seed"], m["status"]) == (seed, status), (m["seed"], m["status"])
    report = (folder / "report.md").read_text()
    assert f"**{status}**" in report and f"seed {seed}" in report.replace("`", "")


def no_leftovers(out: Path) -> list:
    return [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def previous(tmp_path_factory, cli_process):
    """A folder holding one complete run (seed 0), and its bytes."""
    out = tmp_path_factory.mktemp("prev")
    proc = cli_process.run(command(out, 0))
    assert proc.returncode == 0, proc.stderr
    assert_one_run(out / NET, 0, "complete")
    return out, snapshot(out / NET)


def fresh_copy(previous, tmp_path) -> Path:
    out, files = previous
    (tmp_path / NET).mkdir()
    for name, data in files.items():
        (tmp_path / NET / name).write_bytes(data)
    return tmp_path


def test_a_complete_run_replaces_the_previous_one_whole(previous, tmp_path, cli_process):
    out = fresh_copy(previous, tmp_path)
    (out / NET / "stale.png").write_bytes(b"from an older run")  # nothing of the old folder survives
    proc = cli_process.run(command(out, 1, 2))
    assert proc.returncode == 0, proc.stderr
    assert_one_run(out / NET, 1, "complete")
    assert not (out / NET / "stale.png").exists()
    assert not no_leftovers(out) and not (out / f"{NET}.incomplete").exists()


# The phases of a run, each named by the line the run prints when it enters it; the signal
# goes a seeded random time after that line. "epoch   3/3" is the last epoch's line: what
# follows is the report being written, where signals are held until the folder is in place.
# Start-up (None: from the process's first instant, imports included) is a fresh interpreter's.
PHASES = [None, f"{NET}: ", "step parity", "drift envelope", "epoch   1/3", "epoch   3/3"]
rnd = random.Random(12)
CASES = [(phase, rnd.choice(("SIGINT", "SIGTERM")), round(rnd.uniform(0.0, 0.25), 3)) for phase in PHASES]


@pytest.mark.slow
@pytest.mark.parametrize("phase,sig,delay", CASES, ids=[f"{p or 'start-up'}-{s}-{d}" for p, s, d in CASES])
def test_a_signal_at_any_moment_leaves_the_previous_report_intact(previous, tmp_path, cli_process, phase, sig, delay):
    out = fresh_copy(previous, tmp_path)
    before = snapshot(out / NET)
    proc = fresh_process(command(out, 1)) if phase is None else cli_process.popen(command(out, 1))
    if phase is not None:
        for line in proc.stdout:
            if line.startswith(phase):
                break
    time.sleep(delay)
    proc.send_signal(getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    # 130: interrupted. A process can also end *by* SIGINT (-2): CPython re-raises SIGINT at exit
    # when it has seen a KeyboardInterrupt escape code it ran through its C API; a shell reports
    # 130 for both. Before Python runs main() at all (the first ~50 ms) the signal's default
    # action ends the process: nothing has been written then, which the checks below see.
    assert proc.returncode in (0, 130, -signal.SIGINT) or (phase is None and proc.returncode < 0), \
        (proc.returncode, stderr)
    if proc.returncode == 0:  # the signal came while the report was written: held, the run completed
        assert_one_run(out / NET, 1, "complete")
    else:
        assert snapshot(out / NET) == before  # the previous complete run, byte for byte
        partial = out / f"{NET}.incomplete"
        if partial.exists():  # interrupted once training had written something
            assert_one_run(partial, 1, "incomplete")
        assert len(stderr.strip().splitlines()) <= 1, stderr
    assert not no_leftovers(out), no_leftovers(out)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["drift envelope", "epoch   2/3", "epoch   3/3"])
def test_after_a_sigkill_the_next_run_cleans_up(previous, tmp_path, cli_process, phase):
    out = fresh_copy(previous, tmp_path)
    before = snapshot(out / NET)
    proc = cli_process.popen(command(out, 1, 3, "--save-every", "1"))
    for line in proc.stdout:
        if line.startswith(phase):
            break
    time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=60)
    target_now = snapshot(out / NET)
    assert target_now in (before, {}) or json.loads(target_now["metrics.json"])["status"] == "complete"
    # the next run repairs a cut swap, removes the work folder and any .tmp, then runs
    proc = cli_process.run(command(out, 2, 1))
    assert proc.returncode == 0, proc.stderr
    assert_one_run(out / NET, 2, "complete")
    assert not no_leftovers(out)


def test_a_run_that_is_interrupted_keeps_its_checkpoint_in_the_incomplete_folder(previous, tmp_path, cli_process):
    out = fresh_copy(previous, tmp_path)
    proc = cli_process.popen(command(out, 1, 50, "--save-every", "1"))
    for line in proc.stdout:
        if line.startswith("epoch   2/"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    partial = out / f"{NET}.incomplete"
    assert (partial / "checkpoint.npz").exists()
    # resuming from it completes the run into OUT/NET
    proc = cli_process.run(command(out, 1, 3, "--resume", str(partial)))
    assert proc.returncode == 0, proc.stderr
    assert_one_run(out / NET, 1, "complete")


def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(tmp_path, capsys):
    with io.RunFolder(tmp_path, NET) as first:
        assert first.path.is_dir()
        status = main(["run", NET, "--out", str(tmp_path), "--epochs", "1", "--parity-steps", "0", *TINY])
        err = capsys.readouterr().err
    assert status == 2 and f"being written by another run (process {os.getpid()})" in err
    assert len(err.strip().splitlines()) == 1
    assert not no_leftovers(tmp_path)  # the first one's work folder and lock are gone once it is done


def test_an_empty_work_folder_leaves_no_trace(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with io.RunFolder(tmp_path, NET):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out,expected", [
    ("", "--out is empty"),
    (os.fsdecode(b"runs-\xff"), "is not valid UTF-8"),
])
def test_bad_output_names_are_refused_before_any_work(tmp_path, monkeypatch, capsys, out, expected):
    monkeypatch.chdir(tmp_path)
    import nnparity.core.data

    monkeypatch.setattr(nnparity.core.data, "load_mnist", lambda *a, **k: pytest.fail("data loaded before the check"))
    assert main(["run", NET, "--out", out, "--epochs", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_folder_in_the_way_of_a_report_file_does_not_matter(tmp_path):
    """The old folder is replaced whole, so whatever it held cannot block the new files."""
    (tmp_path / NET / "metrics.json").mkdir(parents=True)
    assert main(["run", NET, "--out", str(tmp_path), "--epochs", "1", "--parity-steps", "0",
                 "--envelope-steps", "0", *TINY]) == 0
    assert (tmp_path / NET / "metrics.json").is_file()


def test_disk_full_names_the_file_and_keeps_the_previous_report(previous, tmp_path, monkeypatch, capsys):
    out = fresh_copy(previous, tmp_path)
    before = snapshot(out / NET)
    real = io.tempfile.mkstemp

    def full(*args, prefix="", **kwargs):  # the disk fills up just when report.md is written
        if prefix.startswith(".report.md."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(io.tempfile, "mkstemp", full)
    assert main(["run", NET, "--out", str(out), "--epochs", "1", "--parity-steps", "0", "--envelope-steps", "0",
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "report.md: No space left on device" in err, err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(out / NET) == before
    assert not no_leftovers(out)


def test_the_default_output_is_not_the_committed_reports():
    p = build_parser()
    assert p.parse_args(["run", NET]).out == "runs"
    assert p.parse_args(["bench"]).out == "runs/bench.md"


def test_a_data_error_leaves_no_output_folder(tmp_path, monkeypatch, capsys):
    """The data are loaded before the run's folder is made: a mistyped --data-dir (the
    download failing, as offline) leaves nothing, neither under OUT nor under the data folder."""
    from nnparity.core import data

    def offline(target):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n<urlopen error offline>")

    monkeypatch.setattr(data, "_torchvision_download", offline)
    monkeypatch.delenv(data.NO_DOWNLOAD_VAR, raising=False)
    assert main(["run", NET, "--data-dir", str(tmp_path / "typo" / "a"), "--out", str(tmp_path / "o")]) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == []
    err = capsys.readouterr().err.strip()
    assert "MNIST not found in" in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 0.8])
def test_ctrl_c_during_start_up_is_one_line(tmp_path, delay):
    """The handlers are in place from main()'s first line, before NumPy and torch are
    imported (about 1.5 s): a Ctrl-C then is one line and exit 130, nothing written."""
    proc = fresh_process(command(tmp_path, 0))
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)
    assert err.strip().endswith("interrupted") and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_gradcheck_refuses_a_step_float64_cannot_resolve(capsys):
    with pytest.raises(SystemExit) as e:
        main(["gradcheck", "mlp16", "--eps", "1e-300"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "must be between 1e-10 and 0.1" in err and len(err.strip().splitlines()) == 1


# --- the torch worker of a concurrent run (nnparity.training.worker) ----------------------------
def _workers_of(pid: int) -> list:
    """The torch worker processes of ``pid``: its children (forked or spawned), not
    multiprocessing's resource tracker."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"resource_tracker" not in cmdline:
            found.append(int(entry))
    return found


def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (a zombie has), waiting up to ``within`` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def _concurrent_run_in_training(cli_process, out, seed):
    """A concurrent run started and training its second epoch, and its torch worker's pid."""
    proc = cli_process.popen(command(out, seed, 50, "--parity-steps", "0", "--envelope-steps", "0"))
    for line in proc.stdout:
        if line.startswith("epoch   2/"):
            break
    workers = _workers_of(proc.pid)
    assert len(workers) == 1, workers
    return proc, workers[0]


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the worker process in /proc")


@needs_proc
def test_a_signal_during_a_concurrent_run_stops_its_worker(previous, tmp_path, cli_process):
    """SIGTERM (SIGINT takes the same path: both are a KeyboardInterrupt in the run)."""
    out = fresh_copy(previous, tmp_path)
    before = snapshot(out / NET)
    proc, worker = _concurrent_run_in_training(cli_process, out, 1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, stderr)
    assert len(stderr.strip().splitlines()) <= 1 and "Traceback" not in stderr, stderr
    assert _gone(worker), f"worker {worker} outlived its run"
    assert snapshot(out / NET) == before
    assert_one_run(out / f"{NET}.incomplete", 1, "incomplete")
    assert not no_leftovers(out)


@needs_proc
def test_a_worker_outlives_no_killed_run(previous, tmp_path, cli_process):
    """SIGKILL leaves the run no moment to stop its worker: the worker finds its pipe closed."""
    out = fresh_copy(previous, tmp_path)
    proc, worker = _concurrent_run_in_training(cli_process, out, 1)
    proc.kill()
    proc.communicate(timeout=60)
    assert _gone(worker), f"worker {worker} outlived its killed run"


@needs_proc
def test_a_killed_worker_ends_the_run_in_one_line(previous, tmp_path, cli_process):
    out = fresh_copy(previous, tmp_path)
    before = snapshot(out / NET)
    proc, worker = _concurrent_run_in_training(cli_process, out, 1)
    os.kill(worker, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 5, (proc.returncode, stderr)
    assert stderr.strip().splitlines() == [stderr.strip()], stderr
    assert stderr.startswith(f"nnparity run: error: the torch worker process (pid {worker}) was killed by SIGKILL "
                             "during epoch ")
    assert snapshot(out / NET) == before
    assert_one_run(out / f"{NET}.incomplete", 1, "incomplete")
    assert not no_leftovers(out)


# --- nnparity bench: each network is benchmarked in a spawned child ----------------------------
def _child_of(pid: int, within: float = 60.0) -> int:
    """The one child of ``pid`` (``_workers_of``), waiting up to ``within`` seconds for it."""
    end = time.monotonic() + within
    while not (found := _workers_of(pid)) and time.monotonic() < end:
        time.sleep(0.02)
    (child,) = found
    return child


@needs_proc
def test_a_signal_stops_the_bench_without_waiting_for_its_child(tmp_path, cli_process):
    """SIGTERM to ``nnparity bench`` during a network's child: the bench ends at once, its
    child stopped, nothing written. It used to wait for the child to finish the network's
    rounds (36.7 s for mlp16 float64 here; cnn18k's full epochs take minutes)."""
    out = tmp_path / "bench.md"
    proc = cli_process.popen(["bench", "cnn18k", "--dtype", "float32", "--repeats", "1", "--out", str(out)])
    child = _child_of(proc.pid)
    time.sleep(1.0)  # the child is past its start: importing, or timing cnn18k
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        os.kill(child, signal.SIGKILL)
        raise
    assert proc.returncode == 130 and stderr == "nnparity bench: interrupted\n", (proc.returncode, stderr)
    assert _gone(child), f"the bench's child {child} outlived it"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@needs_proc
def test_a_killed_bench_leaves_no_child_timing(tmp_path, cli_process):
    """SIGKILL to ``nnparity bench`` while its child times its rounds (where the concurrent
    mode runs, while that mode's torch worker is up): the child finds its pipe closed before
    its next measurement and ends quietly, its worker with it. Before, nothing told the child:
    it went on with its 1000 rounds here, minutes past this test's 60 s (cnn18k's orphans once
    ran 17 minutes)."""
    proc = cli_process.popen(["bench", "mlp16", "--dtype", "float32", "--steps", "5", "--repeats", "1000",
                              "--out", str(tmp_path / "bench.md")])
    found = []
    try:
        found.append(_child_of(proc.pid))
        if concurrent_available():
            found.append(_child_of(found[0]))
        proc.kill()
        proc.wait(timeout=30)
        for pid in found:
            assert _gone(pid, within=60), f"process {pid} (bench child, then its worker) outlived the killed bench"
    except BaseException:  # a failure leaves nothing timing either (and a pid seen gone is not killed: reused)
        proc.kill()
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise
