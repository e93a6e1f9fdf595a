"""Side-by-side reports: ``metrics.json``, ``report.md`` and PNG plots, written atomically.

``metrics.json`` is the record (every figure in ``report.md`` is read from it);
``report.md`` is for people. Both carry a ``status``: ``complete``,
``incomplete`` (interrupted: everything up to the last finished epoch),
``diverged`` (stopped at a non-finite value, which is named), ``parity-failed``
(a real mismatch before training) or ``collapsed`` (training no longer changes
some weights: their gradients were zero on both sides, ``train.collapsed``).
"""

from __future__ import annotations

import platform
from pathlib import Path

from . import io

SIDES = ("scratch", "torch")
COLORS = {"scratch": "tab:blue", "torch": "tab:orange"}
STYLES = {"scratch": "-", "torch": "--"}


def environment() -> dict:
    import numpy
    import torch

    return {"python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__,
            "machine": platform.machine(), "threads": torch.get_num_threads()}


def _fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def per_epoch_plots(history: list, title: str) -> dict:
    """Loss, error % and test accuracy per epoch (both sides overlaid), and the
    weight difference between the sides. Returns {file name: figure}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    figs = {}

    def panel(name, key, ylabel, log=False, transform=lambda v: v):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for side in SIDES:
            ax.plot(epochs, [transform(r[side][key]) for r in history], STYLES[side],
                    color=COLORS[side], label=side, marker="o" if len(epochs) < 25 else None, ms=3)
        ax.set(xlabel="epoch", ylabel=ylabel, title=f"{title}: {ylabel}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # epochs are whole: no tick at 1.5
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        figs[name] = fig

    panel("loss.png", "train_loss", "training loss (per sample)", log=True)
    panel("error.png", "train_error", "training error %")
    panel("accuracy.png", "test_accuracy", "test accuracy %")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(epochs, [max(r["max_abs_weight_diff"], 1e-300) for r in history], color="tab:red",
            marker="o" if len(epochs) < 25 else None, ms=3, label="max |scratch - torch|")
    ax.plot(epochs, [max(r["max_rel_weight_diff"], 1e-300) for r in history], color="tab:purple",
            ls="--", label="max relative difference")
    ax.set(xlabel="epoch", ylabel="difference", title=f"{title}: weight difference between sides")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    figs["drift.png"] = fig
    return figs


def epoch_table(history: list) -> str:
    head = ("| epoch | scratch loss | torch loss | scratch train err % | torch train err % "
            "| scratch test acc % | torch test acc % | scratch s | torch s | max abs weight diff |")
    lines = [head, "|" + "---|" * 10]
    for r in history:
        s, t = r["scratch"], r["torch"]
        lines.append(f"| {r['epoch']} | {s['train_loss']:.6f} | {t['train_loss']:.6f} "
                     f"| {s['train_error']:.3f} | {t['train_error']:.3f} "
                     f"| {s['test_accuracy']:.2f} | {t['test_accuracy']:.2f} "
                     f"| {s['seconds']:.2f} | {t['seconds']:.2f} | {r['max_abs_weight_diff']:.2e} |")
    return "\n".join(lines)


def headline(history: list) -> dict:
    """Final and best figures per side (the numbers the README quotes)."""
    if not history:
        return {}
    last = history[-1]
    out = {}
    for side in SIDES:
        best = max(history, key=lambda r: r[side]["test_accuracy"])
        out[side] = {
            "final_train_loss": last[side]["train_loss"],
            "final_train_error": last[side]["train_error"],
            "final_test_accuracy": last[side]["test_accuracy"],
            "best_test_accuracy": best[side]["test_accuracy"],
            "best_epoch": best["epoch"],
            "seconds": sum(r[side]["seconds"] for r in history),
        }
    out["final_test_accuracy_gap_pp"] = abs(out["scratch"]["final_test_accuracy"] - out["torch"]["final_test_accuracy"])
    out["best_test_accuracy_gap_pp"] = abs(out["scratch"]["best_test_accuracy"] - out["torch"]["best_test_accuracy"])
    out["max_abs_weight_diff"] = max(r["max_abs_weight_diff"] for r in history)
    if all("max_abs_param_diff" in r for r in history):  # parameters alone (not optimizer state, buffers)
        worst = max(history, key=lambda r: r["max_abs_param_diff"])
        worst_rel = max(history, key=lambda r: r["max_rel_param_diff"])
        out.update(max_abs_param_diff=worst["max_abs_param_diff"], worst_param_epoch=worst["epoch"],
                   max_rel_param_diff=worst_rel["max_rel_param_diff"], worst_param=worst_rel["worst_param"])
    return out


def _parity_word(p: dict) -> str:
    """pass, FAIL (a real mismatch) or INCONCLUSIVE (no mismatch, but comparisons that
    prove nothing: gradients zero, or values overflowed, on both sides)."""
    status = p.get("status", "pass" if p["ok"] else "mismatch")
    return {"pass": "pass", "mismatch": "FAIL"}.get(status, "INCONCLUSIVE (no mismatch)")


def render_markdown(meta: dict, history: list, figures, extra: str = "") -> str:
    recipe = meta["recipe"]
    h = headline(history)
    status = meta["status"]
    lines = [f"# {meta['net']}: scratch (NumPy) vs PyTorch, side by side", ""]
    lines.append(f"Produced by `{meta['command']}` (seed {meta['seed']}, {meta['dtype']}).  ")
    lines.append(f"Status: **{status}**" + (f" - {meta['status_detail']}" if meta.get("status_detail") else "")
                 + f"; {len(history)} of {meta['epochs_planned']} epochs.")
    lines += ["", f"Source document: {recipe['source']}.", "", "## Recipe", "",
              "| field | value |", "|---|---|"]
    for k, v in recipe.items():
        if k != "choices":
            lines.append(f"| {k} | {v} |")
    lines += ["", "Choices made where the document is silent:", ""]
    lines += [f"- {c}" for c in recipe["choices"]]
    p = meta.get("parity")
    if p:
        lines += ["", "## Step parity before training", "",
                  f"{p['steps']} training steps in {p['dtype']} on the run's first batches, comparing "
                  "every activation, upstream gradient, parameter gradient and updated parameter: "
                  f"**{_parity_word(p)}**, worst margin {p['worst_margin']:.3g} "
                  f"(tolerance atol {p['tolerance']['atol']:g}, rtol {p['tolerance']['rtol']:g}; "
                  "margin = worst |a-b| / (atol + rtol |b|), <= 1 passes)."]
        if p.get("vanished"):
            lines += ["", f"Inconclusive, not a bug: {p['vanished']['sentence']}."]
    if h:
        s, t = h["scratch"], h["torch"]
        lines += ["", "## Result", "", "| | scratch (NumPy) | PyTorch |", "|---|---|---|",
                  f"| final training loss | {s['final_train_loss']:.6f} | {t['final_train_loss']:.6f} |",
                  f"| final training error % | {s['final_train_error']:.3f} | {t['final_train_error']:.3f} |",
                  f"| final test accuracy % | {s['final_test_accuracy']:.2f} | {t['final_test_accuracy']:.2f} |",
                  f"| best test accuracy % (epoch) | {s['best_test_accuracy']:.2f} ({s['best_epoch']}) "
                  f"| {t['best_test_accuracy']:.2f} ({t['best_epoch']}) |",
                  f"| training time, s | {s['seconds']:.1f} | {t['seconds']:.1f} |",
                  "", f"Final test accuracies differ by {h['final_test_accuracy_gap_pp']:.2f} percentage points "
                  f"(best: {h['best_test_accuracy_gap_pp']:.2f}); "
                  f"the largest weight difference between the sides over the run was {h['max_abs_weight_diff']:.2e}"
                  + (f" (parameters, optimizer state and buffers); parameters alone: {h['max_abs_param_diff']:.2e} "
                     f"(epoch {h['worst_param_epoch']}), and relative to a tensor's largest value at most "
                     f"{h['max_rel_param_diff']:.2g} (`{h['worst_param']}`)." if "max_abs_param_diff" in h
                     else ".")]
    if meta.get("drift"):
        from .drift import markdown

        lines += ["", markdown(meta["drift"])]
    if extra:
        lines += ["", extra]
    if history:
        lines += ["", "## Per epoch", "", epoch_table(history)]
    if figures:
        lines += ["", "## Plots", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    env = meta.get("environment", {})
    lines += ["", "## Environment", "", ", ".join(f"{k} {v}" for k, v in env.items())
              + (f"; peak resident memory {meta['peak_rss_mib']} MiB" if "peak_rss_mib" in meta else ""), ""]
    return "\n".join(lines)


def write_report(out_dir, meta: dict, history: list, *, figures: dict | None = None, extra: str = "",
                 extra_metrics: dict | None = None) -> Path:
    """Write metrics.json, the plots and report.md into ``out_dir``, each atomically."""
    out_dir = io.ensure_writable_dir(out_dir)
    metrics = {**meta, "headline": headline(history), "epochs": history, **(extra_metrics or {})}
    io.write_json(out_dir / "metrics.json", metrics)
    figures = figures if figures is not None else run_figures(meta, history)
    for name, fig in figures.items():
        io.write_figure(out_dir / name, fig)
    _close(figures)
    io.write_text(out_dir / "report.md", render_markdown(meta, history, list(figures), extra))
    return out_dir


def run_figures(meta: dict, history: list) -> dict:
    """The plots of a generic run: the per-epoch panels, and the drift against its rounding
    envelope when the run measured one. Everything is read from ``meta`` and ``history``,
    which ``metrics.json`` holds whole, so ``rerender`` draws the same figures from it."""
    figures = per_epoch_plots(history, meta["net"]) if history else {}
    if meta.get("drift") and "drift.png" in figures:  # drift with its rounding envelope
        from .drift import figure

        _close({"drift.png": figures["drift.png"]})
        figures["drift.png"] = figure(meta["drift"], meta["net"])
    return figures


def rerender(folder) -> list:
    """Re-draw the PNG plots of a report folder from its ``metrics.json``, without training.

    ``metrics.json`` and ``report.md`` are left as they are (the report links the same file
    names); each PNG is replaced atomically and written deterministically (no timestamp, no
    Software field), so re-rendering twice gives the same bytes. For a change to the plotting
    code: ``python -m nnparity.report --rerender reports/mlp1000``. Returns the file names
    written. linear10 and toy221 draw with their runners' own plotting code; linear10's
    per-batch plots need ``per_batch.npz`` (not committed) and are left alone without it.
    """
    import json

    folder = Path(folder)
    path = folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OSError(f"{path} does not exist: --rerender takes a report folder (e.g. reports/mlp1000)") from None
    except ValueError as e:
        raise OSError(f"{path} is not valid JSON ({e})") from None
    net = metrics.get("net")
    if net == "linear10":
        from .runners.linear10 import figures_from_metrics
    elif net == "toy221":
        from .runners.toy221 import figures_from_metrics
    else:
        def figures_from_metrics(m, _folder):
            return run_figures(m, m.get("epochs", []))
    figures = figures_from_metrics(metrics, folder)
    for name, fig in figures.items():
        io.write_figure(folder / name, fig)
    _close(figures)
    return list(figures)


def main(argv=None) -> int:
    """``python -m nnparity.report --rerender FOLDER [FOLDER ...]``."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m nnparity.report",
                                description="Re-draw a report folder's PNG plots from its metrics.json "
                                            "(no training; metrics.json and report.md are not touched).")
    p.add_argument("--rerender", nargs="+", metavar="FOLDER", required=True,
                   help="report folders, e.g. reports/mlp1000 reports/cnn18k")
    args = p.parse_args(argv)
    for folder in args.rerender:
        try:
            names = rerender(folder)
        except OSError as e:
            print(f"python -m nnparity.report: error: {e}", file=sys.stderr)
            return 2
        print(f"{folder}: {', '.join(names)}")
    return 0


def _close(figures):
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
