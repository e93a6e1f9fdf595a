"""Whole-run drift between the two sides, judged against a rounding envelope.

**Drift** is the largest relative weight difference between the sides, over
every parameter, optimizer-state and buffer tensor, ``max |a - b| / max |b|``
per tensor (``train.weight_difference``), recorded after each of the run's
first K steps and after every epoch. The momentum buffers of gradients that are
zero by construction are left out (``train.rounding_noise_keys``): they hold
rounding residues only, whose relative difference means nothing.

**The envelope** is measured before training, from the run's initial weights on
its first K batches, with three trajectories:

* ``impl64``: float64 scratch vs float64 torch. In float64 rounding is ~1e-16,
  so this curve is the difference between the two *implementations*;
* ``chaos32``: float32 torch vs float64 torch. The same implementation, so
  this curve is what float32 *rounding alone* does to a training run.

The rounding band of a run in dtype D at step s is

    band_D(s) = 2 * (eps_D / eps_float32) * max_{u <= s} chaos32(u)

float32's rounding chaos, scaled to D's unit roundoff (rounding errors propagate
linearly while they are small), doubled because the two sides round
independently (|a - b| <= |a - exact| + |b - exact|), and kept monotone (a
difference that has appeared does not count as having gone away). Drift above
the band is more difference than rounding explains: an implementation
difference, even when every step passed parity. Beyond the K steps the
envelope is not measured: rounding differences grow chaotically over training,
and per-epoch drift there is shown for information only.
"""

from __future__ import annotations

import math
import time

import numpy as np

from nnparity.training.networks import first_batches, make_sides, side_threads
from nnparity.training.train import rounding_noise_keys, weight_difference

DEFAULT_STEPS = 200
EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


def band(chaos32, dtype) -> list[float]:
    """The rounding band of ``dtype`` at every step of the envelope."""
    scale = 2 * EPS[np.dtype(dtype).name] / EPS["float32"]
    return [scale * v for v in np.maximum.accumulate(np.asarray(chaos32, dtype=np.float64))]


def _cast_draws(draws, dtype):
    return {k: v.astype(dtype) if np.issubdtype(np.asarray(v).dtype, np.floating) else v
            for k, v in (draws or {}).items()}


def measure_envelope(net, recipe, ds, seed: int, steps: int, progress: bool | None = False) -> dict:
    """The two envelope curves over the run's first ``steps`` batches (see the module doc).

    The batches are the run's own (``ds`` in the run's dtype), cast to each trajectory's
    dtype, so all three see the same pixels up to float32 rounding. ``progress``: a bar
    (``nnparity.core.progress``; None: on a terminal only): three training steps per batch,
    200 batches of mlp1000 take half a minute or more.
    """
    from nnparity.core.progress import bar

    t0 = time.perf_counter()
    f32max = float(np.finfo(np.float32).max)
    lrs = [recipe.lr, *(lr for _, lr in recipe.lr_schedule)]
    if max(lrs) > f32max:  # torch's float32 SGD refuses such an lr (it cannot be converted to float)
        return {"steps": 0, "impl64": [], "chaos32": [], "band64": [], "seconds": time.perf_counter() - t0,
                "not_measured": f"lr {max(lrs):g} is larger than float32 can hold ({f32max:.3g}), so the "
                                "envelope's float32 trajectory cannot be run"}
    s64, t64 = make_sides(net, recipe, "float64", seed)
    _, t32 = make_sides(net, recipe, "float32", seed)
    impl, chaos = [], []
    skip = rounding_noise_keys(net)  # momentum buffers of zero-by-construction gradients: noise only
    batches = bar(first_batches(ds, recipe, seed, steps), total=steps, desc="drift envelope", progress=progress)
    # one thread per library, the rule of training: NumPy and torch steps alternate, and neither's idle
    # workers may spin against the other's (nnparity/core/threads.py); torch at 2 threads beside a busy
    # core collapsed to 33-66 ms per mlp1000 step against 2.7-3.0 at one thread (issue 15)
    with side_threads(1):
        for x, y in batches:
            x64 = np.asarray(x, dtype=np.float64)
            s64.step(x64, y)
            draws = s64.draws()
            t64.step(x64, y, draws=draws)
            t32.step(x64.astype(np.float32), y, draws=_cast_draws(draws, np.float32))
            impl.append(weight_difference(s64.state(), t64.state(), skip)[1])
            chaos.append(weight_difference(t32.state(), t64.state(), skip)[1])
    return {"steps": len(impl), "impl64": impl, "chaos32": chaos, "band64": band(chaos, "float64"),
            "seconds": time.perf_counter() - t0}


def _first_exit(points, bands):
    """First (step, value, band) with value above the band, among steps the band covers."""
    for step, value in points:
        if step <= len(bands) and value > bands[step - 1]:
            return step, value, bands[step - 1]
    return None


def assess(envelope: dict, step_drift, history, steps_per_epoch: int, dtype: str) -> dict:
    """The run's drift against the envelope: where (if anywhere) it leaves the band."""
    dtype = np.dtype(dtype).name
    bands = band(envelope["chaos32"], dtype)
    k = envelope["steps"]
    epochs = [(r["epoch"] * steps_per_epoch, r["epoch"], r["max_rel_weight_diff"]) for r in history]
    points = [(s, float(d)) for s, d in step_drift] + [(s, d) for s, _, d in epochs if s <= k]
    points.sort()
    points_all = list(points)
    # A band or a drift that is NaN or infinite judges nothing: where the envelope's own
    # trajectories (or the run) overflowed, the comparison ends (``undefined``).
    bad_band = next((i for i, b in enumerate(bands, 1) if not math.isfinite(b)), None)
    bad_impl = next((i for i, (v, b) in enumerate(zip(envelope["impl64"], envelope["band64"]), 1)
                     if not (math.isfinite(v) and math.isfinite(b))), None)
    bad_drift = next((s for s, d in points if s <= k and not math.isfinite(d)), None)
    undefined = min((v for v in (bad_band, bad_drift) if v is not None), default=None)
    judged = [(s, d) for s, d in points if undefined is None or s < undefined]
    exit_ = _first_exit(judged, bands)
    impl_points = list(enumerate(envelope["impl64"], 1))[:None if bad_impl is None else bad_impl - 1]
    impl_exit = _first_exit(impl_points, envelope["band64"])
    points = judged
    ratios = [(d / bands[s - 1] if bands[s - 1] > 0 else (math.inf if d > 0 else 0.0), s)
              for s, d in points if s <= k]
    worst = max(ratios, default=None)
    out = {
        "dtype": dtype, "envelope_steps": k, "steps_per_epoch": steps_per_epoch,
        "envelope_seconds": envelope["seconds"],
        "impl64": envelope["impl64"], "chaos32": envelope["chaos32"], "band": bands,
        "step_drift": [[int(s), float(d)] for s, d in step_drift],
        "epoch_drift": [[int(s), int(e), float(d)] for s, e, d in epochs],
        "worst_ratio": None if worst is None else {"ratio": worst[0], "step": worst[1]},
        "leaves": None, "impl_leaves": None, "not_measured": envelope.get("not_measured"),
        "undefined": None if undefined is None else {
            "step": undefined, "what": "drift" if undefined == bad_drift else "band",
            "band": bands[undefined - 1] if undefined <= len(bands) else None,
            "drift": next((d for s, d in points_all if s == undefined), None)},
    }
    if exit_:
        s, d, b = exit_
        out["leaves"] = {"step": s, "epoch": math.ceil(s / steps_per_epoch), "drift": d, "band": b}
    if impl_exit:
        s, d, b = impl_exit
        out["impl_leaves"] = {"step": s, "impl64": d, "band64": b}
    return out


def _values(u: dict) -> str:
    vals = [f"{k} {u[k]:.3g}" for k in ("drift", "band") if u.get(k) is not None]
    return f" ({', '.join(vals)})" if vals else ""


def verdict(d: dict) -> str:
    """One sentence: inside the envelope, or where drift leaves it, or why it cannot be judged."""
    k = d["envelope_steps"]
    if d.get("not_measured"):
        return f"drift not judged: no rounding envelope was measured ({d['not_measured']})."
    if d["leaves"]:
        v = d["leaves"]
        check = d.get("check_command", "nnparity check NET")  # the run names its network (older reports: NET)
        return (f"drift LEAVES the rounding envelope at step {v['step']} (epoch {v['epoch']}): "
                f"{v['drift']:.3g} > band {v['band']:.3g}. That is more difference than rounding explains: "
                f"run `{check} --steps {v['step']} --dtype {d['dtype']}` to localise it.")
    u = d.get("undefined")
    if u:
        what = ("the drift itself is not finite" if u["what"] == "drift" else
                "the rounding band is not finite (the envelope's own trajectories overflowed at this learning rate)")
        before = "; before it, drift stays inside the band" if u["step"] > 1 else ""
        return (f"drift cannot be judged from step {u['step']} on: {what}{_values(u)}{before}. "
                "Nothing says the run stayed inside the rounding envelope.")
    if d["impl_leaves"]:
        v = d["impl_leaves"]
        return (f"drift stays inside the {d['dtype']} envelope, but the float64 scratch-vs-torch difference "
                f"leaves the float64 band at step {v['step']} ({v['impl64']:.3g} > {v['band64']:.3g}): an "
                "implementation difference below the parity tolerance.")
    w = d["worst_ratio"]
    tail = f" (largest drift / band {w['ratio']:.2g}, at step {w['step']})" if w else ""
    return f"drift stays inside the rounding envelope over the {k} steps it covers{tail}."


def markdown(d: dict, heading: str | None = "## Drift between the sides") -> str:
    """The report's drift section (``heading=None``: its body only)."""
    k, spe = d["envelope_steps"], d["steps_per_epoch"]
    last = d["epoch_drift"][-1] if d["epoch_drift"] else None
    if not k:  # no envelope (not measured): nothing to judge against
        return "\n".join(([heading, ""] if heading else []) + [f"**Verdict:** {verdict(d)}"])
    lines = ([heading, ""] if heading else []) + [
             "Drift = the largest relative weight difference between the two sides, max over tensors of "
             "max|scratch - torch| / max|torch| (parameters, optimizer state, buffers; not the momentum buffers "
             "of gradients that are zero by construction, which hold rounding residues only), after each of the first "
             f"{k} steps and after every epoch ({spe} steps per epoch). It is judged against a rounding envelope "
             f"measured before training over the same first {k} steps, from the same initial weights on the "
             f"same batches ({d['envelope_seconds']:.1f} s):", "",
             f"- float64 scratch vs float64 torch (implementations, rounding negligible): "
             f"{d['impl64'][-1]:.3g} at step {k};",
             f"- float32 torch vs float64 torch (float32 rounding alone, one implementation): "
             f"{d['chaos32'][-1]:.3g} at step {k};",
             f"- the band of this {d['dtype']} run: 2 x (eps_{d['dtype']} / eps_float32) x the running maximum of "
             f"the float32 curve: {d['band'][-1]:.3g} at step {k}.",
             "", f"**Verdict:** {verdict(d)} The plot `drift.png` shows the drift with the envelope."]
    if last and last[0] > k:
        lines += ["", f"Beyond step {k} the envelope is not measured; per-epoch drift there is shown for "
                      f"information (it reached {last[2]:.3g} at epoch {last[1]}): over a long run rounding "
                      "differences grow chaotically and no longer separate an implementation error from rounding."]
    return "\n".join(lines)


def figure(d: dict, title: str):
    """Drift per step and per epoch, with the envelope curves and the band (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    draw(ax, d, f"{title}: drift between the sides")
    return fig


def draw(ax, d: dict, title: str, drift_label: str = "drift") -> None:
    """``figure``'s plot on a given matplotlib axes (for reports with several panels).

    Every line is named in the legend and every legend entry can be seen: the envelope
    curves are drawn on top of the drift (in a float64 run the float64 scratch-vs-torch
    curve *is* the per-step drift, and in a float32 run the float32 curve runs along it),
    and a curve that coincides with another says so in its label."""
    floor = 1e-18

    def clip(vs):
        return [max(v, floor) for v in vs]

    def below(vs):  # a note for values drawn at the floor (zero, or smaller than the axis shows)
        return f" (values < {floor:g} drawn at {floor:g})" if any(v < floor for v in vs) else ""

    def same_as_drift(curve):
        drift_steps = [v for _, v in d["step_drift"]]
        return len(drift_steps) == len(curve) > 0 and np.allclose(curve, drift_steps, rtol=1e-12, atol=0)

    k = d["envelope_steps"]
    steps = list(range(1, k + 1))
    if d["step_drift"]:
        values = [v for _, v in d["step_drift"]]
        ax.plot([s for s, _ in d["step_drift"]], clip(values), color="tab:red", lw=1.6, zorder=2,
                label=f"{drift_label}, per step{below(values)}")
    if d["epoch_drift"]:
        values = [v for _, _, v in d["epoch_drift"]]
        ax.plot([s for s, _, _ in d["epoch_drift"]], clip(values), "o-",
                color="tab:purple", ms=3, lw=1, zorder=2, label=f"{drift_label}, per epoch{below(values)}")
    if k:
        ax.fill_between(steps, floor, clip(d["band"]), color="tab:green", alpha=0.15, zorder=1,
                        label=f"rounding band ({d['dtype']}): drift below its upper edge is rounding")
        same = " (= the drift per step: a float64 run)" if same_as_drift(d["impl64"]) else ""
        ax.plot(steps, clip(d["impl64"]), color="black", ls=(0, (4, 3)), lw=1, zorder=3,
                label=f"envelope: float64 scratch vs torch{same}{below(d['impl64'])}")
        ax.plot(steps, clip(d["chaos32"]), color="darkolivegreen", ls=(0, (1, 1.5)), lw=1.6, zorder=3,
                label=f"envelope: float32 vs float64 torch{below(d['chaos32'])}")
        ax.axvline(k, color="tab:green", ls="-", lw=0.8, alpha=0.6, zorder=1,
                   label=f"end of the per-step record (step {k}): per epoch after")
    if d["leaves"]:
        ax.axvline(d["leaves"]["step"], color="tab:red", ls="--", lw=1, zorder=1,
                   label=f"drift leaves the band (step {d['leaves']['step']})")
    ax.set(xscale="log", yscale="log", xlabel="training step", ylabel="max relative weight difference",
           title=title)
    ax.grid(alpha=0.3)
    # below the axes: inside, seven entries would cover the curves they name
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=1, frameon=False)
