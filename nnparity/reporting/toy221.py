"""What ``nnparity run toy221`` adds to the generic every-step run (``run.train_steps``):
the numbers recorded at every step, and its report.

Its entry (``networks.NETWORKS["toy221"]``) brings its own sample (``OwnSamples``),
sweeps the learning rates (``--lr LR [LR ...]``, default 0.1 0.2 0.5 0.8 1.0 2.0) and
declares ``--weights``, ``--biases``, ``--freeze-biases`` and ``--steps``. For each
learning rate both sides start from the same weights and take N full-batch steps;
``metrics.json`` holds, for every learning rate and side, one record per step
k = 0..N: the weights after k updates (``w1`` ... ``w8``, ``b1``, ``b2`` when present)
and the ``E_total`` and outputs ``out_o1``, ``out_o2`` at them, at full float64
precision (JSON floats round-trip exactly). Every recorded number is compared between
the sides, and so is every intermediate of every step, at the entry's tolerance (1e-12
absolute in float64). A disagreement fails the run with exit status 1.

The report: E_total at steps 0, 1, 10, 100 and the last for every learning rate and
side, the eight derivatives at step 0, and one loss-vs-step plot per learning rate
with both sides overlaid.
"""

from __future__ import annotations

from pathlib import Path

from scratch.nets import toy221 as toy

from nnparity.core import io
from nnparity.training.networks import get
from nnparity.reporting.report import COLORS, STYLES, _close, _plt, recipe_lines, tail_lines

NET = "toy221"
LOSS = "E_total"  # the recorded loss, for the run's log


def recorded(recipe) -> tuple:
    """The parameters recorded at every step."""
    return toy.WEIGHTS + (toy.BIASES if recipe.biases is not None else ())


def record(step: int, rec, weights: dict) -> dict:
    """Record ``step``: E_total and the outputs at the weights after ``step`` updates."""
    out = rec["out/sigmoid_o"]
    row = {"step": step, "E_total": float(rec["loss"]), "out_o1": float(out[0, 0]), "out_o2": float(out[0, 1])}
    row.update(weights)
    return row


def _table_steps(n: int) -> list:
    return sorted({s for s in (0, 1, 10, 100, n) if s <= n})


def render(meta: dict, runs: list) -> str:
    r = meta["recipe"]
    n = r["epochs"]
    tol = get(NET).tolerance(meta["dtype"])
    floor = tol.atol if tol.rtol == 0 else None  # an absolute floor (float64: 1e-12)
    lines = ["# toy221: scratch (NumPy) vs PyTorch, side by side", "",
             f"Produced by `{meta['command']}` ({meta['dtype']}).  ",
             f"Status: **{meta['status']}**" + (f" - {meta['status_detail']}" if meta.get("status_detail") else "")
             + f"; {len(runs)} learning rate{'s' * (len(runs) != 1)}, {n} steps each.", "",
             f"Source document: {r['source']}.", ""] + recipe_lines(r)
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
    return "\n".join(lines + tail_lines(meta, meta["figures"]))


def _names_from(record: dict) -> list:
    return [k for k in record if k[0] in "wb" and k[1:].isdigit()]


def _plots(runs: list) -> dict:
    plt = _plt()
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
    """The report's plots drawn again from its ``metrics.json`` (``nnparity.reporting.report.rerender``)."""
    return _plots(metrics["runs"])


def write(out_dir: Path, meta: dict, runs: list) -> None:
    """metrics.json, the plots and report.md into ``out_dir``, each atomically."""
    figs = _plots(runs)
    meta["figures"] = list(figs)
    io.write_text(out_dir / "metrics.json", io.compact_json({**meta, "runs": [
        {k: v for k, v in r.items() if k != "parity_message"} for r in runs]}) + "\n")
    for name, fig in figs.items():
        io.write_figure(out_dir / name, fig)
    _close(figs)
    io.write_text(out_dir / "report.md", render(meta, runs))
