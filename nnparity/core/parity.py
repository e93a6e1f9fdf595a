"""The one parity helper: compare named tensors, trace a run step by step, and
fail with a message that says where and by how much.

A value ``a`` (scratch) passes against ``b`` (reference) when every element has
``|a - b| <= atol + rtol * |b|``: the semantics of ``torch.testing.assert_close``,
with one (atol, rtol) pair per dtype. The *margin* of a comparison is the
largest ``|a - b| / (atol + rtol * |b|)`` over its elements: <= 1 passes, and a
failing margin says how many times over tolerance the worst element is.

A gradient comparison is *degenerate* when both sides are zero to within
``atol`` everywhere: it would pass whatever the backward computed, so it proves
nothing. It is therefore neither a pass nor a mismatch but a status of its own
(``Comparison.status``: ``pass``, ``degenerate`` or ``mismatch``), unless the
network declares that gradient zero by construction (then it is compared with
zero and passes). A degenerate comparison is never called a bug: it is never the
first divergence of a trace and never makes a layer a culprit
(``nnparity.diagnosis.localize``); a check made of degenerate comparisons is *inconclusive*.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np

from nnparity.core.threads import blas_threads

QUANTITIES = OrderedDict(
    out="forward activation",
    loss="loss",
    dout="upstream gradient",
    din="input gradient",
    grad="parameter gradient",
    param="updated parameter",
    state="optimizer state",
    buffer="buffer",
)


def quantity(key: str) -> str:
    """What a record key holds, in words: ``grad/U.weight`` -> ``parameter gradient``."""
    prefix = key.split("/", 1)[0]
    if prefix == "buffer" and any(s in key for s in ("running_", "num_batches_tracked")):
        return "BatchNorm buffer"
    return QUANTITIES.get(prefix, prefix)


def gradient_notes(model) -> dict:
    """``dout/<layer>`` is also the input gradient of the next layer: say so, so that a
    failure at ``dout/fc`` reads "the input gradient of layer 'relu' (ReLU)"."""
    layers = list(getattr(model, "_modules", {}).items())
    return {f"dout/{a}": f"dL/d(out/{a}) = the input gradient of layer {b!r} ({type(layer).__name__})"
            for (a, _), (b, layer) in zip(layers, layers[1:])}


def draws_random_mask(module) -> bool:
    """Whether a module draws a *random* mask in training mode (dropout).

    ``draws_mask = True`` means the module's ``mask`` is handed to the reference during
    step parity; for ReLU and max pooling that mask is a decision the input makes (it
    also names the kink: ``kink_attrs``), not a random draw, so it does not make a
    network random.
    """
    return bool(getattr(module, "draws_mask", False)) and "mask" not in (getattr(module, "kink_attrs", ()) or ())


@dataclass(frozen=True)
class Tolerance:
    """``|a - b| <= atol + rtol * |b|`` elementwise."""

    atol: float
    rtol: float


# Set from the measured noise floor: see TOLERANCES.md (``nnparity check NET
# --noise-floor`` remeasures it). float64: scratch and torch differ only by summation order
# (~1e-16 relative per op). float32: rounding (~6e-8 relative per op) amplified
# by long dot products and 50 steps of training.
TOLERANCES = {
    "float64": Tolerance(atol=1e-10, rtol=1e-9),
    "float32": Tolerance(atol=1e-4, rtol=1e-3),
}

GRADIENT_QUANTITIES = ("parameter gradient", "upstream gradient", "input gradient")


def tolerance_for(dtype) -> Tolerance:
    name = np.dtype(dtype).name
    if name not in TOLERANCES:
        raise ValueError(f"no parity tolerance for dtype {name!r}; use float32 or float64")
    return TOLERANCES[name]


@dataclass
class Comparison:
    """One tensor compared at one step."""

    name: str
    quantity: str
    shape: tuple
    max_abs: float                 # max |a - b|
    max_rel: float                 # max |a - b| / |b| over elements with b != 0
    index: tuple                   # the worst element (largest margin)
    scratch: float                 # scratch value there
    reference: float               # reference value there
    margin: float                  # max |a - b| / (atol + rtol |b|); <= 1 passes
    tol: Tolerance
    step: int | None = None
    degenerate: bool = False       # both sides ~0 (a vacuous gradient comparison)
    problem: str | None = None     # shape/dtype/NaN mismatch, found before values
    allowed_zero: bool = False     # declared zero by construction
    note: str | None = None        # what the tensor is, in words (dout/fc: "the input gradient of relu")
    overflow: str | None = None    # non-finite on both sides, differently (inf vs NaN): both overflowed
    pattern: str | None = None     # the exact slip the difference is, in words (``nnparity.diagnosis.patterns``)

    @property
    def mismatch(self) -> bool:
        """The sides disagree: a shape, dtype or non-finite problem, or a margin over 1 (not
        where both sides overflowed: ``overflow``)."""
        return self.overflow is None and (self.problem is not None or self.margin > 1)

    @property
    def inconclusive(self) -> bool:
        """Degenerate and not declared zero (both sides agree the gradient is ~0), or
        overflowed on both sides (inf on one, NaN on the other, or non-finite downstream of
        such a tensor): it proves nothing about the code that computed it (not a mismatch,
        not a pass)."""
        return self.overflow is not None or (not self.mismatch and self.degenerate and not self.allowed_zero)

    @property
    def status(self) -> str:
        """``mismatch``, ``degenerate`` (inconclusive) or ``pass``."""
        return "mismatch" if self.mismatch else "degenerate" if self.inconclusive else "pass"

    @property
    def passed(self) -> bool:
        """Agrees within tolerance AND proves something (a degenerate comparison does not pass)."""
        return self.status == "pass"

    def describe(self, net: str | None = None, dtype: str | None = None) -> str:
        where = " ".join(s for s in (net, dtype) if s)
        where = f"{where} " if where else ""
        step = f"step {self.step}: " if self.step is not None else ""
        head = f"{where}{step}{self.name} ({self.quantity}{'; ' + self.note if self.note else ''})"
        pattern = f"; PATTERN: {self.pattern}" if self.pattern else ""
        if self.problem:
            return f"{head}: {self.problem}" + (f"; BOTH SIDES OVERFLOWED, {self.overflow}: the comparison proves "
                                               "nothing" if self.overflow else "") + pattern
        idx = ", ".join(map(str, self.index))
        text = (f"{head}: max abs {self.max_abs:.3g} at ({idx}) "
                f"(scratch {self.scratch:.10g}, reference {self.reference:.10g}), "
                f"rel {_rel(self.scratch, self.reference):.3g} there, max rel {self.max_rel:.3g}; "
                f"tolerance atol {self.tol.atol:g} + rtol {self.tol.rtol:g}: margin {self.margin:.3g}")
        if self.overflow:
            text += f"; BOTH SIDES OVERFLOWED, {self.overflow}: the comparison proves nothing"
        elif self.pattern:
            text += pattern
        elif self.inconclusive:
            text += (f"; DEGENERATE: both sides are zero to within atol "
                     f"(max |scratch| {abs(self.scratch):.3g}) so the comparison proves nothing: "
                     "use inputs and upstream gradients that make this gradient non-zero")
        return text


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b != 0 else (0.0 if a == 0 else math.inf)


def compare(name: str, scratch, reference, tol: Tolerance, *, step: int | None = None,
            allowed_zero: bool = False) -> Comparison:
    """Compare one scratch array with its reference: shape and dtype first, then values."""
    a, b = np.asarray(scratch), np.asarray(reference)
    q = quantity(name)
    problem = None
    if a.shape != b.shape:
        problem = f"shape mismatch: scratch {a.shape}, reference {b.shape}"
    elif a.dtype != b.dtype:
        problem = f"dtype mismatch: scratch {a.dtype}, reference {b.dtype}"
    if problem:
        return Comparison(name, q, a.shape, math.inf, math.inf, (), math.nan, math.nan, math.inf,
                          tol, step, problem=problem)
    if a.size == 0:
        return Comparison(name, q, a.shape, 0.0, 0.0, (), 0.0, 0.0, 0.0, tol, step)
    # flat float64 views (no copy for float64 input); a.shape unravels the index
    a64, b64 = a.astype(np.float64, copy=False).reshape(-1), b.astype(np.float64, copy=False).reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf; handled just below
        diff = a64 - b64
        np.abs(diff, out=diff)
    max_abs = float(diff.max())  # NaN or inf if any element is
    abs_b = np.abs(b64)
    overflow = None
    if not math.isfinite(max_abs):  # a non-finite value on either side (or an overflowing difference)
        bad_a, bad_b = ~np.isfinite(a64), ~np.isfinite(b64)
        # Non-finite values match only where both sides have the same inf, or both NaN.
        same = (bad_a & bad_b) & ((a64 == b64) | (np.isnan(a64) & np.isnan(b64)))
        mismatch = bad_a ^ bad_b  # non-finite on one side only: a real disagreement
        both = bad_a & bad_b & ~same  # non-finite on both sides, differently (inf vs NaN): both overflowed
        diff = np.where(bad_a & bad_b, 0.0, diff)
        abs_b = np.where(bad_b, 0.0, abs_b)
        max_abs = float(diff.max())
        if mismatch.any():
            flat = int(np.flatnonzero(mismatch)[0])
            idx = np.unravel_index(flat, a.shape) if a.ndim else ()
            return Comparison(name, q, a.shape, math.inf, math.inf, tuple(int(i) for i in idx),
                              float(a64.flat[flat]), float(b64.flat[flat]), math.inf, tol, step,
                              problem=f"non-finite value at ({', '.join(map(str, idx))}): "
                                      f"scratch {a64.flat[flat]}, reference {b64.flat[flat]}")
        if both.any():
            flat = int(np.flatnonzero(both)[0])
            idx = np.unravel_index(flat, a.shape) if a.ndim else ()
            overflow = (f"non-finite on both sides at ({', '.join(map(str, idx))}): scratch {a64.flat[flat]}, "
                        f"reference {b64.flat[flat]} ({int(both.sum())} of {a.size} elements)")
    ratio = abs_b * tol.rtol
    ratio += tol.atol
    np.divide(diff, ratio, out=ratio)  # |a - b| / (atol + rtol |b|)
    flat = int(np.argmax(ratio))
    idx = tuple(int(i) for i in np.unravel_index(flat, a.shape)) if a.ndim else ()
    nz = abs_b != 0
    if nz.any():
        rel = np.divide(diff, abs_b, out=np.zeros_like(diff), where=nz)
        max_rel = float(rel.max())
    else:
        max_rel = 0.0 if not diff.any() else math.inf
    degenerate = q in GRADIENT_QUANTITIES and max(np.abs(a64).max(), abs_b.max()) <= tol.atol
    return Comparison(name, q, a.shape, max_abs, max_rel, idx, float(a64.flat[flat]),
                      float(b64.flat[flat]), float(ratio.flat[flat]), tol, step,
                      degenerate=bool(degenerate), allowed_zero=allowed_zero, overflow=overflow)


class ParityError(AssertionError):
    """Scratch and reference disagree; the message names where and by how much."""


def assert_close(name: str, scratch, reference, dtype=None, tol: Tolerance | None = None, *,
                 net: str | None = None, step: int | None = None) -> Comparison:
    """``compare`` and raise ``ParityError`` with the full description on failure."""
    dtype = dtype or np.asarray(reference).dtype
    c = compare(name, scratch, reference, tol or tolerance_for(dtype), step=step)
    if not c.passed:
        raise ParityError(c.describe(net, np.dtype(dtype).name))
    return c


@dataclass
class Trace:
    """Every comparison of a parity run: ``steps[i]`` holds step ``i + 1``'s."""

    net: str
    dtype: str
    tol: Tolerance
    steps: list = field(default_factory=list)
    warnings: list = field(default_factory=list)   # what the comparisons do not cover, in words
    diagnosis: object = None   # the first divergence's own-or-inherited analysis, where a caller made one

    @property
    def comparisons(self):
        return [c for step in self.steps for c in step]

    @property
    def failures(self):
        """The comparisons where the sides disagree (``Comparison.mismatch``): real divergences.
        Degenerate comparisons are not among them (``degenerate``)."""
        return [c for c in self.comparisons if c.mismatch]

    @property
    def degenerate(self):
        """The inconclusive comparisons: gradients ~0 on both sides, not declared zero."""
        return [c for c in self.comparisons if c.inconclusive]

    @property
    def status(self) -> str:
        """``mismatch`` if any comparison disagrees, else ``degenerate`` if any proves
        nothing (inconclusive), else ``pass``."""
        return "mismatch" if self.failures else "degenerate" if self.degenerate else "pass"

    @property
    def ok(self) -> bool:
        """Every comparison agrees AND proves something (status ``pass``). A degenerate trace
        is not ok (it proved nothing about some gradients) but it is no mismatch either:
        callers that must tell the two apart use ``status`` or ``failures``."""
        return self.status == "pass"

    @property
    def first_failure(self) -> Comparison | None:
        """The first tensor to diverge, in computation order (step, then within the step);
        never a degenerate comparison (both sides ~0 is agreement, not a divergence)."""
        fails = self.failures
        return fails[0] if fails else None

    def message(self) -> str:
        first = self.first_failure
        warned = "".join(f"\nwarning: {w}" for w in self.warnings)
        if first is None and self.degenerate:
            deg = self.degenerate
            steps = sorted({c.step for c in deg})
            names = list(dict.fromkeys(c.name for c in deg))
            over = [c for c in deg if c.overflow]
            what = (f"non-finite on both sides (overflowed; first {over[0].name}: {over[0].overflow}) or zero to "
                    f"within atol {self.tol.atol:g} on both sides" if over else
                    f"degenerate, zero to within atol {self.tol.atol:g} on both sides")
            return (f"{self.net} {self.dtype}: INCONCLUSIVE, no mismatch: {len(deg)} comparison"
                    f"{'s' * (len(deg) != 1)} over {len(steps)} of {len(self.steps)} steps (from step {steps[0]}) "
                    f"are {what}, so they prove nothing: "
                    f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}{warned}")
        if first is None:
            return (f"{self.net} {self.dtype}: {len(self.steps)} steps, all {len(self.comparisons)} comparisons pass"
                    f"{warned}")
        n = len(self.failures)
        return (f"{first.describe(self.net, self.dtype)}\n"
                f"first divergence of {n} failing comparison{'s' * (n != 1)} over {len(self.steps)} steps"
                f" ({len({c.name for c in self.failures})} tensors){warned}")

    def raise_if_failed(self) -> "Trace":
        if not self.ok:
            raise ParityError(self.message())
        return self

    def worst_margin(self) -> float:
        return max((c.margin for c in self.comparisons if c.problem is None), default=0.0)

    def summary(self) -> list[OrderedDict]:
        """Per step and kind of quantity: the worst margin (``margin``, with that tensor's
        ``max_rel`` and ``name``) and the worst max relative error over the kind's tensors
        (``worst_rel``, ``worst_rel_name``)."""
        rows = []
        for i, step in enumerate(self.steps, 1):
            row = OrderedDict(step=i)
            for c in step:
                cur = row.get(c.quantity)
                if cur is None:
                    cur = row[c.quantity] = {"margin": c.margin, "max_rel": c.max_rel, "name": c.name,
                                             "worst_rel": c.max_rel, "worst_rel_name": c.name}
                if c.margin > cur["margin"]:
                    cur.update(margin=c.margin, max_rel=c.max_rel, name=c.name)
                if c.max_rel > cur["worst_rel"]:
                    cur.update(worst_rel=c.max_rel, worst_rel_name=c.name)
            rows.append(row)
        return rows

    def table(self, every: int = 1, metric: str = "margin") -> str:
        """A compact text table, one row per step (every ``every``-th step, plus the first,
        the last and every failing one): per kind of quantity its worst margin
        (``metric="margin"``) or its worst max relative error (``metric="max_rel"``,
        followed by the step's worst margin, which decides pass or fail)."""
        if metric not in ("margin", "max_rel"):
            raise ValueError(f"metric must be 'margin' or 'max_rel', got {metric!r}")
        qs = list(OrderedDict.fromkeys(c.quantity for c in self.comparisons))
        short = {q: q.replace("parameter ", "param ").replace("forward activation", "activation")
                 .replace("upstream gradient", "upstream grad").replace("BatchNorm buffer", "BN buffer")
                 for q in qs}
        key, width = ("margin", 14) if metric == "margin" else ("worst_rel", 13)
        legend = ("(worst margin; <= 1 passes)" if metric == "margin" else
                  "(worst relative error per quantity, over elements whose reference is non-zero; "
                  "x! = a tensor of this kind fails, x its relative error at the failing element, inf where the "
                  "reference is 0; margin: the step's worst, <= 1 passes)")
        head = "step  " + "  ".join(f"{short[q]:>{width}}" for q in qs)
        lines = [head + (f"  {'margin':>9}" if metric == "max_rel" else "") + "   " + legend]
        for row in self.summary():
            step = self.steps[row["step"] - 1]
            ok = all(c.passed for c in step)
            flag = ("" if ok else "  FAIL" if any(c.mismatch for c in step) else
                    "  OVERFLOWED (both sides)" if any(c.overflow for c in step) else "  DEGENERATE (both sides ~0)")
            if row["step"] % every and row["step"] not in (1, len(self.steps)) and ok:
                continue
            if metric == "margin":
                cells = [f"{row[q][key]:{width}.3g}" if q in row else f"{'-':>{width}}" for q in qs]
            else:
                bad = {}  # kind -> its worst failing tensor: the cell shows where that one fails
                for c in step:
                    if c.mismatch and (c.quantity not in bad or c.margin > bad[c.quantity].margin):
                        bad[c.quantity] = c
                cells = [(f"{_rel(bad[q].scratch, bad[q].reference):{width - 1}.3g}!" if q in bad else
                          f"{row[q][key]:{width - 1}.3g} ") if q in row else f"{'-':>{width - 1}} " for q in qs]
            if metric == "max_rel":
                cells.append(f"{max((c.margin for c in step), default=0.0):9.3g}")
            lines.append(f"{row['step']:>4}  " + "  ".join(cells) + flag)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        first = self.first_failure
        return {
            "net": self.net, "dtype": self.dtype, "tolerance": asdict(self.tol),
            "steps": len(self.steps), "ok": self.ok, "status": self.status, "worst_margin": self.worst_margin(),
            "degenerate": sorted({c.name for c in self.degenerate}),
            "first_divergence": _comparison_dict(first) if first else None,
            "per_step": [{c.name: _comparison_dict(c) for c in step} for step in self.steps],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=_json_default)


def _comparison_dict(c: Comparison) -> dict:
    d = asdict(c)
    d.pop("tol")
    d["passed"] = c.passed
    d["status"] = c.status
    d["index"] = list(c.index)
    d["shape"] = list(c.shape)
    return d


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    raise TypeError(type(o))


def declared_zero(key: str, allowed_zero) -> bool:
    """Whether a record key is the gradient (or momentum buffer) of a parameter declared zero
    by construction: ``grad/conv1.bias``, ``state/conv1.bias.momentum_buffer``."""
    prefix, _, name = key.partition("/")
    if prefix == "state" and name.endswith(".momentum_buffer"):
        name = name[:-len(".momentum_buffer")]
    return prefix in ("grad", "state") and name in allowed_zero


def compare_records(scratch_rec: "OrderedDict", torch_rec: "OrderedDict", tol: Tolerance, step: int,
                    allowed_zero=(), notes=None) -> list[Comparison]:
    """Compare two step records name by name, in the scratch record's (computation) order;
    ``notes`` ({name: words}) label tensors in failure messages.

    The gradient and momentum buffer of a parameter declared zero by construction
    (``allowed_zero``) hold nothing but rounding noise on both sides, and the two noises
    need not agree (torch's float32 conv-bias reduction leaves up to ~1e-4 where the
    exact value is 0): after the shape and dtype check they are compared with *zero*,
    so the scratch side must keep them zero to within ``atol``.
    """
    missing = [k for k in scratch_rec if k not in torch_rec] + [k for k in torch_rec if k not in scratch_rec]
    out = []
    for k in scratch_rec:
        if k in torch_rec:
            c = compare(k, scratch_rec[k], torch_rec[k], tol, step=step,
                        allowed_zero=k.split("/", 1)[-1] in allowed_zero)
            if c.problem is None and declared_zero(k, allowed_zero):
                c = compare(k, scratch_rec[k], np.zeros_like(scratch_rec[k]), tol, step=step, allowed_zero=True)
            out.append(c)
    # Once a tensor of the step is non-finite on both sides (overflowed: inf on one, NaN on
    # the other), what the step computes from it is non-finite too, on one side or both,
    # depending on how each side's arithmetic met the inf: evidence of overflow, not of a bug.
    first = next((c for c in out if c.overflow), None)
    for c in out[out.index(first) + 1:] if first is not None else []:
        if c.problem and c.problem.startswith("non-finite") and not c.overflow:
            c.overflow = f"computed after {first.name} overflowed on both sides"
    for c in out:
        c.note = (notes or {}).get(c.name)
    for k in missing:
        side = "reference" if k in scratch_rec else "scratch"
        out.append(Comparison(k, quantity(k), (), math.inf, math.inf, (), math.nan, math.nan, math.inf,
                              tol, step, problem=f"recorded by one side only: the {side} side has no {k!r}"))
    return out


def check_steps(scratch_side, torch_side, batches, *, net: str, dtype, tol: Tolerance | None = None,
                allowed_zero=(), on_step=None, observer=None) -> Trace:
    """Train both sides on the same ``(x, y)`` batches, comparing every recorded tensor
    after every step. Both sides must start from identical weights.

    Returns the full ``Trace`` (it keeps going after a failure, so the growth of an
    error is visible); call ``raise_if_failed()`` to turn a failure into an error.

    ``observer`` (optional) sees every step from outside: ``observer.before_step(i, x, y,
    scratch_side, torch_side)`` and ``observer.after_step(i, x, y, s, t, trace)`` with
    both sides' ``StepResult`` (``nnparity.diagnosis.localize`` uses it to find a culprit).
    """
    dtype = np.dtype(dtype).name
    trace = Trace(net, dtype, tol or tolerance_for(dtype))
    notes = gradient_notes(getattr(scratch_side, "model", None))
    tie_modules = _tie_modules(torch_side)
    for m in tie_modules:  # ties at the parity tolerance follow the scratch side's choice (max pooling)
        m.tie_tol = (trace.tol.atol, trace.tol.rtol)
    try:
        # alternating NumPy and torch steps: see nnparity/core/threads.py. Overflow is judged by
        # comparing the values (a non-finite value is named), not warned about.
        with blas_threads(1), np.errstate(over="ignore", invalid="ignore"):
            for i, (x, y) in enumerate(batches, 1):
                if observer:
                    observer.before_step(i, x, y, scratch_side, torch_side)
                s = scratch_side.step(x, y, record=True)
                t = torch_side.step(x, y, record=True, draws=scratch_side.draws())
                trace.steps.append(compare_records(s.record, t.record, trace.tol, i, allowed_zero, notes))
                if observer:
                    observer.after_step(i, x, y, s, t, trace)
                if on_step:
                    on_step(i, trace)
                if any((c.problem and c.problem.startswith("non-finite")) or c.overflow for c in trace.steps[-1]):
                    break
    finally:
        for m in tie_modules:
            m.tie_tol = None
    return trace


def _tie_modules(torch_side) -> list:
    """Reference modules that resolve ties the scratch way within a tolerance (``tie_tol``),
    e.g. ``reference.layers.AlignedMaxPool2d``."""
    model = getattr(torch_side, "model", None)
    return [m for m in model.modules() if hasattr(m, "tie_tol")] if hasattr(model, "modules") else []
