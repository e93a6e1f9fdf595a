"""One battery of checks, run on a layer kind of the table (``nnparity.diagnosis.layercases``) or
on a user's layer through the layer protocol (``nnparity.training.adapters.as_layer``).

Per configuration (the documented networks' and the kind's sweep: padding, stride, non-square,
overlapping windows, batch 1, odd sizes), in each mode the kind has (train, eval):

* ``f64``, ``f32``: autograd parity (``layercheck.check_layer``), random non-uniform upstream
  gradients, the suite's tolerances; plus the kind's named inputs (ties, exact zeros, offsets);
* ``fd``: central finite differences of the float64 backward (``gradcheck.gradcheck_layer``);
* ``accumulate``: two forward/backward calls without ``zero_grad``: the parameter gradients must
  be the sum, as torch's accumulated ``.grad`` (a ``=`` where ``+=`` is due passes every
  single-backward check);
* ``nonfinite`` (kinds that route the gradient: max-pool, ReLU, dropout, ...): NaN and +-inf in the
  input, then in the upstream gradient; the outputs and input gradients must be non-finite at
  the same positions as torch's and agree elsewhere;

and once per kind:

* ``f32acc``: float32 against torch float64 on a long reduction with a large offset and a
  non-zero-mean upstream gradient, where accumulation order matters. The tolerance is the
  measured noise floor: ``NOISE_FACTOR`` times torch float32's own error against torch float64 on
  the same inputs (at least one float32 ulp of the tensor's largest value). A reduction summed
  in float32 where torch keeps it accurate is ~sqrt(N) ulp off and fails; rounding does not.
* ``init``: for every ``torch.nn.init`` scheme the kind uses, on every weight shape of its
  configurations (conv shapes included), the mean, standard deviation and share beyond one
  standard deviation of the scratch draw against torch's, at six standard errors.

Every check returns ``Comparison``s (``nnparity.core.parity``), named
``"<configuration>: <check>: <tensor>"``, so messages and patterns work unchanged.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from nnparity.core.parity import Comparison, Tolerance, compare, tolerance_for
from nnparity.diagnosis import layercases

# f32acc: the tolerance is this many times torch float32's own error (the noise floor, measured on
# the same inputs at every run). Measured (python tools/kill_rates.py --floors): the correct scratch
# layers reach at most 1.09x torch's error on these inputs (most of it is the inputs' own float32
# rounding, common to both sides); a bias gradient summed in float32 down 2^18 rows, 63x.
NOISE_FACTOR = 4.0
INIT_SIGMAS = 6.0          # init statistics: standard errors allowed
INIT_VALUES = 6000         # at least this many drawn values per statistic (draws repeated as needed)
FD_SAMPLES = 4             # finite-difference coordinates per tensor
CHECKS = ("f64", "f32", "fd", "accumulate", "nonfinite", "f32acc", "init")


@dataclass
class BatteryReport:
    """Every comparison of the battery on one kind; ``na``: configurations the layer cannot express."""

    name: str
    na: list = field(default_factory=list)
    seconds: float = 0.0
    entries: list = field(default_factory=list, repr=False)   # [(cfg, shape, documented, weight shape, comps)]
    init: dict = field(default_factory=dict, repr=False)      # {weight shape: init comparisons}

    def subset(self, configs, name: str | None = None) -> "BatteryReport":
        """The comparisons of ``configs`` (``[(cfg, shape)]``) and of the sweep, with the init
        statistics of their weight shapes: what ``run_case`` gives on exactly those configurations
        (every configuration's checks depend on it and the seed alone)."""
        keep = [e for e in self.entries if not e[2] or (e[0], e[1]) in configs]
        shapes = list(dict.fromkeys(e[3] for e in keep if e[3] in self.init))
        return BatteryReport(name or self.name, na=self.na, entries=keep, init={k: self.init[k] for k in shapes})

    @property
    def comparisons(self) -> list:
        return [c for e in self.entries for c in e[4]] + [c for v in self.init.values() for c in v]

    @property
    def failures(self) -> list:
        return [c for c in self.comparisons if not c.passed]

    @property
    def mismatches(self) -> list:
        return [c for c in self.comparisons if c.mismatch]

    @property
    def ok(self) -> bool:
        return not self.failures

    def message(self) -> str:
        n = len(self.comparisons)
        na = f"; {len(self.na)} configurations not applicable ({self.na[0]})" if self.na else ""
        if self.ok:
            return f"{self.name} battery: all {n} comparisons pass{na} ({self.seconds:.1f} s)"
        f = self.failures
        more = f"\n({len(f) - 1} more failing: {', '.join(c.name for c in f[1:6])}{', ...' if len(f) > 6 else ''})"
        return f"{self.name} battery: {len(f)} of {n} comparisons fail{na}\n{f[0].describe(self.name)}" + \
            (more if len(f) > 1 else "")

    def raise_if_failed(self) -> "BatteryReport":
        if not self.ok:
            from nnparity.core.parity import ParityError

            raise ParityError(self.message())
        return self


def _named(comps, prefix: str) -> list:
    return [replace(c, name=f"{prefix}: {c.name}") for c in comps]


def _randomise(lay, rng) -> None:
    lay.set_params({k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in lay.params().items()})


# --- the layer checks ------------------------------------------------------------------------

class _Subject:
    """What the battery checks in one configuration: fresh scratch and torch objects each time."""

    def __init__(self, case, cfg, shape, make, make_torch, seed):
        self.case, self.cfg, self.shape, self.seed = case, cfg, shape, seed
        self._make, self._make_torch = make, make_torch

    def fresh(self, dtype=np.float64):
        from nnparity.training.adapters import as_layer

        layer = self._make(dict(self.cfg), np.dtype(dtype))
        lay = as_layer(layer)
        rng = np.random.default_rng([self.seed, 1])
        _randomise(lay, rng)
        if self.case is not None and self.case.prepare is not None:
            self.case.prepare(layer, rng)
        return lay, self._make_torch(dict(self.cfg), layer)


def _autograd(sub, dtype, train, x=None) -> list:
    from nnparity.diagnosis.layercheck import check_layer

    lay, module = sub.fresh(dtype)
    return check_layer(lay, module, None if x is not None else sub.shape, x=x, dtype=dtype, seed=sub.seed,
                       train=train, raise_on_failure=False)


def _fd(sub, train) -> list:
    from nnparity.diagnosis import gradcheck as gc

    lay, _ = sub.fresh()
    r = gc.gradcheck_layer(lay, sub.shape, samples=FD_SAMPLES, seed=sub.seed, train=train)
    return [_fd_comparison(t, r.threshold) for t in r.tensors]


def _fd_comparison(t, threshold) -> Comparison:
    """One tensor of a finite-difference check as a ``Comparison``: its worst coordinate, analytic
    (scratch) against numeric (reference), margin = relative error / the failing threshold."""
    w = t.worst
    tol = Tolerance(0.0, threshold)
    if t.problem or w is None:
        return Comparison(t.name, "finite differences", t.shape, math.nan, math.nan, (), math.nan, math.nan,
                          0.0, tol, degenerate=t.degenerate, problem=None if t.degenerate else t.problem)
    margin = 0.0 if t.zero_by_construction else w.rel / threshold
    return Comparison(t.name, "finite differences", t.shape, w.abs_err, w.rel, w.index, w.analytic, w.numeric,
                      margin, tol)


def _both_sides(sub, dtype):
    """Fresh scratch and torch objects in ``dtype``, training mode, the parameters copied across."""
    from nnparity.training.adapters import copy_to_torch

    lay, module = sub.fresh(dtype)
    lay.astype(dtype)
    lay.train(True)
    module.train(True)
    copy_to_torch(lay, module, dtype)
    return lay, module


def _accumulate(sub, dtype=np.float64) -> list:
    """Two forward/backward calls, no zero_grad between: the gradients must add up, as torch's do."""
    import torch

    lay, module = _both_sides(sub, dtype)
    if not lay.params():
        return []
    tol = tolerance_for(dtype)
    rng = np.random.default_rng([sub.seed, 2])
    xs = [rng.standard_normal(sub.shape).astype(dtype) for _ in range(2)]
    lay.zero_grad()
    module.zero_grad(set_to_none=True)
    for x in xs:
        y = lay.forward(x.copy())
        g = rng.standard_normal(np.shape(y)).astype(dtype)
        lay.backward(g.copy())
        module(torch.from_numpy(x.copy())).backward(torch.from_numpy(g))
    tparams = OrderedDict(module.named_parameters())
    return [compare(f"grad/{k} after 2 backward calls", np.asarray(v), tparams[k].grad.numpy(), tol)
            for k, v in lay.grads().items()]


def _nonfinite(sub, dtype=np.float64) -> list:
    """NaN and +-inf in the input, then in the upstream gradient: the output and the input gradient
    must be non-finite at the same positions as torch's, and agree elsewhere (``compare``)."""
    import torch

    rng = np.random.default_rng([sub.seed, 3])
    tol = tolerance_for(dtype)

    def poison(a):
        a = a.copy()
        flat = a.reshape(-1)
        picks = rng.choice(flat.size, min(3, flat.size), replace=False)
        flat[picks] = [np.nan, np.inf, -np.inf][:len(picks)]
        return a

    x = rng.standard_normal(sub.shape).astype(dtype)
    out = []
    for what, bad_input in (("non-finite input", True), ("non-finite upstream", False)):
        lay, module = _both_sides(sub, dtype)
        xin = poison(x) if bad_input else x.copy()
        undo = lay.input_grad_on()
        try:
            y = np.array(lay.forward(xin.copy()))
            g = rng.standard_normal(y.shape).astype(dtype)
            if not bad_input:
                g = poison(g)
            dx = np.array(lay.backward(g.copy()))
        finally:
            undo()
        xt = torch.from_numpy(xin.copy()).requires_grad_(True)
        yt = module(xt)
        yt.backward(torch.from_numpy(g.copy()))
        out += [compare(f"{what}: out", y, yt.detach().numpy(), tol),
                compare(f"{what}: din", dx, xt.grad.numpy(), tol)]
    return out


def _f32_accumulation(sub, shape, offset) -> list:
    """Scratch float32 and torch float32 against torch float64 on inputs where accumulation
    order matters; tolerance = NOISE_FACTOR x torch float32's own error (the noise floor)."""
    import torch

    rng = np.random.default_rng([sub.seed, 4])
    x = rng.standard_normal(shape) + offset
    runs = {}
    for dt in (np.float32, np.float64):
        lay, module = _both_sides(sub, dt)
        xd = x.astype(dt)
        if xd.ndim == 4:   # channels-last memory, as a convolution's output is laid out
            xd = np.ascontiguousarray(xd.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        lay.zero_grad()
        y = lay.forward(xd)
        if "g" not in runs:
            runs["g"] = rng.standard_normal(np.shape(y)) + 1.0   # non-zero mean: the sums grow
        g = runs["g"].astype(dt)
        if g.ndim == 4:
            g = np.ascontiguousarray(g.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        dx = lay.backward(g)
        scratch = OrderedDict(out=np.asarray(y), din=np.asarray(dx))
        scratch.update((f"grad/{k}", np.array(v)) for k, v in lay.grads().items())
        xt = torch.from_numpy(np.ascontiguousarray(x.astype(dt))).requires_grad_(True)
        yt = module(xt)
        yt.backward(torch.from_numpy(np.ascontiguousarray(runs["g"].astype(dt))))
        ref = OrderedDict(out=yt.detach().numpy(), din=xt.grad.numpy())
        ref.update((f"grad/{k}", p.grad.numpy()) for k, p in module.named_parameters())
        runs[dt] = (scratch, ref)
    (s32, t32), (_, t64) = runs[np.float32], runs[np.float64]
    out = []
    for k, ref in t64.items():
        if k not in s32:
            continue
        ulp = float(np.spacing(np.float32(np.abs(ref).max())))
        floor = max(float(np.abs(t32[k].astype(np.float64) - ref).max()), ulp)
        tol = Tolerance(NOISE_FACTOR * floor, 0.0)
        c = compare(k, s32[k].astype(np.float64), ref, tol)
        c.note = (f"float32 against torch float64, tolerance {NOISE_FACTOR:g} x the noise floor {floor:.3g} "
                  f"(torch float32's own error here)")
        out.append(c)
    return out


# --- initialisation -----------------------------------------------------------------------

def _stats(values: np.ndarray) -> dict:
    s = values.std()
    return {"mean": values.mean(), "std": s, "beyond 1 std": np.mean(np.abs(values - values.mean()) > s)}


def _init_comparisons(init, layer_of, shape_name: str, seed: int) -> list:
    """``init`` on one layer shape, scratch vs torch: mean, std and the share beyond one std
    (the distribution's shape: uniform 0.42, normal 0.32), within INIT_SIGMAS standard errors."""
    import torch

    layer = layer_of()
    size = layer.weight.data.size
    draws = max(1, math.ceil(INIT_VALUES / size))
    rng = np.random.default_rng([seed, 5])
    torch_rng = torch.Generator().manual_seed(seed)
    sw, sb, tw, tb = [], [], [], []
    for _ in range(draws):
        layer = layer_of()
        if layer.bias is not None:
            layer.bias.data[...] = 1.0   # a zero-bias init must set it
        init.apply(layer, rng)
        sw.append(layer.weight.data.ravel().copy())
        w = torch.empty(layer.weight.data.shape, dtype=torch.float64)
        b = torch.ones(layer.bias.data.shape, dtype=torch.float64) if layer.bias is not None else None
        init.torch(w, b, torch_rng)
        tw.append(w.numpy().ravel())
        if layer.bias is not None:
            sb.append(layer.bias.data.ravel().copy())
            tb.append(b.numpy().ravel() if init.bias else np.zeros(b.shape[0]))
    out = []
    for what, s, t in (("weight", sw, tw), ("bias", sb, tb)):
        if not s:
            continue
        s, t = np.concatenate(s)[:4 * INIT_VALUES], np.concatenate(t)[:4 * INIT_VALUES]   # iid: any of them will do
        n = min(s.size, t.size)
        ss, ts = _stats(s), _stats(t)
        sigma = ts["std"]
        if sigma == 0:   # a zero bias: exactly zero on both sides
            out.append(compare(f"{init.name} {shape_name} {what}", s, t, Tolerance(0.0, 0.0)))
            continue
        kurt = float(np.mean((t - t.mean()) ** 4) / sigma ** 4)
        frac = ts["beyond 1 std"]
        se = {"mean": sigma * math.sqrt(2 / n), "std": sigma * math.sqrt(max(kurt - 1, 0.1) / (2 * n)),
              "beyond 1 std": math.sqrt(2 * frac * (1 - frac) / n) + 1 / n}
        for stat in ("mean", "std", "beyond 1 std"):
            c = compare(f"{init.name} {shape_name} {what} {stat}", np.float64(ss[stat]), np.float64(ts[stat]),
                        Tolerance(INIT_SIGMAS * se[stat], 0.0))
            c.note = f"the scratch draw against torch.nn.init's, {INIT_SIGMAS:g} standard errors ({n} values)"
            out.append(c)
    return out


# --- losses and the optimizer -------------------------------------------------------------------

def _loss_checks(case, cfg, shape, seed) -> list:
    from nnparity.diagnosis import gradcheck as gc
    from nnparity.diagnosis.layercheck import check_loss

    rng = np.random.default_rng([seed, 6])
    target = case.target(rng, shape)
    out = []
    for dt in ("float64", "float32"):
        out += _named(check_loss(case.build(dict(cfg), np.dtype(dt)), case.torch(dict(cfg), None), shape, target,
                                 dtype=dt, seed=seed, raise_on_failure=False), dt[:1] + dt[-2:])
    r = gc.gradcheck_loss(case.build(dict(cfg), np.float64), shape, target, samples=FD_SAMPLES, seed=seed)
    return out + _named([_fd_comparison(t, r.threshold) for t in r.tensors], "fd")


def _sgd_checks(cfg, seed) -> list:
    import torch

    from scratch.module import Parameter
    from scratch.optim import SGD

    out = []
    for dt in ("float64", "float32"):
        tol = tolerance_for(dt)
        rng = np.random.default_rng([seed, 7])
        w0 = rng.standard_normal((3, 4)).astype(dt)
        p, pt = Parameter(w0.copy()), torch.nn.Parameter(torch.from_numpy(w0.copy()))
        opt = SGD([("w", p)], lr=cfg["lr"], momentum=cfg["momentum"])
        opt_t = torch.optim.SGD([pt], lr=cfg["lr"], momentum=cfg["momentum"])
        for step in range(1, 4):
            g = rng.standard_normal((3, 4)).astype(dt)
            p.grad[...] = g
            pt.grad = torch.from_numpy(g.copy())
            opt.step()
            opt_t.step()
            out.append(compare(f"{dt[:1]}{dt[-2:]}: param/w", p.data, pt.detach().numpy(), tol, step=step))
            if cfg["momentum"]:
                out.append(compare(f"{dt[:1]}{dt[-2:]}: state/w.momentum_buffer",
                                   opt.state_dict()["w.momentum_buffer"], opt_t.state[pt]["momentum_buffer"].numpy(),
                                   tol, step=step))
    return out


# --- running it ------------------------------------------------------------------------------------

def _not_expressible(e) -> bool:
    from nnparity.training.adapters import ParameterMismatch, ProtocolError

    return isinstance(e, (TypeError, ValueError, ProtocolError, ParameterMismatch))


def configurations(kind: str, net: str | None = None) -> list:
    """``[(cfg, input shape, documented)]``: a network's configurations of ``kind`` (every documented
    network's without ``net``), then the kind's sweep."""
    documented = (layercases.network_configs(net) if net else layercases.documented_configs()).get(kind, [])
    sweep = [e for e in layercases.get_case(kind).sweep() if e not in documented]
    return [(c, s, True) for c, s in documented] + [(c, s, False) for c, s in sweep]


def run_case(case, configs, *, seed: int = 0, checks=CHECKS, make=None, make_torch=None,
             name: str | None = None) -> BatteryReport:
    """The battery on ``configs`` (``[(cfg, shape, documented)]``) of one table ``case``; ``make``
    and ``make_torch`` (``(cfg, dtype) -> layer``, ``(cfg, layer) -> torch``) replace the table's
    factories (a user's layer)."""
    t0 = time.perf_counter()
    report = BatteryReport(name or case.kind)
    make = make or case.build
    make_torch = make_torch or case.torch
    deep_done = False
    for cfg, shape, documented in configs:
        where = layercases.describe_config(cfg, shape)
        wshape = None
        if case.role == "layer":
            try:   # a configuration the layer (or torch) cannot be built with is not applicable, not a failure
                make_torch(dict(cfg), make(dict(cfg), np.dtype(np.float64)))
            except Exception as e:  # noqa: BLE001
                if not _not_expressible(e):
                    raise
                report.na.append(f"{where}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
                continue
        if case.role == "optimizer":
            report.entries.append((cfg, shape, documented, None, _named(_sgd_checks(cfg, seed), where)))
            continue
        if case.role == "loss":
            report.entries.append((cfg, shape, documented, None, _named(_loss_checks(case, cfg, shape, seed),
                                                                        where)))
            continue
        sub = _Subject(case, cfg, shape, make, make_torch, seed)
        comps = []
        deep = documented or not deep_done   # the documented ones, and the first of the sweep it can express
        for md in case.modes if deep else case.modes[:1]:
            train = md == "train"
            for dt in ("float64", "float32"):
                if dt[:1] + dt[-2:] in checks:
                    comps += _named(_autograd(sub, dt, train), f"{dt[:1]}{dt[-2:]} {md}")
        if deep:
            rng = np.random.default_rng([seed, 8])
            for iname in case.inputs:
                comps += _named(_autograd(sub, "float64", True, case.make_input(rng, shape, iname)),
                                f"f64 {iname}")
            if "fd" in checks:
                comps += _named(_fd(sub, True), "fd")
            if "accumulate" in checks:
                comps += _named(_accumulate(sub), "accumulate")
            if case.routes and "nonfinite" in checks:
                comps += _nonfinite(sub)
        if not documented and deep and case.accumulation is not None and "f32acc" in checks:
            acc_shape, offset = case.accumulation(cfg)   # once, on the first configuration of the sweep
            comps += _named(_f32_accumulation(sub, acc_shape, offset), "f32acc")
        if deep and "init" in checks and case.inits:
            layer = make(dict(cfg), np.float64)
            wshape = getattr(getattr(layer, "weight", None), "shape", None)
            if wshape is not None and wshape not in report.init:
                report.init[wshape] = _named(
                    [c for iname in case.inits
                     for c in _init_comparisons(layercases.inits()[iname], lambda: make(dict(cfg), np.float64),
                                                f"{tuple(wshape)}", seed)], "init")
        report.entries.append((cfg, shape, documented, wshape, _named(comps, where)))
        deep_done = deep_done or not documented
    report.seconds = time.perf_counter() - t0
    return report


@contextmanager
def one_thread():
    """One BLAS thread and one torch thread for the block: the battery's tensors are small, and on a
    busy 2-core machine torch's two-thread pool made it ten times slower (measured: conv2d 3.35 s
    with torch's default 2 threads, 0.34 s with one; linear 1.83 s, 0.87 s)."""
    import torch

    from nnparity.core.threads import blas_threads

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with blas_threads(1), np.errstate(invalid="ignore", over="ignore"):
            yield
    finally:
        torch.set_num_threads(before)


def run_battery(kind: str, net: str | None = None, *, seed: int = 0, checks=CHECKS) -> BatteryReport:
    """The battery on one table kind: a network's configurations of it (every documented
    network's without ``net``) and the kind's sweep."""
    with one_thread():
        return run_case(layercases.get_case(kind), configurations(kind, net), seed=seed, checks=checks,
                        name=kind if net is None else f"{net} {kind}")


def network_battery(net: str, *, seed: int = 0) -> list:
    """``[BatteryReport]``: the battery on every table kind ``net`` uses, in its configurations and the sweep."""
    return [run_battery(kind, net, seed=seed) for kind in layercases.network_configs(net)]


__all__ = ["BatteryReport", "CHECKS", "NOISE_FACTOR", "configurations", "network_battery", "run_battery", "run_case"]
