"""``nnparity selftest [NET ...]``: the suite proves its power.

Every bug of the catalogue (``nnparity.selftest.bugs``) is applied in turn, by patching one
scratch function for the duration of one check, and run against

* **unit**: the battery (``nnparity.diagnosis.battery``) on the bug's layer kind of the
  table (``nnparity.diagnosis.layercases``), in every documented network's configurations and
  the kind's sweep: autograd in float64 and float32, finite differences, two accumulating
  backward calls, non-finite routing, float32 against float64 on long reductions, train and
  eval, initialisation statistics;
* **battery**: per network, the battery section of ``nnparity check NET`` (the same battery on
  the kinds the network uses, in its configurations and the sweep);
* **parity**: each network's step parity (float64, a few steps, small batches),
  on the documented recipe and, where a bug needs it to be reachable, on a
  variant (momentum 0.9, a mean-reduced loss);
* **split** and **linear**: the metamorphic checks of ``nnparity.diagnosis.metamorphic``
  (informational: they need no reference, and they miss most bugs, which is
  the point of having a reference).

A cell's *detection margin* is the margin (``nnparity.core.parity``: error over
tolerance) of the failing comparison the check reports, its first divergence:
roughly the factor by which the tolerance could be loosened before the check
stopped reporting the bug there. (``worst``, the largest margin of the check,
is kept too.) The floors: every available bug
is killed by every applicable unit, battery and parity check with margin >= 10, every
bug has at least one such check, and every check passes on the correct code.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field, replace

import numpy as np

from nnparity.selftest import bugs as bugmod
from nnparity.diagnosis import metamorphic
from nnparity.training.networks import NETWORKS, first_batches, get, make_sides, prepare, run_parity, stream
from nnparity.core.parity import TOLERANCES, Comparison
from nnparity.core.threads import blas_threads

FLOOR = 10.0          # required detection margin
WIDTH = 100           # the printed matrix fits this many columns
REQUIRED_KINDS = ("unit", "parity", "battery")   # the floors; "split" and "linear" (metamorphic) are informational
CELL = 6              # characters per matrix cell ("x2e10" and a space)
DTYPE = "float64"     # the floors are proven in float64, the dtype of the tightest tolerance


# --- unit checks: the battery on the bug's layer kind ----------------------------------

@dataclass(frozen=True)
class BatteryCheck:
    """The battery (``nnparity.diagnosis.battery``) on the given kinds of the layer-case table: every
    documented network's configurations of them and their sweep (``net=None``: the unit column), or
    one network's (``net``: its ``nnparity check`` battery section: the same comparisons, taken from
    the whole run by ``BatteryReport.subset``). Called with the selftest's dtype (the battery runs
    float64 and float32 itself) and the bug applied, if any (``memo`` keeps each kind's run per bug);
    returns the comparisons."""

    kinds: tuple
    net: str | None = None
    memo: dict | None = field(default=None, compare=False, hash=False)

    def __call__(self, dtype=DTYPE, bug=None) -> list:
        from nnparity.diagnosis.battery import run_battery
        from nnparity.diagnosis.layercases import network_configs

        out = []
        for kind in self.kinds:
            key = (kind, bug.name if bug is not None else None)
            full = self.memo.get(key) if self.memo is not None else None
            if full is None:
                full = run_battery(kind)
                if self.memo is not None:
                    self.memo[key] = full
            out += (full if self.net is None else full.subset(network_configs(self.net)[kind])).comparisons
        return out


def bug_kinds(bug) -> tuple:
    """The table kinds a bug's slip is in: its own ``kinds``, else those of its target class."""
    from nnparity.diagnosis.layercases import cases_of_class

    if bug.kinds:
        return tuple(bug.kinds)
    cls = bug.target_class
    return tuple(c.kind for c in cases_of_class(cls)) if cls is not None else ()


def unit_check_for(bug, memo=None):
    """The unit column's check of a bug: the battery on its kinds (None if it has none)."""
    kinds = bug_kinds(bug)
    return BatteryCheck(kinds, memo=memo) if kinds else None


def network_kinds(name: str) -> tuple:
    from nnparity.diagnosis.layercases import network_configs

    return tuple(network_configs(name))


# --- checks and cells --------------------------------------------------------------------

@dataclass
class Check:
    """One column of the kill matrix."""

    key: str
    kind: str                  # unit, parity, split, linear
    label: str
    net: str | None = None
    recipe: object = None

    def to_dict(self) -> dict:
        return {"key": self.key, "kind": self.kind, "label": self.label, "net": self.net,
                "required": self.kind in REQUIRED_KINDS}


@dataclass
class Cell:
    """What one check made of one bug (or of the correct code)."""

    status: str                # killed, missed, pass, fail (correct code failing), n/a, error
    margin: float = 0.0        # detection margin: the first failing comparison's (else the worst)
    first: str = ""            # the first failing comparison: "step 1 grad/V.bias"
    worst: float = 0.0         # the largest margin of the check
    detail: str = ""

    def to_dict(self) -> dict:
        return {"status": self.status, "margin": _num(self.margin), "first": self.first,
                "worst": _num(self.worst), "detail": self.detail}


def _num(v):
    return v if math.isfinite(v) else str(v)


def _cell(comparisons, bug_applied: bool) -> Cell:
    # A bug is killed only by a real mismatch: a degenerate comparison (zero on both sides)
    # proves nothing. On the correct code it is still flagged (a check that cannot see).
    failing = [c for c in comparisons if (c.mismatch if bug_applied else not c.passed)]
    worst = max((c.margin for c in comparisons), default=0.0)
    if not failing:
        return Cell("missed" if bug_applied else "pass", worst, worst=worst)
    f = failing[0]
    where = f"step {f.step} {f.name}" if f.step is not None else f.name
    return Cell("killed" if bug_applied else "fail", f.margin, where, worst, f.problem or "")


def _error(e: Exception) -> Cell:
    return Cell("error", math.nan, detail=f"{type(e).__name__}: {e}".splitlines()[0][:200])


@dataclass
class SelfTest:
    """The kill matrix: ``cells[bug name][check key]``, with ``baseline`` (the correct code)."""

    nets: list
    steps: int
    batch_size: int
    dtype: str = DTYPE
    checks: list = field(default_factory=list)
    bugs: list = field(default_factory=list)
    cells: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)
    pending: list = field(default_factory=list)
    seconds: float = 0.0

    # -- floors --
    def required(self, check: Check) -> bool:
        """A floor (must kill every bug it applies to), not an informational column."""
        return check.kind in REQUIRED_KINDS

    def problems(self) -> list[str]:
        out = []
        for key, cell in self.baseline.items():
            if cell.status not in ("pass", "n/a"):
                out.append(f"the correct code fails check {key}: {cell.status} {cell.first} {cell.detail}".rstrip())
        for bug in self.bugs:
            row = self.cells[bug.name]
            required = [c for c in self.checks if self.required(c) and row[c.key].status != "n/a"]
            if not required:
                out.append(f"{bug.name}: no unit or parity check applies")
            for c in required:
                cell = row[c.key]
                if cell.status != "killed":
                    out.append(f"{bug.name}: {cell.status} by {c.key} (margin {cell.margin:.3g}) "
                               f"{cell.detail}".rstrip())
                elif not cell.margin >= FLOOR:
                    out.append(f"{bug.name}: killed by {c.key} with margin {cell.margin:.3g} < {FLOOR:g}")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    def smallest_kill(self):
        best = None
        for bug in self.bugs:
            for c in self.checks:
                cell = self.cells[bug.name][c.key]
                if self.required(c) and cell.status == "killed" and (best is None or cell.margin < best[0]):
                    best = (cell.margin, bug.name, c.key)
        return best

    # -- output --
    def numbered(self) -> list:
        """``(number, check)``: the floors (unit, parity) first, then the informational checks."""
        ordered = [c for c in self.checks if self.required(c)] + [c for c in self.checks if not self.required(c)]
        return list(enumerate(ordered, 1))

    def render(self, width: int = WIDTH) -> str:
        """The kill matrix in two blocks, floors and informational, each cut into as many
        column groups as fit in ``width`` characters (``--json`` has every cell)."""
        def wrap(text, indent=""):
            return textwrap.fill(text, width, subsequent_indent=indent)

        numbered = self.numbered()
        lines = [wrap(f"selftest of {', '.join(self.nets)}: {len(self.bugs)} injected bugs x {len(self.checks)} "
                      f"checks ({self.dtype}, {self.steps} parity steps, batches of at most {self.batch_size}; "
                      f"{self.seconds:.1f} s)"), "",
                 wrap("cells: x<margin> = killed, with detection margin = error / tolerance of the first failing "
                      "comparison the check reports (x2e10: 2e10 times the tolerance); miss = the check applies "
                      "to the bug but did not see it; '.' = passes on the correct code, as it should; '-' = not "
                      "applicable (the check's network does not run the bug's code); FAIL or ERROR = the check "
                      "itself failed or crashed. Bugs no check of a block applies to are left out of it.", "  ")]
        floors = [(n, c) for n, c in numbered if self.required(c)]
        info = [(n, c) for n, c in numbered if not self.required(c)]
        lines += ["", wrap(f"FLOORS - unit, battery and step-parity checks against the torch reference: each must kill "
                           f"every bug it applies to with margin >= {FLOOR:g}; a miss here fails the selftest.")]
        lines += self._block(floors, width)
        if info:
            lines += ["", wrap("INFORMATIONAL - metamorphic checks, which need no reference: a batch split in "
                               "halves gives the whole batch's gradient; backward is linear in its upstream "
                               "gradient. Not floors: most derivation bugs keep these properties (a transposed "
                               "weight gradient is still linear), so a miss here is expected and fails "
                               "nothing; it shows what the reference adds.")]
            lines += self._block(info, width)
        lines += ["", "bugs (each replaces the function in brackets, for the duration of one check):"]
        for bug in self.bugs:
            unseen = f" (step parity cannot see it: {bug.unseen_by_parity})" if bug.unseen_by_parity else ""
            lines.append(wrap(f"  {bug.name}: {bug.description} [{bug.target}]{unseen}", "      "))
        if self.pending:
            lines += ["", wrap("catalogue entries whose target is not in this checkout yet: "
                               + ", ".join(self.pending))]
        lines.append("")
        small = self.smallest_kill()
        problems = self.problems()
        if not problems:
            lines.append(wrap(f"PASS: every one of the {len(self.bugs)} bugs is killed by every applicable unit, "
                              f"battery and parity check (the floors) with margin >= {FLOOR:g}"
                              + (f" (smallest: {small[0]:.3g}, {small[1]} by {small[2]})" if small else "")
                              + "; every check passes on the correct code."))
        else:
            lines.append("FAIL:")
            lines += [wrap(f"  {p}", "    ") for p in problems]
        return "\n".join(lines)

    def _block(self, numbered: list, width: int) -> list:
        """The legend of one block's checks, then its matrix cut into column groups."""
        lines = [textwrap.fill(f"{f'[{n}]':>6} {c.label}", width, subsequent_indent=" " * 7) for n, c in numbered]
        name_w = max([len(b.name) for b in self.bugs] + [len("(correct code)")]) + 1
        per = max(1, (width - name_w) // CELL)
        for i in range(0, len(numbered), per):
            group = numbered[i:i + per]
            rows = [(b.name, self.cells[b.name]) for b in self.bugs
                    if any(self.cells[b.name][c.key].status != "n/a" for _, c in group)]
            if not rows:
                continue
            lines += ["", f"{'bug':<{name_w}}" + "".join(f"{f'[{n}]':>{CELL}}" for n, _ in group),
                      f"{'(correct code)':<{name_w}}"
                      + "".join(f"{self._fmt(self.baseline[c.key]):>{CELL}}" for _, c in group)]
            lines += [f"{name:<{name_w}}" + "".join(f"{self._fmt(row[c.key]):>{CELL}}" for _, c in group)
                      for name, row in rows]
        return lines

    @staticmethod
    def _fmt(cell: Cell) -> str:
        if cell.status == "n/a":
            return "-"
        if cell.status == "pass":
            return "."
        if cell.status == "error":
            return "ERROR"
        if cell.status == "missed":
            return "miss"
        if cell.status == "fail":
            return "FAIL"
        return "x inf" if math.isinf(cell.margin) else f"x{cell.margin:.0e}".replace("e+0", "e").replace("e+", "e")

    def to_dict(self) -> dict:
        return {"nets": self.nets, "steps": self.steps, "batch_size": self.batch_size, "dtype": self.dtype,
                "floor": FLOOR, "ok": self.ok, "problems": self.problems(), "seconds": self.seconds,
                "checks": [c.to_dict() for c in self.checks],
                "baseline": {k: v.to_dict() for k, v in self.baseline.items()},
                "bugs": [{"name": b.name, "description": b.description, "target": b.target,
                          "issue_item": b.issue_item, "unseen_by_parity": b.unseen_by_parity,
                          "cells": {k: v.to_dict() for k, v in self.cells[b.name].items()}} for b in self.bugs],
                "pending": self.pending}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


# --- running it ------------------------------------------------------------------------

def _objects(scratch_side) -> list:
    return [m for _, m in scratch_side.model.named_modules()] + [scratch_side.loss_fn, scratch_side.optimizer]


def _applies(bug, objects, model, recipe) -> bool:
    return (bug.uses_target(*objects) and (bug.applies is None or bug.applies(model))
            and (bug.requires is None or bug.requires.met(recipe)))


def _reached(bug, net, recipe, dtype, seed, x, y) -> bool:
    """Whether one training step of the scratch side calls the bug's target at all."""
    scratch_side, _ = make_sides(net, recipe, dtype, seed)
    with bug.counted() as calls:
        scratch_side.step(x, y)
    return bool(calls)


def _small(recipe, steps: int, batch_size: int):
    bs = min(recipe.batch_size, batch_size)
    return recipe.replace(batch_size=bs, train_size=bs * steps, test_size=bs)


class _FirstFailure(Exception):
    """Raised by ``_StopAtFailure`` to end a parity run at its first failing step."""


class _StopAtFailure:
    """``check_steps`` observer: a bug is seen once a step fails; no need to run on."""

    trace = None

    def before_step(self, *args):
        pass

    def after_step(self, i, x, y, s, t, trace):
        self.trace = trace
        if any(c.mismatch for c in trace.steps[-1]):
            raise _FirstFailure


def _parity_cell(name, recipe, ds, steps, seed, dtype, bug=None) -> Cell:
    stop = _StopAtFailure()
    try:
        if bug is None:
            trace = run_parity(name, steps, dtype, seed, recipe=recipe, ds=ds)
        else:
            with bug.applied():
                trace = run_parity(name, steps, dtype, seed, recipe=recipe, ds=ds, observer=stop)
    except _FirstFailure:
        trace = stop.trace
    except Exception as e:  # a crash is reported, never counted as a kill
        return _error(e)
    return _cell(trace.comparisons, bug is not None)


def _metamorphic_cell(kind, net, recipe, x, y, seed, dtype, bug=None) -> Cell:
    tol = TOLERANCES[dtype]

    def run() -> list[Comparison]:
        model = net.scratch.build(recipe, stream(seed, "init"), np.dtype(dtype))
        if kind == "split":
            return metamorphic.batch_split(model, net.scratch.loss(recipe), x, y, tol)
        return metamorphic.linearity(model, x, tol, seed)

    try:
        if bug is None:
            comps = run()
        else:
            with bug.applied():
                comps = run()
    except Exception as e:
        return _error(e)
    return _cell(comps, bug is not None)


def run_selftest(nets=None, *, steps: int = 2, batch_size: int = 16, seed: int = 0, raw=None,
                 bugs=None, dtype: str = DTYPE, progress: bool | None = False) -> SelfTest:
    """Run every available bug against every check of the given networks, in ``dtype``
    (the floors are set for float64; float32 shows what the float32 tolerance still sees).
    ``progress``: a bar over the cells run (``nnparity.core.progress``; None: on a terminal only)."""
    # One BLAS thread throughout, as check_steps already does for the parity steps: the
    # scratch-only cells (metamorphic checks, reachability steps) are small products that
    # NumPy's default BLAS threads slow down on a busy 2-core machine (measured with two other
    # training runs going: a cnn18k linearity cell 1.5 s with the default threads, 0.04 s with
    # one, whether or not torch had just run; `selftest cnn18k` 70 s -> 9 s). See nnparity/core/threads.py.
    with blas_threads(1):
        return _run_selftest(nets, steps=steps, batch_size=batch_size, seed=seed, raw=raw, bugs=bugs,
                             dtype=dtype, progress=progress)


def _battery_column(report, check, catalogue, check_of, cells) -> None:
    """One battery column: ``check_of(bug)`` (a ``BatteryCheck`` or None: not applicable) on the
    correct code once per distinct check (the baseline), then with each bug applied."""
    report.checks.append(check)
    report.baseline[check.key] = Cell("pass")
    baseline = {}
    for bug in catalogue:
        fn = check_of(bug)
        if fn is None:
            report.cells[bug.name][check.key] = Cell("n/a")
            continue
        if fn not in baseline:
            try:
                baseline[fn] = _cell(fn(report.dtype), False)
            except Exception as e:
                baseline[fn] = _error(e)
            if baseline[fn].status != "pass":
                report.baseline[check.key] = baseline[fn]
        try:
            with bug.applied():
                report.cells[bug.name][check.key] = _cell(fn(report.dtype, bug), True)
        except Exception as e:
            report.cells[bug.name][check.key] = _error(e)
        cells.update(1)


def _run_selftest(nets, *, steps, batch_size, seed, raw, bugs, dtype, progress) -> SelfTest:
    import time

    from nnparity.core import data as mnist
    from nnparity.core.progress import bar

    t0 = time.perf_counter()
    nets = list(nets or NETWORKS)
    catalogue = list(bugs if bugs is not None else bugmod.catalogue())
    dtype = np.dtype(dtype).name
    report = SelfTest(nets, steps, batch_size, dtype, bugs=catalogue,
                      pending=[b.name for b in bugmod.CATALOGUE if not b.available()] if bugs is None else [])
    report.cells = {b.name: {} for b in catalogue}
    raw = raw or mnist.load_mnist()
    # the number of columns is known only as each network's variants are built: the bar counts cells
    cells = bar(total=None, desc="selftest", progress=progress, unit="cell")

    unit = Check("unit", "unit", "unit: the battery on the bug's layer kind, every documented configuration and "
                                 "the kind's sweep (nnparity.diagnosis.battery)")
    memo = {}   # each kind's battery run, per bug: the network columns take their configurations from it
    _battery_column(report, unit, catalogue, lambda bug: unit_check_for(bug, memo), cells)

    for name in nets:
        net = get(name)
        documented = _small(net.recipe, steps, batch_size)
        ds = prepare(net, documented, raw, dtype, seed)
        x, y = metamorphic.even_batch(*next(iter(first_batches(ds, documented, seed, 1))))
        x = metamorphic.untied(x, seed)  # no exact ties for two batch sizes to round apart
        # the parity columns: the documented recipe, plus a variant per requirement it does not meet
        columns = [(name, f"{name} step parity, documented recipe", documented)]
        for req in bugmod.REQUIREMENTS:
            if req.met(documented) or not any(b.requires is req for b in catalogue):
                continue
            variant = req.apply(documented)
            try:
                make_sides(net, variant, dtype, seed)
            except Exception:  # the network cannot take this variant
                continue
            columns.append((f"{name}+{req.name}", f"{name} step parity, variant: {req.label}", variant))
        kinds = network_kinds(name)
        battery = Check(f"{name}:battery", "battery", f"{name}: nnparity check's battery section (the battery on "
                                                      f"the kinds {name} uses, its configurations and the sweep)",
                        name, documented)
        _battery_column(report, battery, catalogue,
                        lambda bug: (BatteryCheck(tuple(k for k in bug_kinds(bug) if k in kinds), name, memo)
                                     if set(bug_kinds(bug)) & set(kinds) else None), cells)
        for key, label, recipe in columns:
            check = Check(key, "parity", label, name, recipe)
            report.checks.append(check)
            report.baseline[key] = _parity_cell(name, recipe, ds, steps, seed, dtype)
            scratch_side, _ = make_sides(net, recipe, dtype, seed)
            objects = _objects(scratch_side)
            x0, y0 = next(iter(net.data.first_batches(net, recipe, raw, dtype, seed, 1, ds=ds)))
            for bug in catalogue:
                applicable = (not bug.unseen_by_parity and _applies(bug, objects, scratch_side.model, recipe)
                              and _reached(bug, net, recipe, dtype, seed, x0, y0))
                report.cells[bug.name][key] = (_parity_cell(name, recipe, ds, steps, seed, dtype, bug)
                                               if applicable else Cell("n/a"))
                cells.set_description(f"selftest {key}", refresh=False)
                cells.update(1)
        if not net.data.splittable:  # e.g. toy221's one hand-worked sample: no batch to split
            continue
        for kind, label in (("split", "batch split: whole-batch gradients = halves' gradients combined"),
                            ("linear", "linearity: backward(a g1 + b g2) = a backward(g1) + b backward(g2)")):
            key = f"{name}:{kind}"
            check = Check(key, kind, f"{name} {label}", name, documented)
            report.checks.append(check)
            report.baseline[key] = _metamorphic_cell(kind, net, documented, x, y, seed, dtype)
            model = net.scratch.build(documented, stream(seed, "init"), np.dtype(dtype))
            objects = [m for _, m in model.named_modules()]
            if kind == "split":
                objects.append(net.scratch.loss(documented))
            for bug in catalogue:
                recipe = documented
                if bug.requires is not None and not bug.requires.met(recipe):
                    recipe = bug.requires.apply(recipe)
                applicable = bug.uses_target(*objects) and (bug.applies is None or bug.applies(model))
                report.cells[bug.name][key] = (_metamorphic_cell(kind, net, recipe, x, y, seed, dtype, bug)
                                               if applicable else Cell("n/a"))
                cells.set_description(f"selftest {key}", refresh=False)
                cells.update(1)
    cells.close()
    report.seconds = time.perf_counter() - t0
    return report


def kill_rates(report: SelfTest) -> dict:
    """Which bugs of the catalogue each way of checking kills, from one kill matrix:

    * ``suite``: the test suite's (``parity_tests/test_selftest.py``, ``test_bugs.py``): any floor
      column, the unit column (the battery on the bug's kind), every network's battery column and
      every step-parity column, variants included;
    * ``check``: ``nnparity check NET`` over every documented network: the documented recipe's step
      parity or NET's battery section (what the command runs).
    """
    def killed(bug, keys):
        return any(report.cells[bug.name][k].status == "killed" for k in keys if k in report.cells[bug.name])

    floors = [c.key for c in report.checks if report.required(c)]
    check_cols = [k for net in report.nets for k in (net, f"{net}:battery")]
    suite = [b.name for b in report.bugs if killed(b, floors)]
    check = [b.name for b in report.bugs if killed(b, check_cols)]
    return {"bugs": [b.name for b in report.bugs], "suite": suite, "check": check,
            "only_suite": [b for b in suite if b not in check], "only_check": [b for b in check if b not in suite]}
