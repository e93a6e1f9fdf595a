"""``nnparity check NET``: step parity with a per-step table, the first divergence, and
whether it is the diverging layer's own error or one it inherited; and the
noise floor that the tolerances are judged against (``--noise-floor``).

    nnparity check mlp1000 --steps 50 --dtype float32
    nnparity check mlp1000 --json                 # the same, for machines
    nnparity check mlp1000 --noise-floor          # float64 and float32 floors over 50 steps

(``nnparity parity`` is the same command under its former name.)
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from nnparity.core import data as mnist
from nnparity.core import io
from nnparity.diagnosis.localize import Diagnosis, Localizer, Vanished
from nnparity.training.networks import first_batches, get, make_sides, prepare, run_parity
from nnparity.core.parity import TOLERANCES, Trace, _json_default, compare, draws_random_mask, tolerance_for


# ``nnparity check`` exit statuses: 1 only on a real mismatch; an inconclusive check (no
# mismatch, but gradients that vanished on both sides, so some comparisons proved nothing)
# has its own status, the same number as ``nnparity run``'s ``collapsed``.
EXIT_PASS, EXIT_MISMATCH, EXIT_INCONCLUSIVE = 0, 1, 4


@dataclass
class CheckResult:
    """A parity run and, if it failed, the diagnosis of its first divergence; if gradients
    vanished on both sides (degenerate comparisons), what made them vanish."""

    trace: Trace
    diagnosis: Diagnosis | None
    seed: int = 0
    injected: object = None   # the selftest bug patched in (``--inject``): a ``bugs.Bug``
    vanished: Vanished | None = None
    plots: list = None        # heatmaps written of the failing tensors (``--plot DIR``)
    battery: list | None = None   # ``BatteryReport`` per layer kind the network uses (None: not run)
    battery_seconds: float = 0.0

    @property
    def battery_mismatches(self) -> list:
        return [c for r in self.battery or () for c in r.mismatches]

    @property
    def ok(self) -> bool:
        return self.trace.ok and not self.battery_mismatches

    @property
    def status(self) -> str:
        """``pass``, ``mismatch`` or ``degenerate`` (inconclusive: see ``Trace.status``); a real
        mismatch of the battery section is a mismatch too."""
        return "mismatch" if self.battery_mismatches else self.trace.status

    def battery_lines(self) -> list[str]:
        if self.battery is None:
            return []
        n = sum(len(r.comparisons) for r in self.battery)
        bad = [r for r in self.battery if not r.ok]
        import textwrap

        head = (f"BATTERY ({len(self.battery)} kinds, {n} comparisons, {self.battery_seconds:.1f} s): every layer "
                f"kind {self.trace.net} uses, in its configurations and the sweep around them "
                f"(nnparity.diagnosis.battery: autograd in float64 and float32, finite differences, two "
                f"accumulating backwards, non-finite routing, float32 on long reductions, train and eval, "
                f"init statistics)")
        lines = ["", *textwrap.wrap(head, 100, subsequent_indent="  ")]
        for r in self.battery:
            lines.append(f"  {'FAIL' if not r.ok else 'pass'}  {r.name}: {len(r.comparisons)} comparisons"
                         + (f", {len(r.failures)} failing" if not r.ok else "")
                         + (f", {len(r.na)} configurations not applicable" if r.na else ""))
        for r in bad:
            lines += ["", r.message()]
        return lines

    @property
    def exit_status(self) -> int:
        return {"pass": EXIT_PASS, "mismatch": EXIT_MISMATCH}.get(self.status, EXIT_INCONCLUSIVE)

    def vanished_lines(self) -> list[str]:
        if self.vanished is None:
            return []
        head = "OVERFLOWED ON BOTH SIDES" if self.vanished.overflow else "GRADIENTS VANISHED ON BOTH SIDES"
        return [f"{head} (inconclusive, not a bug): {self.vanished.sentence()}."]

    def render(self, every: int | None = None) -> str:
        tr = self.trace
        every = every or max(1, len(tr.steps) // 25)
        lines = [f"{tr.net} {tr.dtype}, seed {self.seed}: step parity over {len(tr.steps)} steps "
                 f"(tolerance atol {tr.tol.atol:g} + rtol {tr.tol.rtol:g} |reference|)", "",
                 tr.table(every=every, metric="max_rel"), ""]
        if self.injected:
            bug = self.injected
            lines.insert(1, f"injected bug {bug.name}: {bug.description} [{bug.target}]")
        if tr.ok and self.battery_mismatches:
            lines.append(f"FAIL: step parity passes (worst margin {tr.worst_margin():.3g}), the battery does not "
                         f"({len(self.battery_mismatches)} mismatching comparisons, below)")
        elif tr.ok:
            lines.append(f"PASS: all {len(tr.comparisons)} comparisons within tolerance; "
                         f"worst margin {tr.worst_margin():.3g} (<= 1 passes)")
        elif tr.status == "degenerate":
            deg = tr.degenerate
            lines.append(f"INCONCLUSIVE: no mismatch (worst margin {tr.worst_margin():.3g}), but {len(deg)} "
                         f"comparison{'s' * (len(deg) != 1)} over {len({c.step for c in deg})} steps "
                         f"{'are' if len(deg) != 1 else 'is'} inconclusive ("
                         f"{'non-finite' if any(c.overflow for c in deg) else 'zero'} on both sides), proving nothing. "
                         "No layer is blamed.")
            lines += self.vanished_lines() or [tr.message()]
        else:
            n = len(tr.failures)
            lines.append(f"FAIL: {n} failing comparison{'s' * (n != 1)} over {len(tr.steps)} steps "
                         f"({len({c.name for c in tr.failures})} tensors)")
            if self.diagnosis is not None:
                lines += ["", self.diagnosis.render()]
            else:
                lines.append(tr.message())
            if self.vanished is not None:
                lines += [""] + self.vanished_lines()
        lines += [f"heatmap of scratch - reference: {p}" for p in self.plots or []]
        return "\n".join(lines + self.battery_lines())

    def to_dict(self) -> dict:
        d = self.trace.to_dict()
        d["seed"] = self.seed
        d["injected"] = self.injected.name if self.injected else None
        d["summary"] = self.trace.summary()
        d["diagnosis"] = self.diagnosis.to_dict() if self.diagnosis else None
        d["vanished"] = self.vanished.to_dict() if self.vanished else None
        d["plots"] = list(self.plots or [])
        d["status"] = self.status
        d["battery"] = None if self.battery is None else {
            "seconds": self.battery_seconds,
            "kinds": [{"kind": r.name, "ok": r.ok, "comparisons": len(r.comparisons),
                       "failing": [c.describe() for c in r.failures[:20]], "not_applicable": r.na}
                      for r in self.battery]}
        return d

    def to_json(self) -> str:
        return json.dumps(io.finite(self.to_dict()), indent=1, default=_json_default)


def run_check(name: str, steps: int = 50, dtype="float64", seed: int = 0, raw=None, *, recipe=None,
              ds=None, battery: bool = False) -> CheckResult:
    """Step parity of a documented network, localising the first divergence if any; with ``battery``
    (what ``nnparity check`` does unless ``--no-battery``), then the battery on every layer kind it
    uses (``nnparity.diagnosis.battery``). ``nnparity run``'s parity gate is step parity alone."""
    import time

    net = get(name)
    loc = Localizer(allowed_zero=net.allowed_zero)
    trace = run_parity(name, steps, dtype, seed, raw, recipe=recipe, ds=ds, observer=loc)
    result = CheckResult(trace, loc.diagnosis, seed, vanished=loc.vanished)
    if battery:
        from nnparity.diagnosis.battery import network_battery

        t0 = time.perf_counter()
        result.battery = network_battery(name, seed=seed)
        result.battery_seconds = time.perf_counter() - t0
    return result


# --- the noise floor ------------------------------------------------------------------

def _per_quantity(comparisons) -> "OrderedDict[str, dict]":
    """Per kind of quantity: worst margin (with tensor and step), max abs and max rel error."""
    out = OrderedDict()
    for c in comparisons:
        if c.problem:
            continue
        q = out.setdefault(c.quantity, {"margin": 0.0, "name": c.name, "step": c.step, "max_abs": 0.0,
                                        "max_rel": 0.0})
        if c.margin >= q["margin"]:
            q.update(margin=c.margin, name=c.name, step=c.step)
        q["max_abs"] = max(q["max_abs"], c.max_abs)
        q["max_rel"] = max(q["max_rel"], c.max_rel)
    return out


def torch32_vs_torch64(name: str, steps: int, seed: int, raw, *, recipe=None, ds=None) -> list:
    """float32 chaos: the torch model in float32 against itself in float64 from the same
    initial weights on the same batches, every recorded tensor compared (cast to
    float64) with the float32 tolerance. Only rounding separates the two runs."""
    net = get(name)
    recipe = recipe or net.recipe
    ds = ds or prepare(net, recipe, raw, "float64", seed)
    s64, t64 = make_sides(net, recipe, "float64", seed)
    _, t32 = make_sides(net, recipe, "float32", seed)
    tol = TOLERANCES["float32"]
    needs_draws = any(draws_random_mask(m) for _, m in s64.model.named_modules())
    comps = []
    for i, (x, y) in enumerate(first_batches(ds, recipe, seed, steps), 1):
        draws = None
        if needs_draws:  # the scratch side draws the masks both torch runs use
            s64.step(x, y)
            draws = s64.draws()
        a = t64.step(x, y, record=True, draws=draws)
        b = t32.step(x.astype(np.float32), y, record=True, draws=_cast_draws(draws, np.float32))
        for k, ref in a.record.items():
            if k in b.record:
                comps.append(compare(k, b.record[k].astype(np.float64), ref, tol, step=i))
    return comps


def _cast_draws(draws, dtype):
    if not draws:
        return draws
    return {k: v.astype(dtype) if np.issubdtype(np.asarray(v).dtype, np.floating) else v for k, v in draws.items()}


def noise_floor(name: str, steps: int = 50, seed: int = 0, raw=None) -> dict:
    """Measured floors over the first ``steps`` training steps: scratch vs torch in
    float64 and in float32, and torch float32 vs torch float64 (float32 chaos)."""
    net = get(name)
    raw = raw or mnist.load_mnist()
    out = {"net": name, "steps": steps, "seed": seed,
           "tolerances": {k: {"atol": v.atol, "rtol": v.rtol} for k, v in TOLERANCES.items()}, "floors": {}}
    for dtype in ("float64", "float32"):
        trace = run_parity(name, steps, dtype, seed, raw)
        out["floors"][f"scratch vs torch {dtype}"] = {"dtype": dtype, "ok": trace.ok,
                                                      "quantities": _per_quantity(trace.comparisons)}
    ds = prepare(net, net.recipe, raw, "float64", seed)
    out["floors"]["torch float32 vs torch float64"] = {
        "dtype": "float32", "quantities": _per_quantity(torch32_vs_torch64(name, steps, seed, raw, ds=ds))}
    return out


def render_noise_floor(nf: dict) -> str:
    lines = [f"noise floor of {nf['net']} over its first {nf['steps']} training steps (seed {nf['seed']}):",
             "the worst error of each kind of tensor, and its margin under TOLERANCES "
             "(worst |a-b| / (atol + rtol |b|); headroom = 1 / margin)", ""]
    for label, floor in nf["floors"].items():
        tol = tolerance_for(floor["dtype"])
        qs = floor["quantities"]
        worst = max(qs.values(), key=lambda q: q["margin"], default=None)
        lines.append(f"{label}   (tolerance atol {tol.atol:g}, rtol {tol.rtol:g})")
        lines.append(f"  {'quantity':<20} {'max abs':>10} {'max rel':>10} {'margin':>10}  worst tensor (step)")
        for q, v in qs.items():
            lines.append(f"  {q:<20} {v['max_abs']:>10.3g} {v['max_rel']:>10.3g} {v['margin']:>10.3g}  "
                         f"{v['name']} ({v['step']})")
        if worst is not None:
            head = 1 / worst["margin"] if worst["margin"] else math.inf
            lines.append(f"  worst margin {worst['margin']:.3g} at {worst['name']} (step {worst['step']}): "
                         f"headroom {head:.3g}x")
        lines.append("")
    return "\n".join(lines).rstrip()


def noise_floor_ok(nf: dict) -> bool:
    """The tolerances hold: scratch vs torch passes in both dtypes."""
    return all(f.get("ok", True) for f in nf["floors"].values())


def noise_floor_json(nf: dict) -> str:
    return json.dumps(io.finite(nf), indent=1, default=_json_default)

