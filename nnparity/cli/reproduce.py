"""``nnparity reproduce``: every documented run, into one folder, then its results table.

The runs are the rows of the README's results table (``nnparity.reporting.results``:
one per registered network, in registry order), each made by the very function
``nnparity run NET --out OUT`` calls (``cli.run.run_network``), one after the other, so
each run's folder has the guarantees of ``nnparity run``: ``OUT/NET`` complete, or left
as it was (an interrupted or failed run's files go to ``OUT/NET.incomplete``).

The runs' own output goes to ``OUT/reproduce.log``; the terminal shows ONE progress
display (which run, which epoch, elapsed time, an estimate of what remains) and one
line per finished run. The estimate weighs the runs by the training time their
committed reports record (``reports/NET/metrics.json``) and scales that by how fast
this machine has been so far.

At the end: ``OUT/reproduce.md`` and ``OUT/reproduce.json`` (each run's status, wall time
and the load before and after it, the total wall time, and the results table of the
folder, ``nnparity results --reports OUT``). ``--epochs N`` (and ``--train-size``,
``--test-size``) make a quick smoke run of the whole pipeline, said so in the table's
heading: its figures are not the documented ones.
"""

from __future__ import annotations

import io as _io
import os
import re
import shlex
import sys
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

from nnparity.cli.run import EXIT_INTERRUPTED, run_network, run_recipe
from nnparity.core import io
from nnparity.core.signals import interrupt_name, signals_held
from nnparity.reporting import results
from nnparity.reporting.bench import LoadWatch
from nnparity.training.networks import NETWORKS, get

DEFAULT_OUT = "runs/reproduce"
COMMITTED = Path(__file__).resolve().parents[2] / "reports"  # the committed reports: the estimate's weights
STATUS = {0: "complete", 1: "parity failed", 2: "error", 3: "diverged", 4: "collapsed", EXIT_INTERRUPTED: "interrupted"}
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
    """``run_network``'s keyword arguments of the smoke options that apply to ``net``, and
    the same as ``nnparity run`` options (an entry whose ``epochs`` is its own option, as
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
    return kwargs, " ".join(flags)


def planned_epochs(net, recipe) -> int | None:
    """The epoch lines a run of ``net`` logs: epochs x seeds x variants (None: it logs none)."""
    if not net.mnist:
        return None
    n = recipe.epochs
    if "seeds" in net.sweep:
        n *= net.seeds
    if "variants" in net.sweep:
        n *= len(net.variants)
    return n


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
    """The one progress display: ``[2/5 mlp16] epoch 37/100 | elapsed 0:12:03 | remaining ~0:41:10``.

    ``show``: None on a terminal only, False never, True always (as ``nnparity run``'s bars).
    On a terminal the line is redrawn in place every second; elsewhere it is printed when
    it changes. ``done(line)`` prints a line above it (a finished run)."""

    def __init__(self, plan: list, show, stream=None):
        self.plan = plan  # [(name, planned epoch lines or None, expected seconds or None)]
        self.stream = stream or sys.stderr
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.show = tty if show is None else bool(show)
        self.redraw = self.show and tty
        self.t0 = time.perf_counter()
        self.index, self.where, self.lines, self.run_t0 = 0, "starting", 0, self.t0
        self.finished = []  # (expected, actual seconds) of the finished runs
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
        self.index, self.where, self.lines, self.run_t0 = index, "starting", 0, time.perf_counter()
        self._draw()

    def line(self, text: str) -> None:
        """A line of the current run's log: an epoch line moves the display on."""
        m = EPOCH_LINE.match(text)
        if m:
            self.lines += 1
            self.where = " ".join(m.group("where").split())
            self._draw()

    def finish(self, seconds: float) -> None:
        self.finished.append((self.plan[self.index][2], seconds))

    def remaining(self) -> float | None:
        """Seconds still to go: the expected time of what is left (the current run's unfinished
        fraction and the runs not started), scaled by actual / expected time so far."""
        _, lines, expected = self.plan[self.index]
        if any(e is None for _, _, e in self.plan[self.index:]):
            return None
        fraction = min(1.0, self.lines / lines) if lines else 0.0
        done_expected = sum(e or 0.0 for e, _ in self.finished) + expected * fraction
        done_actual = sum(a for _, a in self.finished) + (time.perf_counter() - self.run_t0) * (fraction > 0)
        speed = done_actual / done_expected if done_expected > 0 and done_actual > 0 else 1.0
        left = expected * (1 - fraction) + sum(e for _, _, e in self.plan[self.index + 1:])
        return speed * left

    def text(self) -> str:
        name = self.plan[self.index][0]
        left = self.remaining()
        return (f"[{self.index + 1}/{len(self.plan)} {name}] {self.where} | elapsed "
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
            elif force or text.split(" | ")[0] != self._last:  # off a terminal: when the run or epoch changes
                self.stream.write(text + "\n")
            self._last = text.split(" | ")[0]
            self.stream.flush()

    def _tick(self):
        while not self._stop.wait(1.0):
            self._draw()


class _LogLines(_io.TextIOBase):
    """stdout of the runs: every line to the log file, and to the progress display."""

    def __init__(self, log, progress: Progress):
        self.log, self.progress, self._partial = log, progress, ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.log.write(s)
        lines = (self._partial + s).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.progress.line(line)
        return len(s)

    def flush(self) -> None:
        self.log.flush()


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def reproduce(out=DEFAULT_OUT, only=None, epochs=None, train_size=None, test_size=None, data_dir=None,
              progress=None, command: str = "nnparity reproduce") -> int:
    """``nnparity reproduce``: returns 0 when every run completed, 130 when interrupted, else
    the first failed run's exit status (the other runs still ran)."""
    t0 = time.perf_counter()
    names = documented_runs(only)
    out_dir = io.ensure_writable_dir(io.check_path_text(out, DEFAULT_OUT))
    smoke = {"epochs": epochs, "train_size": train_size, "test_size": test_size}
    is_smoke = any(v is not None for v in smoke.values())
    plan, runs = [], []
    for name in names:
        net = get(name)
        kwargs, flags = run_options(net, smoke)
        recipe = run_recipe(net, **kwargs)
        runs.append({"net": name, "kwargs": kwargs,
                     "command": f"nnparity run {name} --out {shlex.quote(str(out))}" + (f" {flags}" if flags else "")})
        plan.append((name, planned_epochs(net, recipe), expected_seconds(name, recipe)))
    started = time.time()
    record = {"command": command, "out": str(out), "smoke": is_smoke,
              "smoke_options": {k: v for k, v in smoke.items() if v is not None}, "started": started,
              "runs": [], "status": "incomplete"}
    stdout = sys.stdout
    status, current = 0, 0
    watch = LoadWatch()  # the load, and the CPU other processes took during each run (as nnparity bench)
    watch.read("before")
    with open(out_dir / "reproduce.log", "w", encoding="utf-8") as log, Progress(plan, progress) as bar:
        try:
            for current, run in enumerate(runs):
                i = current
                bar.start(i)
                before, t_run = load1(), time.perf_counter()
                print(f"===== {run['command']}", file=log, flush=True)
                watch.start()
                with redirect_stdout(_LogLines(log, bar)):
                    code = run_network(run["net"], out=str(out), data_dir=data_dir, progress=False,
                                       command=run["command"], **run["kwargs"])
                watch.stop(run["net"])
                seconds = time.perf_counter() - t_run
                bar.finish(seconds)
                done = {"net": run["net"], "command": run["command"], "exit": code, "status": STATUS.get(code, code),
                        "seconds": round(seconds, 1), "load_before": before, "load_after": load1(),
                        "others_cores": next((o["cores"] for o in watch.others if o["during"] == run["net"]), None),
                        "folder": str(out_dir / (run["net"] if code in (0, 4) else f"{run['net']}.incomplete"))}
                record["runs"].append(done)
                bar.done(f"{run['net']}: {done['status']} in {clock(seconds)} (load {before} -> {done['load_after']}); "
                         f"{done['folder']}", stdout)
                if code == EXIT_INTERRUPTED:  # the run wrote its files (OUT/NET.incomplete) and stopped
                    raise KeyboardInterrupt("a signal")
                if code and not status:
                    status = code
        except KeyboardInterrupt as e:
            record["interrupted"] = (f"{interrupt_name(e)} during run {current + 1} of {len(runs)}, "
                                     f"{runs[current]['net']}; the runs after it did not start")
            status = EXIT_INTERRUPTED
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
    lines = ["# nnparity reproduce", "",
             f"Made by `{record['command']}`: {len(record['runs'])} runs, total wall time "
             f"{clock(record['seconds'])} ({record['seconds']:.0f} s); status {record['status']}"
             + (f" ({record['interrupted']})" if record.get("interrupted") else "") + ". Each run's own output is in "
             "`reproduce.log`; the load is `os.getloadavg()`'s 1-minute figure before and after each run (a run's "
             "own threads count in it), beside the cores' worth of CPU other processes took while it ran "
             "(`/proc/stat`, as `nnparity bench` measures it).", ""]
    if record["load"]["under_load"]:
        lines += [f"**Warning: {record['load']['warning']}.**", ""]
    lines += ["| run | status | wall time | s | load before / after | other processes, cores | command |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['net']}` | {r['status']} | {clock(r['seconds'])} | {r['seconds']:.0f} | {r['load_before']} / "
              f"{r['load_after']} | {'n/a' if r['others_cores'] is None else r['others_cores']} | `{r['command']}` |"
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
