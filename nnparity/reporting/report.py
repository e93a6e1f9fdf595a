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

from nnparity.core import io

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


def recipe_lines(recipe: dict) -> list:
    """``## Recipe``: every field of the recipe, then the choices made where the document is silent."""
    return (["## Recipe", "", "| field | value |", "|---|---|"]
            + [f"| {k} | {v} |" for k, v in recipe.items() if k != "choices"]
            + ["", "Choices made where the document is silent:", ""] + [f"- {c}" for c in recipe["choices"]])


def tail_lines(meta: dict, figures) -> list:
    """The end of every report: ``## Plots`` (if any) and ``## Environment`` (with the peak memory)."""
    env = meta.get("environment", {})
    return ((["", "## Plots", ""] + [f"![{Path(f).stem}]({f})" for f in figures] if figures else [])
            + ["", "## Environment", "", ", ".join(f"{k} {v}" for k, v in env.items())
               + (f"; peak resident memory {meta['peak_rss_mib']} MiB" if "peak_rss_mib" in meta else ""), ""])


def render_markdown(meta: dict, history: list, figures, extra: str = "") -> str:
    recipe = meta["recipe"]
    h = headline(history)
    status = meta["status"]
    lines = [f"# {meta['net']}: scratch (NumPy) vs PyTorch, side by side", ""]
    lines.append(f"Produced by `{meta['command']}` (seed {meta['seed']}, {meta['dtype']}).  ")
    lines.append(f"Status: **{status}**" + (f" - {meta['status_detail']}" if meta.get("status_detail") else "")
                 + f"; {len(history)} of {meta['epochs_planned']} epochs.")
    lines += ["", f"Source document: {recipe['source']}.", ""] + recipe_lines(recipe)
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
        from nnparity.training.drift import markdown

        lines += ["", markdown(meta["drift"])]
    if extra:
        lines += ["", extra]
    if history:
        lines += ["", "## Per epoch", "", epoch_table(history)]
    return "\n".join(lines + tail_lines(meta, figures))


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
        from nnparity.training.drift import figure

        _close({"drift.png": figures["drift.png"]})
        figures["drift.png"] = figure(meta["drift"], meta["net"])
    return figures


# --- a sweep: seeds x variants (``nnparity.cli.run``), with the network's own pieces (``extras``) -------
def extras_of(net):
    """The module of a network's own report pieces (``Network.extras``), or None."""
    import importlib

    return importlib.import_module(net.extras) if net.extras else None


def mmm(s: dict, fmt=".2f") -> str:
    """mean (min - max) of a ``{"mean", "min", "max"}`` summary."""
    return f"{s['mean']:{fmt}} ({s['min']:{fmt}} - {s['max']:{fmt}})"


def _stats(values) -> dict:
    import numpy as np

    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def _metric(net):
    """The entry's per-epoch metric: (count key, indices key), or (None, None)."""
    return getattr(extras_of(net), "EPOCH_METRIC", (None, None))


def summarize_sweep(net, runs: list) -> dict:
    """Mean / min / max over the seeds of each variant's final figures, per side."""
    extras, (metric, _) = extras_of(net), _metric(net)
    keys = ("train_accuracy", "val_accuracy") + ((metric,) if metric else ())
    out = {}
    for variant in net.variants or (None,):
        done = [r for r in runs if r["variant"] == variant and r.get("final")]
        if not done:
            continue
        out[variant] = {"seeds": [r["seed"] for r in done],
                        "complete": all(r["status"] == "complete" for r in done)}
        for side in SIDES:
            out[variant][side] = {key: _stats([r["final"][side][key] for r in done]) for key in keys}
    for variant, v in out.items():
        mine = [r for r in runs if r["variant"] == variant and r.get("final")]
        init = [r[f"{metric}_at_init"] for r in mine if f"{metric}_at_init" in r] if metric else []
        if init:
            v[f"{metric}_at_init"] = _stats(init)
        if hasattr(extras, "summarize_variant"):
            extras.summarize_variant(v, mine)
    for variant, v in out.items():
        assessed = [r for r in runs if r["variant"] == variant and r.get("drift")]
        if assessed:
            v["drift"] = {"seeds": [r["seed"] for r in assessed],
                          "leaves_at_step": [r["drift"]["leaves"]["step"] if r["drift"]["leaves"] else None
                                             for r in assessed],
                          "impl_leaves_at_step": [r["drift"]["impl_leaves"]["step"] if r["drift"]["impl_leaves"]
                                                  else None for r in assessed]}
    if hasattr(extras, "summarize"):
        extras.summarize(out)
    return out


def write_sweep(out_dir, net, meta: dict, runs: list, *, final: bool) -> None:
    """metrics.json always; plots, ``per_batch.npz`` and report.md too when ``final``. Each file atomic."""
    import io as _io
    import math

    import numpy as np

    summary = summarize_sweep(net, runs)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs]
    figs = {}
    if final:
        batches = {}
        for r in runs:
            if "_batches" in r and r["variant"] not in batches:
                b = {k: (np.array([q[0] for q in v], dtype=np.float32), np.array([q[1] for q in v], dtype=np.float32))
                     for k, v in r["_batches"].items()}
                n_train, bs = r["train_size"], meta["recipe"]["batch_size"]
                b["batches_per_epoch"] = {"train": math.ceil(n_train / bs), "val": math.ceil(r["val_size"] / bs)}
                batches[r["variant"]] = b
        figs.update(sweep_figures(net, runs, batches))
        if batches:
            arrays = {}
            for variant, b in batches.items():
                for key, val in b.items():
                    if key != "batches_per_epoch":
                        arrays[f"{variant}/{key}/loss"] = val[0]
                        arrays[f"{variant}/{key}/accuracy"] = val[1]
            buf = _io.BytesIO()
            np.savez_compressed(buf, **arrays)
            io.write_bytes(out_dir / "per_batch.npz", buf.getvalue())
    io.write_text(out_dir / "metrics.json", io.compact_json({**meta, "summary": summary, "runs": clean}) + "\n")
    if final:
        for name, fig in figs.items():
            io.write_figure(out_dir / name, fig)
        _close(figs)
        io.write_text(out_dir / "report.md", sweep_markdown(net, meta, runs, summary, list(figs)))


def sweep_figures(net, runs: list, batches: dict) -> dict:
    """Every plot of a sweep: accuracy of every seed (and the entry's own plots), the first
    seed's per-epoch and per-batch curves, the drift and the weight difference."""
    extras = extras_of(net)
    figs = dict(plot_seeds(net, runs))
    if hasattr(extras, "METRIC_PLOT"):
        figs.update(plot_metric(net, runs))
    figs.update(plot_first_seed(net, runs, batches))
    figs.update(plot_drift(net, runs))
    return figs


def sweep_figures_from_metrics(net, metrics: dict, folder) -> dict:
    """A sweep's plots drawn again from its ``metrics.json`` (``rerender``). The per-batch
    plots need ``per_batch.npz`` beside it (written by the run, not committed): without it
    they are not drawn, and the PNGs already in the folder stay as they are."""
    import math

    import numpy as np

    runs = metrics["runs"]
    batches = {}
    npz = Path(folder) / "per_batch.npz"
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as arrays:
            for r in runs:
                variant = r["variant"]
                if variant in batches or not any(k.startswith(f"{variant}/") for k in arrays.files):
                    continue
                b = {f"{side}/{split}": (arrays[f"{variant}/{side}/{split}/loss"],
                                         arrays[f"{variant}/{side}/{split}/accuracy"])
                     for side in SIDES for split in ("train", "val")}
                bs = metrics["recipe"]["batch_size"]
                b["batches_per_epoch"] = {"train": math.ceil(r["train_size"] / bs),
                                          "val": math.ceil(r["val_size"] / bs)}
                batches[variant] = b
    figs = sweep_figures(net, runs, batches)
    if not batches:
        for name in [n for n in figs if n.startswith("batch_")]:
            _close({name: figs.pop(name)})
    return figs


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


VARIANT_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple")  # the entry's variants, in order


def variant_color(net, variant) -> str:
    return VARIANT_COLORS[(net.variants or (None,)).index(variant) % len(VARIANT_COLORS)]


def side_label(net, variant, side: str) -> str:
    """How a side is named in a variant's plots and tables (``extras.side_label``, else the side)."""
    hook = getattr(extras_of(net), "side_label", None)
    return hook(variant, side) if hook else side


def spread_labels(ys: list, gap: float) -> list:
    """Label heights for curve ends at heights ``ys``: the lowest at its curve, each next one
    at its curve or ``gap`` above the label below it, whichever is higher (so "seed 0" and
    "seed 3" do not print on top of each other when their curves end 0.1 points apart).
    Returned in the order of ``ys``."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = [ys[i] for i in order]
    for j in range(1, len(placed)):  # bottom up: a label too close above its neighbour moves up
        placed[j] = max(placed[j], placed[j - 1] + gap)
    out = [0.0] * len(ys)
    for j, i in enumerate(order):
        out[i] = placed[j]
    return out


def label_ends(ax, ends: list) -> None:
    """Write each (y, x, text) of ``ends`` right of its curve's last point, de-overlapped
    vertically (``spread_labels``), with a thin leader line to the curve's end."""
    if not ends:
        return
    lo, hi = ax.get_ylim()
    left, right = ax.get_xlim()
    heights = spread_labels([y for y, _, _ in ends], gap=0.04 * (hi - lo))
    for (y, x, text), h in zip(ends, heights):
        ax.annotate(text, (x, y), xytext=(x + 0.025 * (right - left), h), textcoords="data", fontsize=7,
                    va="center", annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.4", "shrinkA": 0, "shrinkB": 0})


def plot_seeds(net, runs: list) -> dict:
    """``accuracy_variants.png``: training and validation accuracy per epoch of every seed,
    every variant (scratch), the document's figures as lines; the first variant's curves
    are labelled with their seed."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    document = getattr(extras_of(net), "DOCUMENT", {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, key, title in ((axes[0], "train", "training accuracy %"), (axes[1], "val", "validation accuracy %")):
        seen, ends = set(), []
        for r in runs:
            if not r["epochs"]:
                continue
            ep = [e["epoch"] for e in r["epochs"]]
            y = [(100 - e["scratch"]["train_error"]) if key == "train" else e["scratch"]["test_accuracy"]
                 for e in r["epochs"]]
            label = None if r["variant"] in seen else f"{r['variant']} (scratch, each seed)"
            seen.add(r["variant"])
            ax.plot(ep, y, color=variant_color(net, r["variant"]), lw=1, alpha=0.8, label=label)
            if r["variant"] == net.variants[0]:
                ends.append((y[-1], ep[-1], f"seed {r['seed']}"))
        doc = document.get(f"{key}_accuracy")
        if doc is not None:
            ax.axhline(doc, color="k", ls=":", lw=1, label=f"document: {doc}%")
        ax.set(xlabel="epoch", title=f"{net.name}: {title}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center right")
        label_ends(ax, ends)
    axes[0].set_ylabel("accuracy %")
    fig.tight_layout()
    return {"accuracy_variants.png": fig}


def plot_metric(net, runs: list) -> dict:
    """The entry's per-epoch metric of every seed (scratch), one panel per variant, from
    the initial weights on (``extras.METRIC_PLOT``: file, y label, title, legend word)."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    metric, _ = _metric(net)
    name, ylabel, title, word = extras_of(net).METRIC_PLOT
    variants = net.variants or (None,)
    fig, axes = plt.subplots(1, len(variants), figsize=(5.5 * len(variants), 3.6), sharey=True, squeeze=False)
    top = max([e["scratch"][metric] for r in runs for e in r["epochs"]] +
              [r.get(f"{metric}_at_init", 0) for r in runs] + [1])
    for ax, variant in zip(axes[0], variants):
        mine = [r for r in runs if r["variant"] == variant and r["epochs"]]
        for i, r in enumerate(mine):
            offset = 0.08 * (i - (len(mine) - 1) / 2)  # seeds with equal counts stay visible
            ax.step([0] + [e["epoch"] for e in r["epochs"]],
                    [r[f"{metric}_at_init"] + offset] + [e["scratch"][metric] + offset for e in r["epochs"]],
                    where="post", lw=1.2, label=f"seed {r['seed']}: {r['epochs'][-1]['scratch'][metric]} {word}")
        ax.set(xlabel="epoch (0: the initial weights)", title=f"{variant} (scratch)",
               ylim=(-0.5, top + 2.5))  # room above the curves for the legend
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.grid(alpha=0.3)
        if mine:
            ax.legend(fontsize=8, loc="upper right", ncol=2)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(f"{net.name}: {title}", fontsize=11)
    fig.tight_layout()
    return {name: fig}


def plot_first_seed(net, runs: list, batches: dict) -> dict:
    """Per-epoch and per-batch loss, accuracy and error of training and validation, both
    sides overlaid, one column per variant (the first seed)."""
    import numpy as np

    plt = _plt()
    figs = {}
    first = {}
    for r in runs:
        first.setdefault(r["variant"], r)
    variants = [v for v in net.variants or (None,) if v in first and first[v]["epochs"]]
    if not variants:
        return figs
    from matplotlib.ticker import MaxNLocator

    metrics = (("loss", "loss (per sample)"), ("accuracy", "accuracy %"), ("error", "error %"))

    def epoch_value(e, side, split, metric):
        if metric == "loss":
            return e[side]["train_loss" if split == "train" else "test_loss"]
        acc = (100 - e[side]["train_error"]) if split == "train" else e[side]["test_accuracy"]
        return acc if metric == "accuracy" else 100 - acc

    for metric, ylabel in metrics:
        fig, axes = plt.subplots(1, len(variants), figsize=(5.5 * len(variants), 3.8), squeeze=False)
        for ax, variant in zip(axes[0], variants):
            r = first[variant]
            ep = [e["epoch"] for e in r["epochs"]]
            for split, lw in (("train", 1.6), ("val", 1.0)):
                for side in SIDES:
                    ax.plot(ep, [epoch_value(e, side, split, metric) for e in r["epochs"]], STYLES[side],
                            lw=lw, color=COLORS[side] if split == "train" else ("tab:green" if side == "scratch"
                                                                                 else "tab:red"),
                            label=f"{split}: {side_label(net, variant, side)}")
            ax.set(xlabel="epoch", ylabel=ylabel, title=f"{variant}, seed {r['seed']}: {metric} per epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
            if metric == "loss":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        figs[f"epoch_{metric}.png"] = fig

    for metric, ylabel in metrics:
        fig, axes = plt.subplots(2, len(variants), figsize=(5.5 * len(variants), 6.6), squeeze=False)
        for col, variant in enumerate(variants):
            b = batches.get(variant)
            if not b:
                continue
            for row, split in enumerate(("train", "val")):
                ax = axes[row][col]
                for side in SIDES:
                    loss, acc = b[f"{side}/{split}"]
                    y = loss if metric == "loss" else (acc if metric == "accuracy" else 100 - acc)
                    per_epoch = b["batches_per_epoch"][split]
                    x = np.arange(1, len(y) + 1)
                    ax.plot(x, y, color=COLORS[side], lw=0.3, alpha=0.25, label=f"{side}, each batch")
                    if len(y) >= per_epoch:
                        smooth = np.convolve(y, np.ones(per_epoch) / per_epoch, mode="valid")
                        ax.plot(x[per_epoch - 1:], smooth, STYLES[side], color=COLORS[side], lw=1.4,
                                label=f"{side_label(net, variant, side)} (running mean over one epoch)")
                ax.set(xlabel=f"{'training' if split == 'train' else 'validation'} batch",
                       ylabel=ylabel, title=f"{variant}: {'training' if split == 'train' else 'validation'} "
                                            f"{metric} per batch")
                if metric == "loss":
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
        fig.tight_layout()
        figs[f"batch_{metric}.png"] = fig
    return figs


def plot_drift(net, runs: list) -> dict:
    """``drift.png``: the first seed's drift against its rounding envelope, one panel per
    variant (``drift.draw``; a variant expected to fail parity is titled so); and
    ``weight_difference.png``: the largest absolute weight difference per epoch of every run."""
    from matplotlib.ticker import MaxNLocator

    from nnparity.training import drift

    plt = _plt()
    figs = {}
    first = {}
    for r in runs:
        if r.get("drift"):
            first.setdefault(r["variant"], r)
    if first:
        titles = getattr(extras_of(net), "drift_title", None)
        fig, axes = plt.subplots(1, len(first), figsize=(6.4 * len(first), 6.4), squeeze=False)
        for ax, variant in zip(axes[0], (v for v in net.variants or (None,) if v in first)):
            r = first[variant]
            title, label = (titles(variant, r["seed"]) if titles else
                            (f"{variant}, seed {r['seed']}: scratch vs torch", None))
            drift.draw(ax, r["drift"], title, **({"drift_label": label} if label else {}))
        fig.suptitle(f"{net.name}: drift between the sides against the rounding envelope (the "
                     f"{net.variants[0]} variant's, same seed)", fontsize=10)
        fig.tight_layout()
        figs["drift.png"] = fig

    fig, ax = plt.subplots(figsize=(6, 3.6))
    seen = set()
    for r in runs:
        if r["epochs"]:
            count = sum(1 for q in runs if q["variant"] == r["variant"] and q["epochs"])
            label = None if r["variant"] in seen else f"{r['variant']} (one line per seed, {count} seeds)"
            seen.add(r["variant"])
            ax.plot([e["epoch"] for e in r["epochs"]], [max(e["max_abs_weight_diff"], 1e-300) for e in r["epochs"]],
                    color=variant_color(net, r["variant"]), lw=1, label=label)
    ax.set(xlabel="epoch", ylabel="max |scratch - torch| over weights", yscale="log",
           title=f"{net.name}: weight difference between the sides, every seed")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.grid(alpha=0.3)
    if seen:
        ax.legend(fontsize=8)
    figs["weight_difference.png" if first else "drift.png"] = fig
    return figs


def _sweep_parity_word(net, r) -> str:
    if "parity" not in r:
        return "not run"
    if r["parity"]["ok"]:
        return "pass"
    if r["parity"].get("status") == "degenerate":  # no mismatch; gradients zero (or overflowed) on both sides
        return "inconclusive"
    return "FAIL (expected)" if net.expected_to_fail(r["variant"]) else "FAIL"


def _indent_block(text: str) -> list:
    return ["  ```", "  " + text.replace("\n", "\n  "), "  ```"]


def sweep_markdown(net, meta: dict, runs: list, summary: dict, figures: list) -> str:
    """report.md of a sweep: the result over the seeds, the parity verdict of every
    variant (an expected failure with its diagnosis), the drift, every seed, the recipe,
    every 10th epoch of the first seed, the plots; the entry's ``extras`` add their title,
    their story and what they say about a variant."""
    extras = extras_of(net)
    metric, indices = _metric(net)
    label = getattr(extras, "METRIC_LABEL", metric)
    short = getattr(extras, "METRIC_SHORT", metric)
    document = getattr(extras, "DOCUMENT", {})
    recipe = meta["recipe"]
    L = [f"# {net.name}: scratch (NumPy) vs PyTorch, {getattr(extras, 'TITLE', 'every seed and variant')}", "",
         f"Produced by `{meta['command']}` ({meta['dtype']}; variants: {', '.join(meta['variants'])}; "
         f"seeds {', '.join(map(str, meta['seeds']))}).  ",
         f"Status: **{meta['status']}**" + (f" - {meta['status_detail']}" if meta.get("status_detail") else "")
         + f"; {sum(r['status'] == 'complete' for r in runs)} of {len(meta['variants']) * len(meta['seeds'])} "
           f"runs complete, {recipe['epochs']} epochs each.", "",
         f"Source document: {recipe['source']}." + (extras.source_note() if hasattr(extras, "source_note") else "")]
    if summary:
        L += ["", "## Result: mean (min - max) over the seeds, final epoch", "",
              "| variant | side | training accuracy % | validation accuracy % |" + (f" {label} |" if metric else ""),
              "|---|---|---|---|" + ("---|" if metric else "")]
        for variant in net.variants or (None,):
            if variant not in summary:
                continue
            for side in SIDES:
                s = summary[variant][side]
                L.append(f"| {variant} | {side_label(net, variant, side)} | {mmm(s['train_accuracy'])} "
                         f"| {mmm(s['val_accuracy'])} |" + (f" {mmm(s[metric], '.1f')} |" if metric else ""))
        if document:
            L.append(f"| document | | {document['train_accuracy']} | {document['val_accuracy']} |"
                     + (" |" if metric else ""))
        if hasattr(extras, "result_notes"):
            L += extras.result_notes(summary)
    L += ["", "## What the parity check says", ""]
    for variant in meta["variants"]:
        rs = [r for r in runs if r["variant"] == variant and "parity" in r]
        if not rs:
            continue
        p = rs[0]["parity"]
        oks = sum(r["parity"]["ok"] for r in rs)
        expected = net.expected_to_fail(variant)
        if not expected:
            L += [f"- **{variant}**: {p['steps']} steps of step parity before training, {oks} of {len(rs)} seeds "
                  f"pass; worst margin {max(r['parity']['worst_margin'] for r in rs):.3g} (tolerance atol "
                  f"{p['tolerance']['atol']:g}, rtol {p['tolerance']['rtol']:g}; <= 1 passes)."]
        else:
            L += [f"- **{variant}**: parity **FAILS, as expected**, for {len(rs) - oks} of {len(rs)} seeds; "
                  "training went on regardless. The first divergence (seed "
                  f"{rs[0]['seed']}):", ""] + _indent_block(rs[0]["parity_message"])
            if hasattr(extras, "expected_failure_note"):
                L += ["", "  " + extras.expected_failure_note(variant)]
            if "diagnosis" in p:
                L += [""] + ["  " + line for line in diagnosis_lines(p["diagnosis"])]
        for r in [r for r in rs if not expected and not r["parity"]["ok"]]:
            L += ["", f"  seed {r['seed']}:", ""] + _indent_block(r["parity_message"])
            if "diagnosis" in r["parity"]:
                L += [""] + ["  " + line for line in diagnosis_lines(r["parity"]["diagnosis"])]
    L += drift_section(net, runs, summary)
    L += ["", "## Per seed (final epoch)", "",
          "| variant | seed | parity | train acc % scratch / torch | val acc % scratch / torch "
          + (f"| {short} at init | {short} scratch / torch " if metric else "")
          + "| max abs weight diff | scratch s | torch s | status |",
          "|---|---|---|---|---|" + ("---|---|" if metric else "") + "---|---|---|---|"]
    for r in runs:
        f = r.get("final") or {}
        if not f:
            L.append(f"| {r['variant']} | {r['seed']} | {_sweep_parity_word(net, r)} | - | - | "
                     + ("- | - | " if metric else "") + f"- | - | - | {r['status']} |")
            continue
        s, t = f["scratch"], f["torch"]
        L.append(f"| {r['variant']} | {r['seed']} | {_sweep_parity_word(net, r)} "
                 f"| {s['train_accuracy']:.2f} / {t['train_accuracy']:.2f} "
                 f"| {s['val_accuracy']:.2f} / {t['val_accuracy']:.2f} "
                 + (f"| {r.get(f'{metric}_at_init', '-')} | {s[metric]} {r[indices]['scratch']} / {t[metric]} "
                    f"{r[indices]['torch']} " if metric else "")
                 + f"| {max(e['max_abs_weight_diff'] for e in r['epochs']):.2e} "
                 f"| {s['seconds']:.1f} | {t['seconds']:.1f} | {r['status']} |")
    for variant in [v for v in net.variants if net.expected_to_fail(v)]:
        L += ["", f"In the {variant} runs the torch side is autograd's (correct) derivative from the same "
                  f"weights and batches, so there 'scratch vs torch' is '{variant} vs correct' for one seed."]
    L += [""] + recipe_lines(recipe)
    first = {}
    for r in runs:
        first.setdefault(r["variant"], r)
    for variant, r in first.items():
        if not r["epochs"]:
            continue
        L += ["", f"## Every 10th epoch: {variant}, seed {r['seed']}", "",
              "| epoch | train loss scratch / torch | train acc % scratch / torch | val loss scratch / torch "
              "| val acc % scratch / torch |" + (f" {short} scratch / torch |" if metric else "")
              + " max abs weight diff |", "|---|---|---|---|---|" + ("---|" if metric else "") + "---|"]
        for e in r["epochs"]:
            if e["epoch"] % 10 and e["epoch"] not in (1, 5, len(r["epochs"])):
                continue
            s, t = e["scratch"], e["torch"]
            L.append(f"| {e['epoch']} | {s['train_loss']:.5f} / {t['train_loss']:.5f} "
                     f"| {100 - s['train_error']:.2f} / {100 - t['train_error']:.2f} "
                     f"| {s['test_loss']:.5f} / {t['test_loss']:.5f} "
                     f"| {s['test_accuracy']:.2f} / {t['test_accuracy']:.2f} "
                     + (f"| {s[metric]} / {t[metric]} " if metric else "")
                     + f"| {e['max_abs_weight_diff']:.2e} |")
    tail = tail_lines(meta, figures)
    if figures:  # after "## Plots", ""
        tail[3:3] = ["`batch_*.png` and `epoch_*.png` show the first seed, both sides overlaid; the per-batch "
                     "values behind them are in `per_batch.npz` (written by the run, not committed: float32 "
                     "losses and accuracies, a few MB).", ""]
    return "\n".join(L + tail)


def diagnosis_lines(d: dict) -> list:
    """Own or inherited (``nnparity.diagnosis.check``'s diagnosis, from its record): every stage of
    the failing step re-run alone on the reference side's numbers, and the verdict."""
    L = [f"Own or inherited: every stage of step {d['step']} re-run alone on the reference side's inputs, "
         "upstream gradients and pre-step weights (`nnparity check`):", "",
         "| stage | scratch code | own margin | verdict |", "|---|---|---|---|"]
    for st in d["stages"]:
        label = f"{st['component']} {st['phase']}"
        tags = [t for t, on in (("suspect", label == d["suspect"]), ("CULPRIT", label == d["culprit"])) if on]
        word = "OFF" if st["off"] else ("not re-run" if st["note"] and not st["comparisons"] else "ok")
        L.append(f"| {label} | `{st['impl']}` | {st['margin']:.3g} | {word}"
                 + (f" ({', '.join(tags)})" if tags else "") + " |")
    return L + ["", f"**Verdict:** {d['verdict']}"]


def drift_section(net, runs: list, summary: dict) -> list:
    """Drift between the sides against the rounding envelope, every run (``nnparity.training.drift``)."""
    from nnparity.training import drift

    assessed = [r for r in runs if r.get("drift")]
    if not assessed:
        return []
    lead = next((r for r in assessed if r["variant"] == net.variants[0]), assessed[0])
    k = lead["drift"]["envelope_steps"]
    L = ["", "## Drift between the sides", "",
         f"Each seed's rounding envelope is measured once, before its runs, from its initial weights on its first "
         f"{k} batches, with the **{net.variants[0]}** variant; {'both' if len(net.variants) == 2 else 'all'} "
         "variants of the seed are judged against it "
         "(their torch sides are the same computation, so is the rounding band). "
         f"For the {lead['variant']} variant, seed {lead['seed']}:", "",
         drift.markdown(lead["drift"], heading=None), "",
         "| variant | seed | drift at the last enveloped step | band there | largest drift / band (step) "
         f"| leaves the envelope | envelope: float64 ({net.variants[0]}) scratch vs torch leaves its band "
         "| drift at the last epoch "
         "| envelope s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in assessed:
        d = r["drift"]
        cells = ["-", "-", "-"]
        if d["step_drift"]:
            step, value = d["step_drift"][-1]
            cells[:2] = [f"{value:.3g} (step {step})", f"{d['band'][step - 1]:.3g}"]
        if d["worst_ratio"]:
            cells[2] = f"{d['worst_ratio']['ratio']:.3g} ({d['worst_ratio']['step']})"
        leaves = f"**step {d['leaves']['step']}**" if d["leaves"] else "no"
        impl = f"step {d['impl_leaves']['step']}" if d["impl_leaves"] else "no"
        last = d["epoch_drift"][-1] if d["epoch_drift"] else None
        last = f"{last[2]:.3g} (epoch {last[1]})" if last else "-"
        L.append(f"| {r['variant']} | {r['seed']} | {' | '.join(cells)} | {leaves} | {impl} | {last} "
                 f"| {d['envelope_seconds']:.2f} |")
    for variant in net.variants or (None,):
        v = summary.get(variant, {}).get("drift")
        if not v:
            continue
        n, left = len(v["seeds"]), [s for s in v["leaves_at_step"] if s is not None]
        note = getattr(extras_of(net), "drift_note", None)
        if net.expected_to_fail(variant) and note:
            L += ["", note(variant, n, left)]
        else:
            L += ["", f"**{variant.capitalize()} variant:** drift stays inside the rounding envelope for "
                      f"{n - len(left)} of {n} seeds"
                      + (f"; it leaves it at step{'s' * (len(left) > 1)} {', '.join(map(str, left))} for "
                         f"the others: more difference than rounding explains, see the verdicts above."
                         if left else ": the two implementations differ by rounding only.")]
    return L


def rerender(folder) -> list:
    """Re-draw the PNG plots of a report folder from its ``metrics.json``, without training.

    ``metrics.json`` and ``report.md`` are left as they are (the report links the same file
    names); each PNG is replaced atomically and written deterministically (no timestamp, no
    Software field), so re-rendering twice gives the same bytes. For a change to the plotting
    code: ``python -m nnparity.reporting.report --rerender reports/mlp1000``. Returns the file names
    written. A sweep (linear10) draws ``sweep_figures``, a network with its own report
    (toy221) its ``extras.figures_from_metrics``; a sweep's per-batch plots need
    ``per_batch.npz`` (not committed) and are left alone without it.
    """
    from nnparity.training.networks import NETWORKS

    import json

    folder = Path(folder)
    path = folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OSError(f"{path} does not exist: --rerender takes a report folder (e.g. reports/mlp1000)") from None
    except ValueError as e:
        raise OSError(f"{path} is not valid JSON ({e})") from None
    net = NETWORKS.get(metrics.get("net"))
    if net is not None and hasattr(extras_of(net), "figures_from_metrics"):
        figures = extras_of(net).figures_from_metrics(metrics, folder)
    elif net is not None and net.sweep:
        figures = sweep_figures_from_metrics(net, metrics, folder)
    else:
        figures = run_figures(metrics, metrics.get("epochs", []))
    for name, fig in figures.items():
        io.write_figure(folder / name, fig)
    _close(figures)
    return list(figures)


def main(argv=None) -> int:
    """``python -m nnparity.reporting.report --rerender FOLDER [FOLDER ...]``."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m nnparity.reporting.report",
                                description="Re-draw a report folder's PNG plots from its metrics.json "
                                            "(no training; metrics.json and report.md are not touched).")
    p.add_argument("--rerender", nargs="+", metavar="FOLDER", required=True,
                   help="report folders, e.g. reports/mlp1000 reports/cnn18k")
    args = p.parse_args(argv)
    for folder in args.rerender:
        try:
            names = rerender(folder)
        except OSError as e:
            print(f"python -m nnparity.reporting.report: error: {e}", file=sys.stderr)
            return 2
        print(f"{folder}: {', '.join(names)}")
    return 0


def _close(figures):
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
