"""``nnparity reproduce``: every documented run, into one folder, then its results table.

The runs are the rows of the README's results table (``nnparity.reporting.results``:
one per registered network, in registry order), each one the command ``nnparity run NET
--out OUT`` itself, in a process of its own (``python -c RUN_CHILD run ...``: the ``nnparity`` script's start), so each run's
folder has the guarantees of ``nnparity run``: ``OUT/NET`` complete, or left as it was
(an interrupted or failed run's files go to ``OUT/NET.incomplete``).

A run is two processes, one core each (the scratch side in the run's process, the torch
side in its worker), so runs go one per two cores at a time (``--jobs``; ``default_jobs``:
one on a 2-core machine), the longest expected first. Every number of every run is the
same whatever runs beside it (one thread per process); only its times are then shared.

Each run's output goes to ``OUT/logs/NET.log``; the terminal shows ONE progress display
(the runs under way, their epochs, elapsed time, an estimate of what remains) and one
line per finished run. The estimate weighs the runs by the training time their
committed reports record (``reports/NET/metrics.json``) and scales that by how fast
this machine has been so far.

A Ctrl-C (or SIGTERM) reaches this process only (each run has a session of its own); it
passes the signal on to the runs under way, which end as ``nnparity run`` ends, waits for
them, and starts no other. A run whose ``nnparity reproduce`` was killed outright goes on
and finishes its own folder.

At the end: ``OUT/reproduce.md`` and ``OUT/reproduce.json`` (each run's status, start,
wall time and the load before and after it, the total wall time, and the results table
of the folder, ``nnparity results --reports OUT``). ``--epochs N`` (and
``--train-size``, ``--test-size``) make a quick smoke run of the whole pipeline, said so
in the table's heading: its figures are not the documented ones.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from nnparity.cli.run import EXIT_INTERRUPTED, EXIT_WORKER, run_recipe
from nnparity.core import io
from nnparity.core.signals import interrupt_name, signals_held
from nnparity.core.threads import cores
from nnparity.reporting import results
from nnparity.reporting.bench import LoadWatch
from nnparity.training.networks import NETWORKS, get

DEFAULT_OUT = "runs/reproduce"
COMMITTED = Path(__file__).resolve().parents[2] / "reports"  # the committed reports: the estimate's weights
STATUS = {0: "complete", 1: "parity failed", 2: "error", 3: "diverged", 4: "collapsed", EXIT_WORKER: "torch worker failed",
          EXIT_INTERRUPTED: "interrupted"}
RUN_CHILD = "import sys; from nnparity.cli.main import main; sys.exit(main())"  # the nnparity script's own start
POLL_SECONDS = 0.25  # how often the runs' logs and ends are looked at
# an epoch line of a run's log: "epoch   3/100 ..." (a single run), "  correct seed 0 epoch   3/200 ..." (a sweep)
EPOCH_LINE = re.compile(r"^\s*(?P<where>(?:[\w-]+ seed \d+ )?epoch\s+\d+/\d+)\s")
SMOKE_OPTIONS = (("epochs", "--epochs"), ("train_size", "--train-size"), ("test_size", "--test-size"))


class UnknownRun(ValueError):
    """``--only`` names a network that is not one of the documented runs."""


def documented_runs(only=None) -> list[str]:
    """The networks of the results table, in its order (``only``: those of them, by name): the
    registry's entries with a ``claim`` (a network of your own has none)."""
    names = [name for name, net in NETWORKS.items() if net.claim]
    for name in only or ():
        if name not in names:
            raise UnknownRun(f"{name} is not a documented run; the documented runs: {', '.join(names)}")
    return [n for n in names if not only or n in only]


def run_options(net, smoke: dict) -> tuple[dict, str]:
    """``run_recipe``'s keyword arguments of the smoke options that apply to ``net``, and
    the same as ``nnparity run`` arguments (an entry whose ``epochs`` is its own option, as
    toy221's ``--steps``, gets that option)."""
    unsupported = {dest for dest, _ in net.unsupported}
    own = {o.field: o.flag for o in net.run_options() if o.field}
    kwargs, flags = {}, []
    for dest, flag in SMOKE_OPTIONS:
        value = smoke.get(dest)
        if value is None or (dest in unsupported and dest not in own):
            continue
        kwargs[dest] = value
        flags += [own.get(dest, flag), str(value)]
    return kwargs, flags


def planned_epochs(net, recipe) -> int | None:
    """The epoch lines a run of ``net`` logs: epochs x seeds x variants (None: it logs none)."""
    if not net.mnist:
        return None
    return recipe.epochs * net.run_seeds * net.run_variants


def recorded_seconds(metrics: dict) -> float:
    """Training seconds (both sides) a report records: its epochs', and its runs' (a sweep)."""
    total = sum(row[side]["seconds"] for row in metrics.get("epochs") or [] for side in results.SIDES
                if isinstance(row.get(side), dict) and "seconds" in row[side])
    return total + sum(recorded_seconds(run) for run in metrics.get("runs") or [] if isinstance(run, dict))


def expected_seconds(name: str, recipe) -> float | None:
    """The committed report's training time of ``name``, scaled to ``recipe``'s epochs and
    training images; None if there is no committed report to weigh it by."""
    try:
        metrics = results.read_report(COMMITTED, name)
    except results.ResultsError:
        return None
    seconds = recorded_seconds(metrics)
    was = metrics.get("recipe", {})
    if was.get("epochs"):
        seconds *= recipe.epochs / was["epochs"]
    if recipe.train_size and (was.get("train_size") or 60000) > recipe.train_size:
        seconds *= recipe.train_size / (was.get("train_size") or 60000)
    return seconds


def clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """The one progress display: ``[2/5 mlp16] epoch 37/100 | elapsed 0:12:03 | remaining ~0:41:10``,
    with every run under way named (``[5/5 cnn18k] epoch 3/20; [3/5 linear10] correct seed 0
    epoch 12/200 | ...``).

    ``plan``: one ``(name, planned epoch lines or None, expected seconds or None)`` per run, in
    the table's order; ``order``: the order the runs start in (default the plan's); ``jobs``:
    how many run at once. ``show``: None on a terminal only, False never, True always (as
    ``nnparity run``'s bars). On a terminal the line is redrawn in place every second;
    elsewhere it is printed when it changes. ``done(line)`` prints a line above it (a
    finished run)."""

    def __init__(self, plan: list, show, stream=None, jobs: int = 1, order=None):
        self.plan, self.jobs = plan, jobs
        self.order = list(range(len(plan))) if order is None else list(order)
        self.stream = stream or sys.stderr
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.show = tty if show is None else bool(show)
        self.redraw = self.show and tty
        self.t0 = time.perf_counter()
        self.active = {}    # run index -> {"where": text, "lines": epoch lines seen, "t0": its start}
        self.finished = {}  # run index -> its wall seconds
        self._lock, self._stop, self._last = threading.Lock(), threading.Event(), ""
        self._thread = threading.Thread(target=self._tick, daemon=True) if self.redraw else None

    def __enter__(self):
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            with self._lock:
                self.stream.write("\r\033[K")
                self.stream.flush()

    def start(self, index: int) -> None:
        self.active[index] = {"where": "starting", "lines": 0, "t0": time.perf_counter()}
        self._draw()

    def line(self, index: int, text: str) -> None:
        """A line of run ``index``'s log: an epoch line moves the display on."""
        m = EPOCH_LINE.match(text)
        if m and index in self.active:
            run = self.active[index]
            run["lines"] += 1
            run["where"] = " ".join(m.group("where").split())
            self._draw()

    def finish(self, index: int, seconds: float) -> None:
        self.active.pop(index, None)
        self.finished[index] = seconds

    def _fraction(self, index: int) -> float:
        lines = self.plan[index][1]
        return min(1.0, self.active[index]["lines"] / lines) if lines else 0.0

    def remaining(self) -> float | None:
        """Seconds still to go: the expected time of what is left (the runs under way's unfinished
        fractions and the runs not started), scaled by actual / expected time so far, laid out
        over ``jobs`` runs at once in the start order."""
        left = [i for i in self.order if i not in self.finished]
        if not left or any(self.plan[i][2] is None for i in left):
            return None if left else 0.0
        now = time.perf_counter()
        done_expected = sum(self.plan[i][2] or 0.0 for i in self.finished)
        done_actual = sum(self.finished.values())
        for i, run in self.active.items():
            f = self._fraction(i)
            done_expected += self.plan[i][2] * f
            done_actual += (now - run["t0"]) * (f > 0)
        speed = done_actual / done_expected if done_expected > 0 and done_actual > 0 else 1.0
        lanes = [speed * self.plan[i][2] * (1 - self._fraction(i)) for i in self.active]
        lanes += [0.0] * max(0, self.jobs - len(lanes))
        for i in left:
            if i not in self.active:  # the next run starts where a run ends first
                lanes[lanes.index(min(lanes))] += speed * self.plan[i][2]
        return max(lanes)

    def text(self) -> str:
        n = len(self.plan)
        where = "; ".join(f"[{i + 1}/{n} {self.plan[i][0]}] {run['where']}" for i, run in self.active.items())
        left = self.remaining()
        return (f"{where or f'[{len(self.finished)}/{n} finished]'} | elapsed "
                f"{clock(time.perf_counter() - self.t0)} | remaining "
                + (f"~{clock(left)}" if left is not None else "not estimated (no committed report to weigh it by)"))

    def done(self, line: str, out) -> None:
        with self._lock:
            if self.redraw:
                self.stream.write("\r\033[K")
                self.stream.flush()
            print(line, file=out, flush=True)
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        if not self.show:
            return
        text = self.text()
        with self._lock:
            if self.redraw:
                self.stream.write("\r\033[K" + text)
            elif force or text.split(" | ")[0] != self._last:  # off a terminal: when a run or epoch changes
                self.stream.write(text + "\n")
            self._last = text.split(" | ")[0]
            self.stream.flush()

    def _tick(self):
        while not self._stop.wait(1.0):
            self._draw()


@contextmanager
def _deferred():
    """A SIGINT or SIGTERM inside the block is raised when it ends (a run started, or recorded,
    whole). SIGINT stays unblocked: a run has a session of its own and gets signals from here."""
    with signals_held() as held:
        yield
    if held:
        raise KeyboardInterrupt(held[0])


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def default_jobs() -> int:
    """Runs at once by default: one per two cores (a run is two processes, one core each).
    Two runs on two cores gain nothing: measured on the 2-core Xeon, mlp1000 beside cnn18k took
    8.8 s per epoch against 3.4 alone, cnn18k 72 s against 40, a throughput of 0.92 runs."""
    return max(1, cores() // 2)


def start_order(plan: list) -> list[int]:
    """The runs' start order: the longest expected first (the table's order among equals; a run
    with no committed report to weigh it by last), so that no long run starts at the end."""
    return sorted(range(len(plan)), key=lambda i: (plan[i][2] is None, -(plan[i][2] or 0.0), i))


class _Run:
    """One run under way: ``nnparity run NET --out OUT ...`` (``RUN_CHILD``) (the very command the
    record names) in a session of its own, so that a terminal's Ctrl-C reaches only
    ``nnparity reproduce``, which passes it on (``stop``). Its output, stdout and stderr, goes
    to ``OUT/logs/NET.log``, which this process reads as it grows (``lines``): a run whose
    parent is gone still finishes, and writes, its own folder."""

    def __init__(self, run: dict, log_path: Path, watch):
        self.run, self.log_path = run, log_path
        out = log_path.parent.parent
        self.folders = (out / run["net"], out / f"{run['net']}.incomplete")  # where its files can end up
        self.stamps = [_stamp(f) for f in self.folders]
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(f"===== {run['command']}\n")
            log.flush()
            self.proc = subprocess.Popen([sys.executable, "-c", RUN_CHILD, *run["argv"]], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.t0, self.load_before = time.perf_counter(), load1()
        self.watch = watch
        watch.start(run["net"])
        self._reader, self._partial = open(log_path, encoding="utf-8", errors="replace"), ""

    def lines(self) -> list[str]:
        """The whole lines written since the last call."""
        parts = (self._partial + self._reader.read()).split("\n")
        self._partial = parts.pop()
        return parts

    def stop(self, name: str) -> None:
        """Pass the signal ``name`` on: the run ends as ``nnparity run`` ends on it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if name == "SIGINT" else signal.SIGTERM)

    def result(self, t_start: float) -> dict:
        """The finished run's record. Its folder is the one it wrote (``OUT/NET`` or
        ``OUT/NET.incomplete``, whichever changed while it ran); a signal that ended the process
        after it had put its complete folder in place does not make the run a failed one."""
        self._reader.close()
        self.watch.stop(self.run["net"])
        code = self.proc.returncode
        seconds = time.perf_counter() - self.t0
        written = [f for f, before in zip(self.folders, self.stamps) if _stamp(f) not in (None, before)]
        folder = written[0] if written else None
        record = {"net": self.run["net"], "command": self.run["command"], "exit": code}
        if code < 0 and folder == self.folders[0]:  # OUT/NET holds complete (or collapsed) runs only
            record["exit"] = 4 if _report_status(folder) == "collapsed" else 0
            record["note"] = f"{signal.Signals(-code).name} came after the run had put its folder in place"
        code = record["exit"]
        status = STATUS.get(code) or (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}")
        return {**record, "status": status, "started_at": round(self.t0 - t_start, 1), "seconds": round(seconds, 1),
                "load_before": self.load_before, "load_after": load1(),
                "others_cores": next((o["cores"] for o in self.watch.others if o["during"] == self.run["net"]), None),
                "folder": str(folder) if folder else None, "log": str(self.log_path)}


def _stamp(folder: Path):
    """What tells a folder put in place since (``RunFolder`` renames a new one in): its inode and time."""
    try:
        st = folder.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _report_status(folder: Path) -> str | None:
    try:
        return json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("status")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):  # unreadable: not a complete run's report
        return None


def reproduce(out=DEFAULT_OUT, only=None, epochs=None, train_size=None, test_size=None, data_dir=None,
              progress=None, command: str = "nnparity reproduce", jobs: int | None = None) -> int:
    """``nnparity reproduce``: returns 0 when every run completed, 130 when interrupted, else
    the first failed run's exit status (the other runs still ran). ``jobs`` runs at once
    (default ``default_jobs()``), each ``nnparity run`` in a process of its own."""
    t0 = time.perf_counter()
    names = documented_runs(only)
    jobs = jobs or default_jobs()
    out_dir = io.ensure_writable_dir(io.check_path_text(out, DEFAULT_OUT))
    logs = io.ensure_writable_dir(out_dir / "logs")
    smoke = {"epochs": epochs, "train_size": train_size, "test_size": test_size}
    is_smoke = any(v is not None for v in smoke.values())
    plan, runs = [], []
    for name in names:
        net = get(name)
        kwargs, flags = run_options(net, smoke)
        recipe = run_recipe(net, **kwargs)
        argv = ["run", name, "--out", str(out), *flags] + (["--data-dir", str(data_dir)] if data_dir else [])
        runs.append({"net": name, "argv": argv, "command": "nnparity " + shlex.join(argv)})
        plan.append((name, planned_epochs(net, recipe), expected_seconds(name, recipe)))
    order = start_order(plan)
    record = {"command": command, "out": str(out), "smoke": is_smoke,
              "smoke_options": {k: v for k, v in smoke.items() if v is not None}, "started": time.time(),
              "jobs": jobs, "runs": [], "status": "incomplete"}
    stdout = sys.stdout
    watch = LoadWatch()  # the load, and the CPU other processes took during each run (as nnparity bench)
    watch.read("before")
    active, done, waiting = {}, {}, list(order)  # run index -> _Run; run index -> its record

    def collect(bar) -> None:
        """Feed the runs' new log lines to the display; record the runs that have ended."""
        for i, r in list(active.items()):
            ended = r.proc.poll() is not None
            for line in r.lines():
                bar.line(i, line)
            if ended:
                with _deferred():  # recorded once: in done, no longer active
                    done[i] = r.result(t0)
                    del active[i]
                bar.finish(i, done[i]["seconds"])
                d = done[i]
                bar.done(f"{d['net']}: {d['status']} in {clock(d['seconds'])} (load {d['load_before']} -> "
                         f"{d['load_after']}); {d['folder'] or 'no folder written'}", stdout)

    with Progress(plan, progress, jobs=jobs, order=order) as bar:
        try:
            try:
                while waiting or active:
                    while waiting and len(active) < jobs:
                        i = waiting[0]
                        with _deferred():  # a signal comes once the run is on the list
                            active[i] = _Run(runs[i], logs / f"{runs[i]['net']}.log", watch)
                            waiting.pop(0)
                        bar.start(i)
                    time.sleep(POLL_SECONDS)
                    collect(bar)
                    if any(d["exit"] == EXIT_INTERRUPTED for d in done.values()):  # a run was stopped by a signal
                        raise KeyboardInterrupt("a signal")
            except KeyboardInterrupt as e:
                name = interrupt_name(e)
                under_way = [f"run {i + 1} of {len(runs)}, {runs[i]['net']}" for i in sorted(active)]
                record["interrupted"] = (f"{name} during {'; '.join(under_way) or 'no run'}"
                                         + (f"; did not start: {', '.join(runs[i]['net'] for i in waiting)}" if waiting else ""))
                for r in active.values():
                    r.stop(name)
                while active:  # each run writes its files and ends, as ``nnparity run`` does
                    try:
                        time.sleep(POLL_SECONDS)
                        collect(bar)
                    except KeyboardInterrupt as again:
                        for r in active.values():
                            r.stop(interrupt_name(again))
        finally:
            for r in active.values():  # only on an error of this process: no run is left running
                r.stop("SIGTERM")
                r.proc.wait()
    record["runs"] = [done[i] for i in sorted(done)]
    failed = [d["exit"] for d in record["runs"] if d["exit"]]
    status = EXIT_INTERRUPTED if "interrupted" in record else (
        next((c if c > 0 else 2 for c in failed), 0))
    watch.read("after")
    record["load"] = watch.summary()
    record["seconds"] = round(time.perf_counter() - t0, 1)
    record["status"] = "interrupted" if status == EXIT_INTERRUPTED else ("complete" if status == 0 else "failed")
    complete = [r["net"] for r in record["runs"] if r["exit"] == 0]
    try:
        record["results_table"] = results.results_table(out_dir, complete) if complete else None
    except results.ResultsError as e:
        record["results_table"], record["results_problem"] = None, str(e)
    with signals_held() as held:
        io.write_json(out_dir / "reproduce.json", record)
        io.write_text(out_dir / "reproduce.md", markdown(record))
    print(f"total wall time {clock(record['seconds'])} ({record['seconds']:.0f} s) for {len(record['runs'])} of "
          f"{len(runs)} runs; {out_dir / 'reproduce.md'}" + (f" ({', '.join(held)} held while it was written)"
                                                             if held else ""), file=stdout)
    if record["load"]["under_load"]:
        print(f"WARNING: {record['load']['warning']}", file=stdout)
    if status == EXIT_INTERRUPTED:
        print(f"nnparity reproduce: interrupted ({record['interrupted']})", file=sys.stderr)
    return status


def markdown(record: dict) -> str:
    jobs = record.get("jobs", 1)
    lines = ["# nnparity reproduce", "",
             f"Made by `{record['command']}`: {len(record['runs'])} runs, total wall time "
             f"{clock(record['seconds'])} ({record['seconds']:.0f} s); status {record['status']}"
             + (f" ({record['interrupted']})" if record.get("interrupted") else "") + ". "
             + (f"{jobs} runs at a time (`--jobs {jobs}`), longest expected first: each run's times, its wall time "
                "here and the seconds of its report, were taken while another run shared the cores (`--jobs 1` "
                "for times of each run alone); its numbers do not depend on it (one thread per process). "
                if jobs > 1 else "One run at a time (`--jobs 1`). ")
             + "Each run's own output is in `logs/NET.log`; the load is `os.getloadavg()`'s 1-minute figure "
             "before and after each run (the runs' own threads count in it), beside the cores' worth of CPU "
             "processes other than this command and its runs took while it ran (`/proc/stat`, as `nnparity bench` "
             "measures it).", ""]
    if record["load"]["under_load"]:
        lines += [f"**Warning: {record['load']['warning']}.**", ""]
    lines += ["| run | status | started at | wall time | s | load before / after | other processes, cores | command |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['net']}` | {r['status']} | {clock(r.get('started_at', 0.0))} | {clock(r['seconds'])} | "
              f"{r['seconds']:.0f} | {r['load_before']} / {r['load_after']} | "
              f"{'n/a' if r['others_cores'] is None else r['others_cores']} | `{r['command']}` |"
              for r in record["runs"]]
    lines += ["", "## Results table", ""]
    if record["smoke"]:
        opts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in record["smoke_options"].items())
        lines += [f"**A smoke run ({opts}): every run was shortened, so these are not the documented figures.**", ""]
    if record.get("results_table"):
        lines += [record["results_table"], "", f"(`nnparity results --reports {record['out']}` prints it again.)"]
    else:
        lines += [f"No table: {record.get('results_problem') or 'no run completed'}."]
    return "\n".join(lines) + "\n"


def network_list(text: str) -> list[str]:
    """``--only NET,...``: documented run names, checked (``argparse`` type)."""
    import argparse

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected documented run names separated by commas, e.g. mlp16,toy221")
    try:
        documented_runs(names)
    except UnknownRun as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return names


__all__ = ["reproduce", "documented_runs", "Progress"]
