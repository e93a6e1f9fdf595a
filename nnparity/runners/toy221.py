"""``nnparity run toy221``: the hand-worked 2-2-2 net, both sides, one run per
learning rate, every step recorded.

    nnparity run toy221 [--weights w1,...,w8] [--biases b1,b2] [--freeze-biases]
                        [--lr LR [LR ...]] [--steps N] [--dtype float64|float32]

For each learning rate, both sides start from the same weights and take N
full-batch gradient-descent steps on the one sample. ``metrics.json`` holds, for
every learning rate and side, one record per step k = 0..N: the weights after k
updates (``w1`` ... ``w8``, ``b1``, ``b2`` when present) and the ``E_total`` and
outputs ``out_o1``, ``out_o2`` at them, at full float64 precision (JSON floats
round-trip exactly). Every recorded number is compared between the sides
(floor: 1e-12 absolute in float64), and so is every intermediate of every step
(activations, upstream and parameter gradients, updated weights) with the same
tolerance. A disagreement fails the run with exit status 1.

The report: E_total at steps 0, 1, 10, 100 and the last for every learning rate
and side, the eight derivatives at step 0, and one loss-vs-step plot per
learning rate with both sides overlaid.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np

from scratch.nets import toy221 as toy

from .. import io
from ..networks import apply_threads, get, make_sides
from ..parity import Trace, compare_records
from ..report import COLORS, STYLES, environment
from ..sides import gradient_notes
from . import UsageError, compact_json

NET = "toy221"
FLOOR = {"float64": 1e-12}  # the tolerance of the entry (networks.py), named in the report
SEVERAL_LRS = True  # --lr LR [LR ...]: one run each (default: 0.1 0.2 0.5 0.8 1.0 2.0)

UNSUPPORTED = {
    "epochs": "toy221 counts gradient-descent steps: use --steps N",
    "train_size": "toy221 trains on its one documented sample",
    "test_size": "toy221 has no test set",
    "data_dir": "toy221 does not use MNIST",
    "parity_steps": "toy221 compares both sides at every step of every run",
    "batch_size": "toy221 trains on its one documented sample",
    "save_every": "a toy221 run takes seconds: rerun it",
    "resume": "a toy221 run takes seconds: rerun it",
    "envelope_steps": "toy221 compares every step of every run at 1e-12; there is no drift to bound",
}


def _floats(count: int, what: str):
    def parse(text: str) -> tuple:
        parts = [p for p in text.replace(" ", "").split(",")]
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers {what}, got {text!r}") from None
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers {what}, "
                                             f"got {len(values)} in {text!r}")
        if not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected finite numbers {what}, got {text!r}")
        return values
    return parse


def add_arguments(group) -> None:
    from ..cli import positive_int

    group.add_argument("--weights", type=_floats(8, "w1,...,w8"), metavar="W1,...,W8", default=None,
                       help="initial weights (default: the document's 0.15,0.2,0.25,0.3,0.4,0.45,0.5,0.55)")
    group.add_argument("--biases", type=_floats(2, "b1,b2"), metavar="B1,B2", default=None,
                       help="add biases: b1 shared by h1, h2 and b2 by o1, o2 (default: none, as documented)")
    group.add_argument("--freeze-biases", action="store_true", default=False,
                       help="keep the biases constant (as Matt Mazur's example does); default: trained")
    group.add_argument("--steps", type=positive_int, default=None,
                       help="gradient-descent steps per run (default 181)")


def check_arguments(args) -> None:
    if getattr(args, "freeze_biases", False) and getattr(args, "biases", None) is None:
        raise UsageError("--freeze-biases needs biases to freeze: add --biases B1,B2")


def recipe_from(args) -> toy.ToyRecipe:
    """The documented recipe with the command line's changes."""
    r = toy.RECIPE
    changes = {}
    if getattr(args, "weights", None) is not None:
        changes["weights"] = tuple(args.weights)
    if getattr(args, "biases", None) is not None:
        changes.update(biases=tuple(args.biases), freeze_biases=bool(args.freeze_biases))
    if getattr(args, "lr", None):
        changes.update(lrs=tuple(args.lr), lr=args.lr[0])
    if getattr(args, "steps", None):
        changes["epochs"] = args.steps
    if getattr(args, "dtype", None):
        changes["dtype"] = args.dtype
    if "weights" in changes or "biases" in changes:
        w = changes.get("weights", r.weights)
        b = changes.get("biases")
        changes["init"] = (f"w1..w8 = {', '.join(map(repr, w))}; " +
                           ("no biases" if b is None else
                            f"b1 = {b[0]!r}, b2 = {b[1]!r} ({'frozen' if changes['freeze_biases'] else 'trained'})"))
    return dataclasses.replace(r, **changes)


def _names(recipe) -> tuple:
    return toy.WEIGHTS + (toy.BIASES if recipe.biases is not None else ())


def _record(step: int, rec, weights: dict) -> dict:
    out = rec["out/sigmoid_o"]
    row = {"step": step, "E_total": float(rec["loss"]), "out_o1": float(out[0, 0]), "out_o2": float(out[0, 1])}
    row.update(weights)
    return row


def _weights(side, names) -> dict:
    state = {k.split("/", 1)[1]: v for k, v in side.state().items()}
    return {n: float(state[n]) for n in names}


def train_lr(recipe: toy.ToyRecipe, lr: float, dtype: str = "float64") -> dict:
    """Both sides, ``recipe.epochs`` steps at ``lr``: records, comparisons, agreement."""
    r = dataclasses.replace(recipe, lr=lr)
    scratch, ref = make_sides(get(NET), r, dtype, seed=0)
    x, t = toy.data(r, dtype)
    names = _names(r)
    tol = get(NET).tolerance(dtype)
    trace = Trace(NET, dtype, tol)
    notes = gradient_notes(scratch.model)
    records = {"scratch": [], "torch": []}
    grads0 = {}
    for k in range(r.epochs + 1):
        # record k: the weights after k updates, E_total and outputs at them (the step then updates:
        # after the last record that update is not needed, and not recorded)
        before = {side.name: _weights(side, names) for side in (scratch, ref)}
        s = scratch.step(x, t, record=True)
        o = ref.step(x, t, record=True)
        trace.steps.append(compare_records(s.record, o.record, tol, k + 1, notes=notes))
        if k == 0:
            grads0 = {side: {n: float(res.record[f"grad/{n}"]) for n in names if f"grad/{n}" in res.record}
                      for side, res in (("scratch", s), ("torch", o))}
        for side, res in (("scratch", s), ("torch", o)):
            records[side].append(_record(k, res.record, before[side]))
    diff = max(abs(a[key] - b[key]) for a, b in zip(records["scratch"], records["torch"]) for key in a)
    return {"lr": lr, "max_abs_diff": diff, "parity": {k: v for k, v in trace.to_dict().items() if k != "per_step"},
            "parity_ok": trace.ok, "parity_message": trace.message(), "grads_step0": grads0,
            "scratch": records["scratch"], "torch": records["torch"]}


def _table_steps(n: int) -> list:
    return sorted({s for s in (0, 1, 10, 100, n) if s <= n})


def render(meta: dict, runs: list) -> str:
    r = meta["recipe"]
    n = r["epochs"]
    floor = FLOOR.get(meta["dtype"])
    lines = ["# toy221: scratch (NumPy) vs PyTorch, side by side", "",
             f"Produced by `{meta['command']}` ({meta['dtype']}).  ",
             f"Status: **{meta['status']}**" + (f" - {meta['status_detail']}" if meta.get("status_detail") else "")
             + f"; {len(runs)} learning rate{'s' * (len(runs) != 1)}, {n} steps each.", "",
             f"Source document: {r['source']}.", "", "## Recipe", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r.items() if k != "choices"]
    lines += ["", "Choices made where the document is silent:", ""] + [f"- {c}" for c in r["choices"]]
    lines += ["", "## Agreement of the two sides", "",
              "Every recorded number (E_total, out_o1, out_o2 and every weight, at every step) compared "
              "between the sides, and every intermediate of every step (activations, upstream and parameter "
              "gradients, updated weights) with tolerance "
              f"atol {runs[0]['parity']['tolerance']['atol']:g} + rtol {runs[0]['parity']['tolerance']['rtol']:g}"
              + (f" (the floor: {floor:g} absolute)" if floor else "") + ".", "",
              "| lr | max abs difference, recorded numbers | worst parity margin (<= 1 passes) | result |",
              "|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run['lr']:g} | {run['max_abs_diff']:.3g} | {run['parity']['worst_margin']:.3g} "
                     f"| {'pass' if run['parity_ok'] else 'FAIL'} |")
    steps = _table_steps(n)
    lines += ["", "## E_total", "", "| lr | side | " + " | ".join(f"step {s}" for s in steps) + " |",
              "|---|---|" + "---|" * len(steps)]
    for run in runs:
        for side in ("scratch", "torch"):
            lines.append(f"| {run['lr']:g} | {side} | "
                         + " | ".join(f"{run[side][s]['E_total']:.17g}" for s in steps) + " |")
    g = runs[0]["grads_step0"]
    lines += ["", "## The derivatives at step 0", "",
              "dE/dw at the initial weights (the same for every learning rate), from the written-out chain "
              "rule (scratch) and from autograd (torch):", "", "| | scratch | torch | difference |",
              "|---|---|---|---|"]
    lines += [f"| dE/d{k} | {g['scratch'][k]:.17g} | {g['torch'][k]:.17g} | {g['scratch'][k] - g['torch'][k]:.3g} |"
              for k in g["scratch"]]
    names = _names_from(runs[0]["scratch"][-1])
    lines += ["", f"## Weights after {n} steps (scratch; torch agrees to the difference above)", "",
              "| lr | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {run['lr']:g} | " + " | ".join(f"{run['scratch'][-1][k]:.12g}" for k in names) + " |"
              for run in runs]
    lines += ["", "Other published versions of this net: `nnparity run toy221 --biases 0.35,0.6 --freeze-biases "
              "--lr 0.5` is Matt Mazur's \"A Step by Step Backpropagation Example\" (E_total 0.298371109 at "
              "step 0; after one step w5 = 0.35891648, w1 = 0.149780716, reproduced by the test suite)."]
    lines += ["", "## Plots", ""] + [f"![{Path(f).stem}]({f})" for f in meta["figures"]]
    env = meta.get("environment", {})
    lines += ["", "## Environment", "", ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    return "\n".join(lines)


def _names_from(record: dict) -> list:
    return [k for k in record if k[0] in "wb" and k[1:].isdigit()]


def _plots(runs: list) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    for run in runs:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for side in ("scratch", "torch"):
            rows = run[side]
            ax.plot([q["step"] for q in rows], [q["E_total"] for q in rows], STYLES[side], color=COLORS[side],
                    label=side)
        ax.set(xlabel="step", ylabel="E_total", title=f"toy221: E_total vs step, lr {run['lr']:g}")
        ax.grid(alpha=0.3)
        ax.legend()
        figs[f"loss_lr{run['lr']:g}.png"] = fig
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for run in runs:
        ax.plot([q["step"] for q in run["scratch"]], [q["E_total"] for q in run["scratch"]], label=f"lr {run['lr']:g}")
    ax.set(xlabel="step", ylabel="E_total", title="toy221: all learning rates (scratch)")
    ax.grid(alpha=0.3)
    ax.legend()
    figs["loss_all.png"] = fig
    return figs


def figures_from_metrics(metrics: dict, folder) -> dict:
    """The report's plots drawn again from its ``metrics.json`` (``nnparity.report.rerender``)."""
    return _plots(metrics["runs"])


def run(args) -> int:
    from ..run import EXIT_OK, EXIT_PARITY, finish_folder, log
    from ..signals import handled_signals

    apply_threads(get(NET))
    recipe = recipe_from(args)
    dtype = recipe.dtype
    folder = io.RunFolder(args.out, NET)
    meta = {"net": NET, "command": args.command_line, "dtype": dtype, "status": "incomplete",
            "recipe": recipe.as_dict(), "environment": environment()}
    log(f"{NET}: {recipe.summary()}")
    with handled_signals(), folder:
        runs = []
        for lr in recipe.lrs:
            res = train_lr(recipe, lr, dtype)
            runs.append(res)
            first, last = res["scratch"][0], res["scratch"][-1]
            log(f"lr {lr:<5g} E_total step 0 {first['E_total']:.17g}  step {len(res['scratch']) - 1} "
                f"{last['E_total']:.17g}   max |scratch - torch| {res['max_abs_diff']:.3g}  "
                f"parity {'ok' if res['parity_ok'] else 'FAILED'} (worst margin {res['parity']['worst_margin']:.3g})")
        failed = [r for r in runs if not r["parity_ok"]]
        meta["status"] = "parity-failed" if failed else "complete"
        if failed:
            meta["status_detail"] = failed[0]["parity_message"].splitlines()[0]
        dest = finish_folder(folder, not failed, lambda path: _write(path, meta, runs))
    if failed:
        log(f"PARITY FAILED at lr {failed[0]['lr']:g}:\n{failed[0]['parity_message']}")
    log(f"report: {dest / 'report.md'}")
    return EXIT_PARITY if failed else EXIT_OK


def _write(out_dir: Path, meta: dict, runs: list) -> None:
    """metrics.json, the plots and report.md into ``out_dir``, each atomically."""
    import matplotlib.pyplot as plt

    figs = _plots(runs)
    meta["figures"] = list(figs)
    io.write_text(out_dir / "metrics.json", compact_json({**meta, "runs": [
        {k: v for k, v in r.items() if k != "parity_message"} for r in runs]}) + "\n")
    for name, fig in figs.items():
        io.write_figure(out_dir / name, fig)
    for fig in figs.values():
        plt.close(fig)
    io.write_text(out_dir / "report.md", render(meta, runs))
