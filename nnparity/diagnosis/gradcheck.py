"""Finite-difference gradient check: a third witness that needs no PyTorch.

For a scalar objective ``f`` (a network's loss on a real minibatch, or
``sum(layer(x) * g)`` for one layer and a random upstream gradient ``g``), every
sampled coordinate ``theta_i`` gets the central difference, in float64,

    n_i = (f(theta + h e_i) - f(theta - h e_i)) / (2 h)          error O(h^2)

and is compared with the analytic ``a_i`` of the scratch backward by the
symmetric relative error

    rel_i = |a_i - n_i| / max(|a_i|, |n_i|, floor)

graded as in the CS231n notes on gradient checks
(https://cs231n.github.io/neural-networks-3/#gradcheck: "relative error > 1e-2
usually means the gradient is probably wrong; 1e-2 > relative error > 1e-4
should make you feel uncomfortable; 1e-4 > relative error is usually okay for
objectives with kinks [...] 1e-7 and less you should be happy"):

    good < 1e-7 <= ok < 1e-4 <= uncomfortable < 1e-2 <= wrong

A coordinate *fails* when it is graded uncomfortable or wrong (``threshold``,
default 1e-4): kink crossings are excluded below, so what is left is locally
smooth, where CS231n calls 1e-4 "too high" already.

The floor (both sides ~0). The central difference has a rounding error of
about ``noise = max|rounding error of f| / h``. ``max|rounding error of f|`` is
*measured*: ``f`` is evaluated at ``theta + k d e_j`` for ``k = -2..2`` and a
step ``d = h / 100`` on which ``f`` is linear to far below rounding, and the
largest residual of a straight-line fit is the rounding noise (never below
``2.2e-16 |f|``). ``floor = 1e5 * noise``: a correct coordinate then has
``rel <= ~1e-5``, ten times below the failing grade, and a difference smaller
than ``10 * noise`` can never fail (nothing below it can be told from rounding).
Coordinates with ``max(|a|, |n|) <= floor`` are counted as *tiny*; a tensor
whose every checked coordinate is tiny proves nothing and fails as degenerate
(unless declared zero by construction, ``Network.allowed_zero``). The floor is a
gradient magnitude and the threshold a relative error: a floor above 1e-4 is no
contradiction (a tiny coordinate is judged by ``|a - n| / floor``, so it fails
once ``|a - n| >= threshold * floor``, ten times the noise).

Zero by construction. A tensor the network declares zero by construction (a
bias followed by BatchNorm) whose every checked coordinate has both ``|a|`` and
``|n|`` within ``threshold * floor`` (= ``10 * noise``: no difference that small
can fail) is reported as *zero by construction* and not graded: a relative error
between two rounding residues (``9e-15`` vs ``-9e-11``) means nothing. If any
coordinate is further from 0, the tensor is graded as any other, so a backward
that makes such a gradient non-zero still fails.

Sampling. Every tensor (each parameter, and the input) gets ``samples``
coordinates fixed by the seed (all of them if it is smaller): half uniform, half
uniform among the coordinates where the analytic gradient is non-zero (on MNIST
a first layer's weight column is exactly 0 wherever a pixel is 0 in the whole
batch; the uniform half still catches a backward that returns 0 where it should
not).

Kinks. "If the identity of at least one winner changes when evaluating
f(x+h) and then f(x-h), then a kink was crossed and the numerical gradient will
not be exact" (CS231n). Layers declare what decides their kink in
``kink_attrs`` (``ReLU.kink_attrs = ("mask",)``; a max-pool names its argmax);
after every evaluation those arrays are compared with the unperturbed pass, and a
coordinate whose perturbation changed one is reported as a kink, not graded.

Randomness and batch statistics. Networks are checked in training mode (so
BatchNorm uses the batch statistics the training loss uses). Dropout must draw
the same mask in every evaluation: before each one, the state of every NumPy
generator held by a module (and NumPy's global one) is replayed, and the masks
of ``draws_mask`` modules are verified to equal the first pass's (an error says
so if they do not). Parameters, buffers (running statistics) and generators are
restored afterwards; ``.grad`` holds the analytic gradient of the checked batch.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from nnparity.training.adapters import (INPUT_MUTATED, LossAdapter, RandomState, as_layer, input_grad_problem, output_problem,
                       upstream_problem)
from nnparity.core.parity import draws_random_mask

# CS231n's bands: (upper bound, grade)
GRADES = ((1e-7, "good"), (1e-4, "ok"), (1e-2, "uncomfortable"), (math.inf, "wrong"))
THRESHOLD = 1e-4          # fail at or above: "uncomfortable" and "wrong"
EPS = 1e-5                # CS231n: "h ... in practice approximately 1e-5"
SAMPLES = 10              # coordinates per tensor
FLOOR_FACTOR = 1e5        # floor = FLOOR_FACTOR * rounding noise of the central difference
NOISE_PROBES = 2          # coordinates used to measure the rounding noise of f
MACHINE_EPS = float(np.finfo(np.float64).eps)
ZERO = "zero"             # the grade shown for a tensor that is zero by construction (not graded)


class GradcheckError(AssertionError):
    """The analytic gradient disagrees with finite differences (or the check could not run)."""


def grade(rel: float) -> str:
    """CS231n's grade of a relative error."""
    for bound, name in GRADES:
        if rel < bound:
            return name
    return "wrong"


def symmetric_rel(a: float, n: float, floor: float = 0.0) -> float:
    """``|a - n| / max(|a|, |n|, floor)``; 0 when both are exactly 0."""
    den = max(abs(a), abs(n), floor)
    return abs(a - n) / den if den > 0 else 0.0


@dataclass
class Probe:
    """One coordinate: analytic vs central difference."""

    tensor: str
    index: tuple
    analytic: float
    numeric: float
    rel: float
    grade: str
    tiny: bool = False               # max(|a|, |n|) below the floor
    kink: tuple = ()                 # kink attributes that switched within +-h
    at_zero: bool = False            # max(|a|, |n|) <= threshold * floor: indistinguishable from 0

    @property
    def abs_err(self) -> float:
        return abs(self.analytic - self.numeric)

    @property
    def is_kink(self) -> bool:
        return bool(self.kink)

    def describe(self) -> str:
        idx = ", ".join(map(str, self.index))
        text = (f"{self.tensor} at ({idx}): analytic {self.analytic:.10g}, numeric {self.numeric:.10g}, "
                f"abs err {self.abs_err:.3g}, rel err {self.rel:.3g} ({self.grade})")
        if self.kink:
            text += f"; KINK: {', '.join(self.kink)} switched within +-h, not graded"
        return text


@dataclass
class TensorCheck:
    """The sampled coordinates of one tensor (a parameter gradient or the input gradient)."""

    name: str
    shape: tuple
    probes: list = field(default_factory=list)
    threshold: float = THRESHOLD
    allowed_zero: bool = False

    @property
    def checked(self) -> list:
        return [p for p in self.probes if not p.is_kink]

    @property
    def kinks(self) -> list:
        return [p for p in self.probes if p.is_kink]

    @property
    def worst(self) -> Probe | None:
        return max(self.checked, key=lambda p: p.rel, default=None)

    @property
    def zero_by_construction(self) -> bool:
        """Declared zero by construction, and every checked coordinate within rounding of 0
        on both sides: nothing to grade (their relative error compares two rounding residues)."""
        return self.allowed_zero and bool(self.checked) and all(p.at_zero for p in self.checked)

    @property
    def degenerate(self) -> bool:
        """Every checked coordinate below the floor: the comparison proves nothing."""
        return bool(self.checked) and all(p.tiny for p in self.checked) and not self.allowed_zero

    @property
    def problem(self) -> str | None:
        if not self.checked:
            return (f"{self.name}: none of the {len(self.probes)} sampled coordinates could be checked (all were "
                    "kinks): use a smaller --eps, more --samples or another --seed")
        if self.degenerate:
            return (f"{self.name}: DEGENERATE: all {len(self.checked)} checked coordinates have |gradient| below "
                    "the floor (both ~0), so the check proves nothing: use more --samples, another --seed or "
                    "inputs that make this gradient non-zero")
        return None

    @property
    def grade(self) -> str:
        if self.zero_by_construction:
            return ZERO
        w = self.worst
        return w.grade if w else "-"

    @property
    def ok(self) -> bool:
        return self.problem is None and (self.zero_by_construction or self.worst.rel < self.threshold)


@dataclass
class GradcheckResult:
    """Every sampled coordinate of one finite-difference check."""

    name: str
    eps: float
    seed: int
    samples: int
    value: float                     # the objective at the unperturbed point
    noise: float                     # estimated rounding error of the central difference
    floor: float
    threshold: float
    tensors: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tensors)

    @property
    def failures(self) -> list:
        return [t for t in self.tensors if not t.ok]

    @property
    def probes(self) -> list:
        return [p for t in self.tensors for p in t.probes]

    @property
    def kinks(self) -> list:
        return [p for p in self.probes if p.is_kink]

    def worst_rel(self) -> float:
        """The largest relative error among the graded tensors (zero-by-construction ones are not)."""
        return max((p.rel for t in self.tensors if not t.zero_by_construction for p in t.checked), default=0.0)

    @property
    def zero_band(self) -> float:
        """``threshold * floor`` (10 x the noise): no |a - n| this small can fail, so a value
        within it of 0 cannot be told from 0."""
        return self.threshold * self.floor

    def margin(self) -> float:
        """Worst relative error over the failing threshold: > 1 fails (the parity margin's analogue)."""
        return self.worst_rel() / self.threshold

    def header(self) -> str:
        return (f"{self.name} gradcheck (float64 central differences, eps {self.eps:g}, {self.samples} coordinates "
                f"per tensor, seed {self.seed})")

    def message(self) -> str:
        if self.ok:
            zero = sum(t.zero_by_construction for t in self.tensors)
            return (f"{self.header()}: all {len(self.tensors)} tensors pass; worst rel err "
                    f"{self.worst_rel():.3g} ({grade(self.worst_rel())}); {len(self.kinks)} kink(s) not graded"
                    + (f"; {zero} tensor(s) zero by construction, not graded" if zero else ""))
        first = self.failures[0]
        why = first.problem or (f"{first.worst.describe()}: above the failing threshold {self.threshold:g} "
                                f"(CS231n: > 1e-2 probably wrong, 1e-4..1e-2 uncomfortable)")
        n = len(self.failures)
        return (f"{self.header()}: {why}\n"
                f"{n} of {len(self.tensors)} tensors fail: {', '.join(t.name for t in self.failures)} "
                f"(floor {self.floor:.3g}, rounding noise {self.noise:.3g})")

    def raise_if_failed(self) -> "GradcheckResult":
        if not self.ok:
            raise GradcheckError(self.message())
        return self

    def table(self) -> str:
        """One row per tensor, each column as wide as its widest entry (``legend`` explains them)."""
        head = ("tensor", "shape", "checked", "kinks", "tiny", "worst rel", "grade", "analytic / numeric")
        rows = []
        for t in self.tensors:
            wp = t.worst
            if t.zero_by_construction:
                rel, verdict = "-", "zero"
            else:
                rel = f"{wp.rel:.2e}" if wp else "-"
                verdict = t.grade if t.problem is None else ("DEGENERATE" if t.degenerate else "UNCHECKED")
                verdict += "" if t.ok else " FAIL"
            where = f"{wp.analytic:.6g} / {wp.numeric:.6g}" if wp else ""
            rows.append((t.name, str(t.shape), str(len(t.checked)), str(len(t.kinks)),
                         str(sum(p.tiny for p in t.checked)), rel, verdict, where))
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        left = {0, 1, 6, 7}

        def line(r):  # two spaces after a name or a grade, one between the right-aligned numbers
            return "".join((" " if i in (2, 3, 4, 5) else "  ") * (i > 0) + (c.ljust(w) if i in left else c.rjust(w))
                           for i, (c, w) in enumerate(zip(r, widths)))
        return "\n".join(line(r).rstrip() for r in [head] + rows)

    def legend(self, width: int = 100) -> str:
        """What every column of ``table`` means, and how the floor relates to the threshold."""
        import textwrap

        th = f"{self.threshold:.0e}".replace("e-0", "e-")
        factor = f"{self.floor / self.noise:.3g}".replace("e+0", "e")   # 1e5 unless the floor was given
        items = [
            "tensor: grad/NAME = the gradient of the objective (a network's loss) with respect to parameter "
            "NAME; din = with respect to the input (the batch of images).",
            f"shape: the tensor's shape; {self.samples} of its coordinates are sampled (all, if it has fewer).",
            "checked: sampled coordinates that are graded (kinks left out).",
            "kinks: coordinates where a ReLU mask or a max-pool argmax switched between theta + eps and "
            "theta - eps; the central difference is not exact across a kink (CS231n), so they are not graded.",
            f"tiny: checked coordinates with |analytic| and |numeric| both <= the floor ({self.floor:.3g}); a "
            "tensor whose every checked coordinate is tiny proves nothing and fails as DEGENERATE.",
            "worst rel: the largest rel err = |analytic - numeric| / max(|analytic|, |numeric|, floor) of the "
            "tensor; analytic / numeric: that coordinate's two values.",
            f"grade (CS231n): good < 1e-7 <= ok < 1e-4 <= uncomfortable < 1e-2 <= wrong; a tensor FAILs at rel "
            f"err >= {th} (uncomfortable or wrong).",
        ]
        if any(t.zero_by_construction for t in self.tensors):
            items.append(f"zero: zero by construction (the network declares it, e.g. a bias followed by "
                         f"BatchNorm), and analytic and numeric are both within rounding of 0 (|value| <= "
                         f"{self.zero_band:.3g}, see below); not graded.")
        items.append(f"floor {self.floor:.3g} is a gradient magnitude, not a relative error, so it is not compared "
                     f"with the {th} threshold: it is {factor} x the rounding noise {self.noise:.3g} of a "
                     f"central difference (measured). Since rel err divides by at least the floor, a coordinate "
                     f"can fail only if |analytic - numeric| >= {th} x floor = {self.zero_band:.3g} "
                     f"({self.zero_band / self.noise:.3g} x the noise): a difference that rounding cannot make.")
        return "\n".join(textwrap.fill(i, width, subsequent_indent="  ") for i in items)

    def to_dict(self) -> dict:
        def probe(p):
            return {"index": list(p.index), "analytic": p.analytic, "numeric": p.numeric, "rel": p.rel,
                    "grade": p.grade, "tiny": p.tiny, "at_zero": p.at_zero, "kink": list(p.kink)}
        return {
            "name": self.name, "ok": self.ok, "eps": self.eps, "seed": self.seed, "samples": self.samples,
            "objective": self.value, "noise": self.noise, "floor": self.floor, "threshold": self.threshold,
            "zero_band": self.zero_band,
            "worst_rel": self.worst_rel(), "margin": self.margin(),
            "grading": "CS231n: good < 1e-7 <= ok < 1e-4 <= uncomfortable < 1e-2 <= wrong",
            "notes": self.notes,
            "tensors": [{"name": t.name, "shape": list(t.shape), "ok": t.ok, "grade": t.grade,
                         "problem": t.problem, "checked": len(t.checked), "kinks": len(t.kinks),
                         "zero_by_construction": t.zero_by_construction,
                         "worst_rel": t.worst.rel if t.worst else None,
                         "probes": [probe(p) for p in t.probes]} for t in self.tensors],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


# --- the core -----------------------------------------------------------------------------

def sample_indices(shape, k: int, seed: int, name: str, nonzero=None) -> list:
    """``k`` distinct coordinates of a tensor (all of them if it has fewer), fixed by (seed, name).

    Half (rounded up) are uniform over the tensor. With ``nonzero`` (flat indices where the
    analytic gradient is non-zero) the other half is uniform over those: on MNIST most of a
    first layer's weight columns see a pixel that is 0 in the whole batch, and a purely
    uniform sample spends itself on gradients that are exactly 0 on both sides. The uniform
    half still catches a backward that returns 0 where the true gradient is not.
    """
    size = int(np.prod(shape))
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if size <= k:
        flat = list(range(size))
    else:
        uniform = [int(i) for i in rng.choice(size, k, replace=False)]
        flat = uniform[:(k + 1) // 2] if nonzero is not None else uniform
        if nonzero is not None and len(nonzero):
            for i in np.asarray(nonzero)[rng.choice(len(nonzero), min(k, len(nonzero)), replace=False)]:
                if len(flat) < k and int(i) not in flat:
                    flat.append(int(i))
        flat += [i for i in uniform if i not in flat][:k - len(flat)]
        flat.sort()
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in flat]


def _evaluate(objective):
    out = objective()
    value, scale = out if isinstance(out, tuple) else (out, abs(out))
    return float(value), float(scale)


def _switched(state0: dict, state: dict) -> tuple:
    return tuple(k for k in state0 if k not in state or not np.array_equal(state0[k], state[k]))


def measure_noise(objective, arr, idx, step, f0, kink_state=None, state0=None) -> float | None:
    """Largest residual of a straight-line fit to ``f`` at ``theta + k step e_idx``, k = -2..2:
    the rounding noise of ``f`` (None if a kink was crossed on the way)."""
    orig = arr[idx]
    xs, fs = [0.0], [0.0]
    try:
        for k in (-2, -1, 1, 2):
            arr[idx] = orig + k * step
            xs.append(float(arr[idx]) - float(orig))
            fs.append(_evaluate(objective)[0] - f0)
            if kink_state is not None and _switched(state0, kink_state()):
                return None
    finally:
        arr[idx] = orig
    a = np.stack([np.ones(5), np.array(xs)], axis=1)
    coef, *_ = np.linalg.lstsq(a, np.array(fs), rcond=None)
    return float(np.abs(np.array(fs) - a @ coef).max())


def finite_differences(objective, tensors: "OrderedDict[str, np.ndarray]", analytic: dict, *, eps: float = EPS,
                       samples: int = SAMPLES, seed: int = 0, kink_state=None, threshold: float = THRESHOLD,
                       name: str = "", allowed_zero=(), floor: float | None = None,
                       progress: bool | None = False) -> GradcheckResult:
    """Central differences of ``objective`` on a seeded sample of every tensor's coordinates.

    Args:
        objective: ``f()`` -> float, or ``(value, scale)`` where ``scale`` bounds the
            magnitudes summed into the value; reads the live arrays of ``tensors``.
        tensors: name -> the live float64 array to perturb (in place, restored exactly).
        analytic: name -> dL/d(tensor) from the backward under test.
        eps: the step ``h``.
        samples: coordinates per tensor (all of them for smaller tensors).
        seed: fixes the sample.
        kink_state: ``() -> {name: array}``, the discrete decisions of the last evaluation.
        threshold: a coordinate fails at or above this relative error.
        allowed_zero: tensor names exempt from the degeneracy guard (zero by construction).
        floor: override the measured floor.
        progress: a bar over the coordinates (``nnparity.core.progress``; None: on a terminal only).
    """
    from nnparity.core.progress import bar

    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    for k, arr in tensors.items():
        if arr.dtype != np.float64:
            raise GradcheckError(f"{k}: finite differences need float64, got {arr.dtype}")
        if np.shape(analytic[k]) != arr.shape:
            raise GradcheckError(f"{k}: analytic gradient has shape {np.shape(analytic[k])}, the tensor {arr.shape}")
    f0, scale = _evaluate(objective)
    if not math.isfinite(f0):
        raise GradcheckError(f"{name}: the objective is {f0} at the unperturbed point: nothing to differentiate")
    state0 = kink_state() if kink_state else {}
    picks = OrderedDict((k, sample_indices(arr.shape, samples, seed, k, np.flatnonzero(analytic[k])))
                        for k, arr in tensors.items())

    # rounding noise of f, measured on the first sampled coordinate of a few tensors
    noise_f = MACHINE_EPS * max(abs(f0), scale)
    names = list(tensors)
    for k in list(OrderedDict.fromkeys([names[-1], names[0]] + names))[:NOISE_PROBES] if names else []:
        r = measure_noise(objective, tensors[k], picks[k][0], eps / 100, f0, kink_state, state0)
        if r is not None:
            noise_f = max(noise_f, r)
    noise = noise_f / eps
    floor = FLOOR_FACTOR * noise if floor is None else floor

    result = GradcheckResult(name, eps, seed, samples, f0, noise, floor, threshold)
    coordinates = bar(total=sum(map(len, picks.values())), desc=f"{name} gradcheck".strip(), progress=progress,
                      unit="coordinate")
    for k, arr in tensors.items():
        t = TensorCheck(k, arr.shape, threshold=threshold, allowed_zero=k in allowed_zero)
        for idx in picks[k]:
            coordinates.update(1)
            orig = arr[idx]
            try:
                arr[idx] = orig + eps
                hp = float(arr[idx]) - float(orig)     # the step actually taken (rounded)
                fp, _ = _evaluate(objective)
                sp = kink_state() if kink_state else {}
                arr[idx] = orig - eps
                hm = float(orig) - float(arr[idx])
                fm, _ = _evaluate(objective)
                sm = kink_state() if kink_state else {}
            finally:
                arr[idx] = orig
            n = (fp - fm) / (hp + hm)
            a = float(analytic[k][idx])
            rel = symmetric_rel(a, n, floor)
            kink = tuple(OrderedDict.fromkeys(_switched(state0, sp) + _switched(state0, sm)))
            big = max(abs(a), abs(n))
            t.probes.append(Probe(k, idx, a, n, rel, grade(rel), big <= floor, kink, big <= threshold * floor))
        result.tensors.append(t)
    coordinates.close()
    return result


# --- models, layers, losses -----------------------------------------------------------

def _float64_copy(x):
    return np.array(x, dtype=np.float64, copy=True)


@contextmanager
def _in_float64(lay, train: bool):
    """``lay`` in float64 and in the given mode, its random draws replayable (the yielded
    ``RandomState``); its parameters, dtype, mode, input-gradient switch and generators are
    restored afterwards, whatever happens."""
    snap = lay.snapshot()
    was_training = lay.training
    undo_input = lay.input_grad_on()
    rs = None
    try:
        lay.astype(np.float64)
        lay.train(train)
        rs = RandomState(lay.generators())
        yield rs
    finally:
        if rs is not None:
            rs.replay()
        lay.restore(snap)
        undo_input()
        if was_training is not None:
            lay.train(was_training)


def _first_pass(lay, x, upstream_of):
    """One forward and backward at ``x``, with ``upstream_of(out)`` as dL/d(out): returns
    (that upstream gradient, dx, the analytic gradients by record name, the tensors they are
    of). Refuses a bad output and an input the layer changed."""
    lay.zero_grad()
    x_before = x.copy()
    out = lay.forward(x)
    problem = output_problem(lay.name, out, x)
    if problem:
        raise GradcheckError(problem)
    g = upstream_of(out)
    dx = lay.backward(g.copy())
    if not np.array_equal(x, x_before):
        raise GradcheckError(f"{lay.name}: {INPUT_MUTATED}")
    analytic = OrderedDict((f"grad/{k}", np.array(v, dtype=np.float64)) for k, v in lay.grads().items())
    tensors = OrderedDict((f"grad/{k}", a) for k, a in lay.params().items())
    return g, dx, analytic, tensors


def gradcheck_model(model, loss_fn, x, y, *, samples: int = SAMPLES, eps: float = EPS, seed: int = 0,
                    threshold: float = THRESHOLD, name: str | None = None, allowed_zero=(),
                    check_input: bool = True, progress: bool | None = False) -> GradcheckResult:
    """Finite differences of ``loss_fn(model(x), y)`` on every parameter tensor and on ``x``.

    ``model`` follows the layer protocol (a scratch ``Sequential`` or any network,
    see ``nnparity.training.adapters``); it is run in float64 and in training mode, with
    its random draws replayed identically in every evaluation, and restored
    afterwards. Returns the ``GradcheckResult``; does not raise on failure.
    """
    lay = as_layer(model, name)
    loss = LossAdapter(loss_fn)
    x = _float64_copy(x)
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.floating):
        y = y.astype(np.float64)
    with _in_float64(lay, True) as rs:
        _, dx, analytic, tensors = _first_pass(lay, x, lambda out: loss(out, y)[1])
        if check_input:
            problem = input_grad_problem(lay.name, dx, x)
            if problem:
                raise GradcheckError(problem)
            analytic["din"] = np.array(dx, dtype=np.float64)
            tensors["din"] = x
        random_paths = {path for path, mod in lay._modules() if draws_random_mask(mod)}
        draws0 = {k: v for k, v in lay.draws().items() if k in random_paths}  # ReLU/max-pool masks are kinks

        def objective():
            rs.replay()
            value, _ = loss(lay.forward(x), y)
            draws = lay.draws()
            changed = [k for k in draws0 if k not in draws or not np.array_equal(draws0[k], draws[k])]
            if changed:
                raise GradcheckError(
                    f"the random mask of {changed} changed between evaluations although every NumPy generator "
                    "held by a module was replayed: gradcheck needs the same mask in every evaluation, so the "
                    "module must draw from a numpy Generator stored on it (or NumPy's global generator)")
            return float(value), abs(float(value))

        return finite_differences(objective, tensors, analytic, eps=eps, samples=samples, seed=seed,
                                  kink_state=lay.kink_state, threshold=threshold, name=lay.name,
                                  allowed_zero=tuple(f"grad/{k}" for k in allowed_zero), progress=progress)


def gradcheck_layer(layer, input_shape=None, *, x=None, upstream=None, samples: int = SAMPLES, eps: float = EPS,
                    seed: int = 0, train: bool = True, threshold: float = THRESHOLD,
                    name: str | None = None) -> GradcheckResult:
    """Finite differences of ``sum(layer(x) * g)`` for a random non-uniform upstream gradient ``g``:
    every parameter tensor and the input, in float64. The layer is restored afterwards."""
    lay = as_layer(layer, name)
    rng = np.random.default_rng(seed)
    x = _float64_copy(rng.standard_normal(input_shape) if x is None else x)

    def upstream_of(out):
        upstream_problem(lay.name, upstream, np.shape(out))
        return rng.standard_normal(np.shape(out)) if upstream is None else _float64_copy(upstream)

    with _in_float64(lay, train) as rs:
        g, dx, analytic, tensors = _first_pass(lay, x, upstream_of)
        problem = input_grad_problem(lay.name, dx, x)
        if problem:
            raise GradcheckError(problem)
        analytic["din"] = np.array(dx, dtype=np.float64)
        tensors["din"] = x

        def objective():
            rs.replay()
            prod = np.asarray(lay.forward(x), dtype=np.float64) * g
            return float(prod.sum()), float(np.abs(prod).sum())

        return finite_differences(objective, tensors, analytic, eps=eps, samples=samples, seed=seed,
                                  kink_state=lay.kink_state, threshold=threshold, name=lay.name)


def gradcheck_loss(loss_fn, logits_shape=None, target=None, *, z=None, samples: int = SAMPLES, eps: float = EPS,
                   seed: int = 0, threshold: float = THRESHOLD, name: str | None = None) -> GradcheckResult:
    """Finite differences of a loss with respect to its input (random logits ~ 3 N(0, 1) unless ``z`` is given)."""
    loss = LossAdapter(loss_fn, name)
    rng = np.random.default_rng(seed)
    z = _float64_copy(rng.standard_normal(logits_shape) * 3 if z is None else z)
    target = np.asarray(target)
    if np.issubdtype(target.dtype, np.floating):
        target = target.astype(np.float64)
    _, dz = loss(z, target)
    analytic = OrderedDict(din=np.array(dz, dtype=np.float64))

    def objective():
        value, _ = loss(z, target)
        return float(value), abs(float(value))

    return finite_differences(objective, OrderedDict(din=z), analytic, eps=eps, samples=samples, seed=seed,
                              threshold=threshold, name=loss.name)


def gradcheck_network(net_name: str, *, samples: int = SAMPLES, eps: float = EPS, seed: int = 0,
                      batch_size: int | None = None, burn_in: int = 0, raw=None, data_dir=None, ds=None,
                      threshold: float = THRESHOLD, progress: bool | None = False) -> GradcheckResult:
    """Gradcheck a documented network on a real MNIST minibatch.

    The network is built in float64 from ``seed`` exactly as ``nnparity run`` builds
    it, optionally trained for ``burn_in`` SGD steps of its recipe (CS231n: a check
    at initialisation can hide bugs), then checked on the next training batch of the
    run (its first ``batch_size`` samples if given).
    """
    from scratch.optim import SGD

    from nnparity.training import networks
    from nnparity.training.sides import ScratchSide

    net = networks.get(net_name)
    recipe = net.recipe
    if ds is None and raw is None:  # (``ds``: the float64 ``networks.prepare`` of this seed, to reuse)
        raw = net.data.load(data_dir)
    batches = net.data.first_batches(net, recipe, raw, "float64", seed, burn_in + 1, ds=ds)
    model = net.scratch.build(recipe, networks.stream(seed, "init"), np.float64)
    loss_fn = net.scratch.loss(recipe)
    if burn_in:
        side = ScratchSide(model, loss_fn, SGD(model.named_parameters(), recipe.lr, recipe.momentum))
        for _ in range(burn_in):
            side.step(*next(batches))
    x, y = next(batches)
    if batch_size is not None:
        x, y = x[:batch_size], y[:batch_size]
    result = gradcheck_model(model, loss_fn, x, y, samples=samples, eps=eps, seed=seed, threshold=threshold,
                             progress=progress,
                             name=net_name, allowed_zero=net.allowed_zero)
    what = net.data.describe(recipe, y, burn_in + 1)
    result.notes.append(f"loss ({recipe.loss}, {recipe.reduction}) of {what} "
                        f"after {burn_in} SGD step(s) from the seed-{seed} initialisation")
    return result
