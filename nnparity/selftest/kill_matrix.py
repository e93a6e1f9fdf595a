"""``nnparity selftest [NET ...]``: the suite proves its power.

Every bug of the catalogue (``nnparity.selftest.bugs``) is applied in turn, by patching one
scratch function for the duration of one check, and run against

* **unit**: the target's class alone against its torch equivalent
  (``UNIT_CHECKS``: random inputs and non-uniform upstream gradients, float64);
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
is killed by every applicable unit and parity check with margin >= 10, every
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
REQUIRED_KINDS = ("unit", "parity")   # the floors; "split" and "linear" (metamorphic) are informational
CELL = 6              # characters per matrix cell ("x2e10" and a space)
DTYPE = "float64"     # the floors are proven in float64, the dtype of the tightest tolerance


# --- unit checks: one scratch class alone against torch -------------------------------

def _unit_linear(dtype=DTYPE) -> list:
    import torch

    from scratch.layers import Linear

    from nnparity.diagnosis.layercheck import check_layer

    out = []
    for n_in, n_out in ((7, 5), (6, 6)):  # a square weight too: where a missing transpose hides
        layer = Linear(n_in, n_out, dtype=np.dtype(dtype))
        rng = np.random.default_rng(n_in)
        for _, p in layer.named_parameters():
            p.data[...] = rng.standard_normal(p.shape)
        out += check_layer(layer, torch.nn.Linear(n_in, n_out), (8, n_in), dtype=dtype,
                           raise_on_failure=False, seed=n_out)
    return out


def _unit_activation(cls_name: str):
    def run(dtype=DTYPE) -> list:
        import torch

        import scratch.layers as layers

        from nnparity.diagnosis.layercheck import check_layer

        return check_layer(getattr(layers, cls_name)(), getattr(torch.nn, cls_name)(), (8, 9),
                           dtype=dtype, raise_on_failure=False)
    return run


def _unit_cross_entropy(dtype=DTYPE) -> list:
    import torch

    from scratch.losses import CrossEntropyLoss

    from nnparity.diagnosis.layercheck import check_loss

    target = np.array([3, 0, 9, 9, 1, 4, 7, 2], dtype=np.int64)
    return [c for red in ("mean", "sum")
            for c in check_loss(CrossEntropyLoss(red), torch.nn.CrossEntropyLoss(reduction=red), (8, 10), target,
                                dtype=dtype, raise_on_failure=False)]


def _unit_sgd(dtype=DTYPE) -> list:
    import torch

    from scratch.module import Parameter
    from scratch.optim import SGD

    from nnparity.core.parity import compare, tolerance_for

    tol = tolerance_for(dtype)
    out = []
    for momentum in (0.0, 0.9):
        rng = np.random.default_rng(5)
        w0 = rng.standard_normal((3, 4)).astype(dtype)
        p, pt = Parameter(w0.copy()), torch.nn.Parameter(torch.from_numpy(w0.copy()))
        opt, opt_t = SGD([("w", p)], lr=0.1, momentum=momentum), torch.optim.SGD([pt], lr=0.1, momentum=momentum)
        for step in range(1, 4):
            g = rng.standard_normal((3, 4)).astype(dtype)
            p.grad[...] = g
            pt.grad = torch.from_numpy(g.copy())
            opt.step()
            opt_t.step()
            out.append(compare("param/w", p.data, pt.detach().numpy(), tol, step=step))
            if momentum:
                out.append(compare("state/w.momentum_buffer", opt.state_dict()["w.momentum_buffer"],
                                   opt_t.state[pt]["momentum_buffer"].numpy(), tol, step=step))
    return out


def _named(comparisons, case: str) -> list:
    """Prefix each comparison's name with the case it belongs to (``ties: din``), so a kill
    says which input made it."""
    return [replace(c, name=f"{case}: {c.name}") for c in comparisons]


def _randomised(layer, seed: int):
    """The layer with every parameter drawn standard normal (scratch layers start at zero or one)."""
    rng = np.random.default_rng(seed)
    for _, p in layer.named_parameters():
        p.data[...] = rng.standard_normal(p.shape)
    return layer


def _unit_conv2d(dtype=DTYPE) -> list:
    import torch

    from scratch.conv import Conv2d

    from nnparity.diagnosis.layercheck import check_layer

    out = []
    # the net's case (3x3, stride 1, no padding, C_in != C_out) and a square one (C_in = C_out:
    # where swapped channel axes keep W's shape) with stride and padding
    for cin, cout, stride, pad in ((3, 5, 1, 0), (4, 4, 2, 1)):
        layer = _randomised(Conv2d(cin, cout, 3, stride=stride, padding=pad, dtype=np.dtype(dtype)), cin)
        out += _named(check_layer(layer, torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=pad),
                                  (2, cin, 7, 8), dtype=dtype, raise_on_failure=False, seed=cout),
                      f"{cin}->{cout} stride {stride} padding {pad}")
    return out


def _unit_batchnorm(dtype=DTYPE) -> list:
    import torch

    from scratch.norm import BatchNorm2d

    from nnparity.diagnosis.layercheck import check_layer

    out = []
    for train in (True, False):
        layer = _randomised(BatchNorm2d(5, dtype=np.dtype(dtype)), 3)
        rng = np.random.default_rng(4)
        layer.running_mean[...] = rng.standard_normal(5)
        layer.running_var[...] = rng.uniform(0.5, 2.0, 5)
        # M = 4*3*3 = 36 values per channel: the biased and unbiased variances differ by 1/35;
        # mean and scale far from 0 and 1
        x = rng.standard_normal((4, 5, 3, 3)) * 3 + 1.5
        out += _named(check_layer(layer, torch.nn.BatchNorm2d(5), x=x, dtype=dtype, train=train,
                                  raise_on_failure=False, seed=5), "train" if train else "eval")
    return out


def _unit_maxpool(dtype=DTYPE) -> list:
    import torch

    from scratch.pool import MaxPool2d

    from nnparity.diagnosis.layercheck import check_layer

    rng = np.random.default_rng(6)
    # random values (no ties; odd sizes: floor mode drops a row and a column), then values in {0, 1, 2}
    # on purpose: most windows hold tied maxima, zeros (as after a ReLU) included
    cases = (("random", rng.standard_normal((2, 3, 9, 11))), ("ties", rng.integers(0, 3, (2, 3, 8, 8))))
    return [c for case, x in cases
            for c in _named(check_layer(MaxPool2d(2), torch.nn.MaxPool2d(2), x=x, dtype=dtype,
                                        raise_on_failure=False, seed=7), case)]


def _unit_dropout(dtype=DTYPE) -> list:
    import torch

    from reference.layers import MaskedDropout
    from scratch.dropout import Dropout

    from nnparity.diagnosis.layercheck import check_layer

    out = []
    for p in (0.3, 0.01):  # the net's p too
        layer = Dropout(p, np.random.default_rng(8))

        def torch_dropout(xt, layer=layer):  # torch's dropout arithmetic on the scratch layer's mask
            ref = MaskedDropout(layer.p)
            ref.mask = torch.from_numpy(layer.mask)
            return ref(xt)

        out += _named(check_layer(layer, torch_dropout, (16, 6, 5, 5), dtype=dtype, train=True,
                                  raise_on_failure=False, seed=9), f"p {p:g}")
    return out


# Keyed by the target class's "module.Class"; each takes the dtype. A new layer's bugs need
# its entry here.
UNIT_CHECKS = {
    "scratch.layers.Linear": _unit_linear,
    "scratch.layers.ReLU": _unit_activation("ReLU"),
    "scratch.layers.Sigmoid": _unit_activation("Sigmoid"),
    "scratch.losses.CrossEntropyLoss": _unit_cross_entropy,
    "scratch.optim.SGD": _unit_sgd,
    "scratch.conv.Conv2d": _unit_conv2d,
    "scratch.norm.BatchNorm2d": _unit_batchnorm,
    "scratch.pool.MaxPool2d": _unit_maxpool,
    "scratch.dropout.Dropout": _unit_dropout,
}


def unit_check_for(bug):
    cls = bug.target_class
    return UNIT_CHECKS.get(f"{cls.__module__}.{cls.__qualname__}") if cls is not None else None


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
        lines += ["", wrap(f"FLOORS - unit and step-parity checks against the torch reference: each must kill "
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
            lines.append(wrap(f"  {bug.name}: {bug.description} [{bug.target}]", "      "))
        if self.pending:
            lines += ["", wrap("catalogue entries whose target is not in this checkout yet: "
                               + ", ".join(self.pending))]
        lines.append("")
        small = self.smallest_kill()
        problems = self.problems()
        if not problems:
            lines.append(wrap(f"PASS: every one of the {len(self.bugs)} bugs is killed by every applicable unit "
                              f"and parity check (the floors) with margin >= {FLOOR:g}"
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
                          "issue_item": b.issue_item,
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

    unit = Check("unit", "unit", "unit: the bug's class alone against its torch equivalent (random inputs and "
                                 "upstream gradients)")
    report.checks.append(unit)
    report.baseline[unit.key] = Cell("pass")
    unit_baseline = {}
    for bug in catalogue:
        fn = unit_check_for(bug)
        if fn is None:
            report.cells[bug.name][unit.key] = Cell("n/a")
            continue
        if fn not in unit_baseline:
            try:
                unit_baseline[fn] = _cell(fn(dtype), False)
            except Exception as e:
                unit_baseline[fn] = _error(e)
            if unit_baseline[fn].status != "pass":
                report.baseline[unit.key] = unit_baseline[fn]
        try:
            with bug.applied():
                report.cells[bug.name][unit.key] = _cell(fn(dtype), True)
        except Exception as e:
            report.cells[bug.name][unit.key] = _error(e)
        cells.update(1)

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
        for key, label, recipe in columns:
            check = Check(key, "parity", label, name, recipe)
            report.checks.append(check)
            report.baseline[key] = _parity_cell(name, recipe, ds, steps, seed, dtype)
            scratch_side, _ = make_sides(net, recipe, dtype, seed)
            objects = _objects(scratch_side)
            x0, y0 = next(iter(net.data.first_batches(net, recipe, raw, dtype, seed, 1, ds=ds)))
            for bug in catalogue:
                applicable = (_applies(bug, objects, scratch_side.model, recipe)
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
