"""``nnparity run linear10``: the correct and the as-documented backward, side by side,
over several seeds.

    nnparity run linear10 [--variant both|correct|as-documented] [--seeds K] [--seed S] [options]

The default (``--variant both``) is the documented run: for each of K seeds
(default 5: S, S+1, ..., S+K-1; each a full replicate with its own subsets,
initialisation and batch order) it trains

* the **correct** variant: scratch (ReLU derivative ``[x > 0]``) against PyTorch.
  Step parity runs first and must pass, as for every network (a failure stops
  the run, exit 1);
* the **as-documented** variant: scratch with the document's straight-through
  ReLU backward against PyTorch (autograd, i.e. the correct derivative, from the
  same weights and batches). Step parity is *expected to fail* at the ReLU's
  input gradient ``dout/fc`` at step 1: the run says so loudly, records the
  message, and trains anyway. (If it passed, the check would have missed the
  slip: the run fails with exit 1.)

``--variant correct`` or ``--variant as-documented`` trains one variant only.

A failing parity check (the as-documented variant's expected one, or an
unexpected one of the correct variant) is diagnosed by ``nnparity.check``: the
first divergence, and whether it is the diverging layer's own error or one it
inherited (for the as-documented variant: ``DocumentedReLU.backward``, own).

**Drift** (``nnparity.drift``): before a seed's runs, its rounding envelope is
measured once over the first ``--envelope-steps`` batches (default 200, capped
at the run's length, 0 skips), with the correct variant: float64 scratch vs
torch, and float32 vs float64 torch. It costs about 0.1 s per seed (200 steps;
an epoch of the documented run is 938 steps), so every seed gets its own. Each
run (both variants) records the drift between its sides after each of those
steps and after every epoch, judged against that envelope by ``drift.assess``.
Both variants share the seed's envelope: their torch sides are the same
computation from the same weights and batches, so the rounding band is the
same. The as-documented scratch side is a different derivative by design: its
drift leaves the envelope at step 1, and the report says that this is expected.

**The torch side is trained once per seed** (``SharedTorch``, ``nnparity.tape``): it
is the same computation in both variants, so the first run of a seed (the correct
variant's) records it and the second replays it, stepping its scratch side only
against the recorded torch trajectory: the same torch figures, bit for bit, and the
same per-step drift and per-epoch weight differences as training it again (the
torch times of the replaying run are the recorded ones). If the first run stops
before its last epoch (diverged), the second trains its own torch side.

Ctrl-C or SIGTERM at any point after loading (parity, envelope, training,
between runs) ends the run with complete files marked ``incomplete`` (exit
130), keeping every finished epoch (``nnparity.signals``).

Written to ``OUT/linear10/``: ``metrics.json`` (every run, every epoch: training
and validation loss / accuracy / error and dead output units per side,
parity results with their diagnosis, drift against the envelope, peak memory),
``report.md`` (per-variant mean / min / max over the seeds, per-seed table, the
document's figures, the parity messages and diagnosis, the drift section), and
plots: accuracy of every seed per variant, dead units per epoch, for the first
seed the per-epoch and per-batch loss, accuracy and error curves of training
and validation, both sides overlaid (``per_batch.npz`` holds those per-batch
values: float32 losses and accuracies), ``drift.png`` (the first seed's drift
against its envelope, one panel per variant) and ``weight_difference.png``
(the largest weight difference per epoch of every run).

A *dead* output unit is one whose pre-activation ``fc(x)`` is never positive on
any of the 30,000 training images (counted on each side after every epoch):
ReLU outputs 0 for it on every image and the correct derivative sends it no
gradient, so it never recovers. A run's ``dead_unit_indices`` are those after its
last finished epoch (at the start if none finished), as its final figures.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scratch.nets import linear10 as l10

from .. import data as mnist
from .. import drift, io
from ..bench import peak_rss_mib
from ..check import run_check
from ..networks import apply_threads, get, prepare
from ..report import COLORS, STYLES, environment
from ..signals import handled_signals, interrupt_name
from ..tape import Tape
from ..train import Diverged, Training, collapsed
from . import compact_json

NET = "linear10"
VARIANTS = l10.VARIANTS
DOCUMENT = {"train_accuracy": 93.33, "val_accuracy": 92.02}
DEFAULT_SEEDS = 5
SIDES = ("scratch", "torch")


def add_arguments(group) -> None:
    from ..cli import positive_int

    group.add_argument("--variant", choices=("both",) + VARIANTS, default=None,
                       help="both (default: the documented run), correct, or as-documented (the document's "
                            "straight-through ReLU backward on the scratch side)")
    group.add_argument("--seeds", type=positive_int, default=None,
                       help=f"train each variant with this many seeds, --seed upwards (default {DEFAULT_SEEDS})")


def log(msg: str = "") -> None:
    print(msg, flush=True)


def _val_batches(side, ds, batch_size: int):
    """Validation loss and accuracy % of every batch of the (fixed-order) validation set."""
    out = []
    for s in range(0, len(ds.y_test), batch_size):
        loss, acc = side.evaluate(ds.x_test[s:s + batch_size], ds.y_test[s:s + batch_size], batch_size=batch_size)
        out.append((loss, acc))
    return out


def _dead(side, ds) -> list:
    st = side.state()
    return [int(i) for i in l10.dead_units(np.asarray(st["param/fc.weight"]), np.asarray(st["param/fc.bias"]),
                                           ds.x_train)]


@dataclass
class SharedTorch:
    """The torch side of one seed, shared by its two variants' runs.

    Both variants train the torch side from the same weights on the same batches in the
    same order, with autograd's derivative whatever the scratch variant
    (``reference.linear10``): the same computation. The first run trains it and records
    its trajectory (``nnparity.tape``); the second replays it, stepping only its scratch
    side, and reads the same numbers bit for bit: every torch figure of the report
    (losses, accuracies, dead units, per-batch curves), and the torch weights each
    scratch side is compared with after each of the first drift steps and every epoch.
    The replayed times are the recorded ones."""

    tape: Tape | None = None                    # once a run has trained all its epochs
    dead: list = field(default_factory=list)    # the torch side's dead units after each epoch


def train_one(recipe, raw, dtype: str, seed: int, *, parity_steps: int, keep_batches: bool, progress,
              on_epoch=None, ds=None, envelope: dict | None = None, shared_torch: SharedTorch | None = None) -> dict:
    """One variant, one seed: parity, then both sides trained for ``recipe.epochs``.

    ``ds``: the seed's prepared data (else prepared here). ``envelope``: the seed's
    drift envelope (``drift.measure_envelope``); with it the drift of the envelope's
    first steps and of every epoch is recorded and assessed into ``res["drift"]``.
    ``shared_torch``: the seed's ``SharedTorch``; empty, this run trains its torch side
    and records it there (kept only if the run trains all its epochs); filled, this run
    replays it instead of training it.
    A ``KeyboardInterrupt`` (see ``nnparity.signals``) ends the run early with
    everything finished so far, ``res["interrupted"]`` set to the signal's name.
    """

    net = get(NET)
    variant = recipe.variant
    ds = ds if ds is not None else prepare(net, recipe, raw, dtype, seed)
    res = {"variant": variant, "seed": seed, "status": "incomplete", "train_size": len(ds.y_train),
           "val_size": len(ds.y_test), "epochs": []}
    training = dead = None
    replay = shared_torch.tape if shared_torch is not None else None
    try:
        if parity_steps and not _parity(res, recipe, ds, dtype, seed, parity_steps):
            return res
        steps_per_epoch = math.ceil(len(ds.y_train) / recipe.batch_size)
        training = Training(net, recipe, ds, dtype, seed, per_batch=keep_batches,
                            drift_steps=envelope["steps"] if envelope else 0,
                            record_ref=shared_torch is not None and replay is None, replay_ref=replay)
        at_init = _dead(training.scratch, ds)  # both sides start from the same weights
        res["dead_units_at_init"] = len(at_init)
        dead = {side: at_init for side in SIDES}  # after the last finished epoch
        recorded_dead = []
        batches = {f"{side}/{what}": [] for side in SIDES for what in ("train", "val")} if keep_batches else None
        if batches is not None:
            res["_batches"] = batches
        for epoch in range(1, recipe.epochs + 1):
            row = training.run_epoch(epoch, progress)
            curves = row.pop("per_batch", None)
            for side in training.sides:
                if side.name == "torch" and replay is not None:
                    dead[side.name] = shared_torch.dead[epoch - 1]
                else:
                    dead[side.name] = _dead(side, ds)
                row[side.name]["dead_units"] = len(dead[side.name])
                if batches is not None:
                    batches[f"{side.name}/train"] += curves[side.name]
                    batches[f"{side.name}/val"] += _val_batches(side, ds, recipe.batch_size)
            recorded_dead.append(dead["torch"])
            res["epochs"].append(row)
            s, t = row["scratch"], row["torch"]
            log(f"{variant:>13} seed {seed} epoch {epoch:>3}/{recipe.epochs}  "
                f"train acc {100 - s['train_error']:.2f}% | {100 - t['train_error']:.2f}%  "
                f"val acc {s['test_accuracy']:.2f}% | {t['test_accuracy']:.2f}%  "
                f"dead {s['dead_units']} | {t['dead_units']}  time {s['seconds']:.1f}s | {t['seconds']:.1f}s  "
                f"max |dw| {row['max_abs_weight_diff']:.1e}   (scratch | torch)")
            if on_epoch:
                on_epoch(res)
        res["status"] = "complete"
        if training.ref_tape is not None:  # every epoch trained: the seed's other run can replay it
            shared_torch.tape, shared_torch.dead = training.ref_tape, recorded_dead
        why = collapsed(res["epochs"])
        if why:
            res.update(status="collapsed", status_detail=why)
            log(f"{variant:>13} seed {seed} COLLAPSED: {why}")
    except Diverged as e:
        res.update(status="diverged", status_detail=str(e))
        log(f"DIVERGED: {e}")
    except KeyboardInterrupt as e:
        where = f"during epoch {len(res['epochs']) + 1}" if training else "during the parity check"
        res.update(status="incomplete", status_detail=f"interrupted ({interrupt_name(e)}) {where}",
                   interrupted=interrupt_name(e))
    if training is None:
        return res
    if dead is None:  # interrupted before the initial count
        dead = {side.name: _dead(side, ds) for side in training.sides}
    res["dead_unit_indices"] = {side: list(dead[side]) for side in SIDES}
    res["final"] = _final(res["epochs"])
    if envelope:
        res["drift"] = assess_drift(envelope, training, variant, seed, dtype, steps_per_epoch)
        log(f"{variant:>13} seed {seed} drift: {drift.verdict(res['drift'])}"
            + (" (expected: the document's ReLU backward is a different derivative)"
               if variant == "as-documented" else ""))
    return res


def _parity(res: dict, recipe, ds, dtype: str, seed: int, steps: int) -> bool:
    """Step parity before training, with the own/inherited diagnosis of a failure
    (``nnparity.check``) into ``res``; False if the run must stop here."""
    variant = recipe.variant
    checked = run_check(NET, steps, dtype, seed, recipe=recipe, ds=ds)
    trace, diagnosis = checked.trace, checked.diagnosis
    res["parity"] = {k: v for k, v in trace.to_dict().items() if k != "per_step"}
    res["parity_message"] = trace.message()
    first = trace.first_failure
    if first is not None:
        res["parity_first_failure"] = {"step": first.step, "name": first.name, "quantity": first.quantity,
                                       "note": first.note}
    if diagnosis is not None:
        res["parity"]["diagnosis"] = diagnosis.to_dict()
    why = diagnosis.render() if diagnosis is not None else trace.message()
    if checked.vanished is not None:  # degenerate, not a mismatch: said, and no reason to stop
        res["parity"]["vanished"] = checked.vanished.to_dict()
        log(f"parity INCONCLUSIVE ({variant}, seed {seed}; not a bug): {checked.vanished.sentence()}")
    if variant == "correct" and trace.failures:
        res.update(status="parity-failed", status_detail=trace.message().splitlines()[0]
                   + (f" - {diagnosis.verdict}" if diagnosis is not None else ""))
        log(f"PARITY FAILED ({variant}, seed {seed}) - not training.\n{why}")
        return False
    if variant == "as-documented":
        if not trace.failures:
            res["status"] = "parity-missed-slip"
            log(f"ERROR: the as-documented variant PASSED {steps} steps of parity: the check missed "
                "the document's ReLU slip")
            return False
        log("=" * 100 + f"\nPARITY FAILED, AS EXPECTED, for the as-documented variant (seed {seed}): its ReLU "
            "backward passes the gradient straight through.\n" + why +
            "\nTraining anyway, to show what the slip does.\n" + "=" * 100)
    else:
        log(f"parity {'ok' if trace.ok else 'found no mismatch'} ({variant}, seed {seed}, {steps} steps, {dtype}): "
            f"worst margin {trace.worst_margin():.3g} (<= 1 passes)")
    return True


def envelope_for(net, recipe, ds, seed: int, steps: int) -> dict:
    """The seed's drift envelope, shared by both variants: it is measured with the
    *correct* variant (float64 correct scratch vs torch, float32 vs float64 torch). The
    torch side, and so the rounding band, is the same in both variants: the as-documented
    scratch side is judged against the same band."""
    return drift.measure_envelope(net, recipe.replace(variant="correct"), ds, seed, steps)


def assess_drift(envelope: dict, training, variant: str, seed: int, dtype: str, steps_per_epoch: int) -> dict:
    """``drift.assess`` of one run, naming the check command that localises an exit."""
    d = drift.assess(envelope, training.step_drift, training.history, steps_per_epoch, dtype)
    d["check_command"] = f"nnparity check {NET} --variant {variant} --seed {seed}"
    return d


def _final(epochs: list) -> dict:
    if not epochs:
        return {}
    last = epochs[-1]
    return {side: {"train_accuracy": 100 - last[side]["train_error"], "val_accuracy": last[side]["test_accuracy"],
                   "train_loss": last[side]["train_loss"], "val_loss": last[side]["test_loss"],
                   "dead_units": last[side]["dead_units"],
                   "seconds": sum(r[side]["seconds"] for r in epochs)} for side in SIDES}


def summarize(runs: list) -> dict:
    """Mean / min / max over the seeds of each variant's final figures, per side."""
    out = {}
    for variant in VARIANTS:
        done = [r for r in runs if r["variant"] == variant and r.get("final")]
        if not done:
            continue
        out[variant] = {"seeds": [r["seed"] for r in done],
                        "complete": all(r["status"] == "complete" for r in done)}
        for side in SIDES:
            stats = {}
            for key in ("train_accuracy", "val_accuracy", "dead_units"):
                v = [r["final"][side][key] for r in done]
                stats[key] = {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
            out[variant][side] = stats
    for variant, v in out.items():
        init = [r["dead_units_at_init"] for r in runs if r["variant"] == variant and r.get("final")
                and "dead_units_at_init" in r]
        if init:
            v["dead_units_at_init"] = {"mean": float(np.mean(init)), "min": float(np.min(init)),
                                       "max": float(np.max(init))}
        at20 = [r["epochs"][19]["scratch"]["test_accuracy"] for r in runs
                if r["variant"] == variant and r.get("final") and len(r["epochs"]) >= 20]
        if at20 and len(at20) == len(v["seeds"]):
            v["val_accuracy_epoch20"] = {"mean": float(np.mean(at20)), "min": float(np.min(at20)),
                                         "max": float(np.max(at20))}
    for variant, v in out.items():
        assessed = [r for r in runs if r["variant"] == variant and r.get("drift")]
        if assessed:
            v["drift"] = {"seeds": [r["seed"] for r in assessed],
                          "leaves_at_step": [r["drift"]["leaves"]["step"] if r["drift"]["leaves"] else None
                                             for r in assessed],
                          "impl_leaves_at_step": [r["drift"]["impl_leaves"]["step"] if r["drift"]["impl_leaves"]
                                                  else None for r in assessed]}
    if "as-documented" in out:
        s = out["as-documented"]["scratch"]
        out["as-documented"]["vs_document_pp"] = {
            "train_accuracy": s["train_accuracy"]["mean"] - DOCUMENT["train_accuracy"],
            "val_accuracy": s["val_accuracy"]["mean"] - DOCUMENT["val_accuracy"]}
    return out


# --- plots ------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


VARIANT_COLORS = {"correct": "tab:blue", "as-documented": "tab:red"}


def _side_label(variant: str, side: str) -> str:
    if variant == "as-documented":
        return "scratch (document's ReLU backward)" if side == "scratch" else "torch (autograd)"
    return side


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


def plot_variants(runs: list) -> dict:
    """Accuracy per epoch of every seed, both variants; dead units per epoch."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    figs = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, key, title, doc in ((axes[0], "train", "training accuracy %", DOCUMENT["train_accuracy"]),
                                (axes[1], "val", "validation accuracy %", DOCUMENT["val_accuracy"])):
        seen, ends = set(), []
        for r in runs:
            if not r["epochs"]:
                continue
            ep = [e["epoch"] for e in r["epochs"]]
            y = [(100 - e["scratch"]["train_error"]) if key == "train" else e["scratch"]["test_accuracy"]
                 for e in r["epochs"]]
            label = None if r["variant"] in seen else f"{r['variant']} (scratch, each seed)"
            seen.add(r["variant"])
            ax.plot(ep, y, color=VARIANT_COLORS[r["variant"]], lw=1, alpha=0.8, label=label)
            if r["variant"] == "correct":
                ends.append((y[-1], ep[-1], f"seed {r['seed']}"))
        ax.axhline(doc, color="k", ls=":", lw=1, label=f"document: {doc}%")
        ax.set(xlabel="epoch", title=f"linear10: {title}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center right")
        label_ends(ax, ends)
    axes[0].set_ylabel("accuracy %")
    fig.tight_layout()
    figs["accuracy_variants.png"] = fig

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    from matplotlib.ticker import MaxNLocator

    top = max([e["scratch"]["dead_units"] for r in runs for e in r["epochs"]] +
              [r.get("dead_units_at_init", 0) for r in runs] + [1])
    for ax, variant in zip(axes, VARIANTS):
        mine = [r for r in runs if r["variant"] == variant and r["epochs"]]
        for i, r in enumerate(mine):
            offset = 0.08 * (i - (len(mine) - 1) / 2)  # seeds with equal counts stay visible
            ax.step([0] + [e["epoch"] for e in r["epochs"]],
                    [r["dead_units_at_init"] + offset] + [e["scratch"]["dead_units"] + offset for e in r["epochs"]],
                    where="post", lw=1.2, label=f"seed {r['seed']}: {r['epochs'][-1]['scratch']['dead_units']} dead")
        ax.set(xlabel="epoch (0: the initial weights)", title=f"{variant} (scratch)",
               ylim=(-0.5, top + 2.5))  # room above the curves for the legend
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.grid(alpha=0.3)
        if mine:
            ax.legend(fontsize=8, loc="upper right", ncol=2)
    axes[0].set_ylabel("dead output units (of 10)")
    fig.suptitle("linear10: output units never positive on any training image", fontsize=11)
    fig.tight_layout()
    figs["dead_units.png"] = fig
    return figs


def plot_first_seed(runs: list, batches: dict) -> dict:
    """Per-epoch and per-batch loss, accuracy and error of training and validation, both
    sides overlaid, one column per variant (the first seed)."""
    plt = _plt()
    figs = {}
    first = {}
    for r in runs:
        first.setdefault(r["variant"], r)
    variants = [v for v in VARIANTS if v in first and first[v]["epochs"]]
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
                            label=f"{split}: {_side_label(variant, side)}")
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
                                label=f"{_side_label(variant, side)} (running mean over one epoch)")
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


def plot_drift(runs: list) -> dict:
    """``drift.png``: the first seed's drift against its rounding envelope, one panel per
    variant (``drift.draw``); ``weight_difference.png``: the largest absolute weight
    difference per epoch of every run."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    figs = {}
    first = {}
    for r in runs:
        if r.get("drift"):
            first.setdefault(r["variant"], r)
    if first:
        fig, axes = plt.subplots(1, len(first), figsize=(6.4 * len(first), 6.4), squeeze=False)
        for ax, variant in zip(axes[0], (v for v in VARIANTS if v in first)):
            r = first[variant]
            if variant == "as-documented":
                drift.draw(ax, r["drift"], f"as-documented, seed {r['seed']}: the document's ReLU backward vs "
                           "autograd\n(a different derivative by design: expected to leave the envelope at once)",
                           drift_label="document's backward vs autograd")
            else:
                drift.draw(ax, r["drift"], f"correct, seed {r['seed']}: scratch vs torch")
        fig.suptitle("linear10: drift between the sides against the rounding envelope (the correct variant's, "
                     "same seed)", fontsize=10)
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
                    color=VARIANT_COLORS[r["variant"]], lw=1, label=label)
    ax.set(xlabel="epoch", ylabel="max |scratch - torch| over weights", yscale="log",
           title="linear10: weight difference between the sides, every seed")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.grid(alpha=0.3)
    if seen:
        ax.legend(fontsize=8)
    figs["weight_difference.png" if first else "drift.png"] = fig
    return figs


# --- report -------------------------------------------------------------------------------------------
def _mmm(s: dict, fmt=".2f") -> str:
    return f"{s['mean']:{fmt}} ({s['min']:{fmt}} - {s['max']:{fmt}})"


def render(meta: dict, runs: list, summary: dict, figures: list) -> str:
    recipe = meta["recipe"]
    L = ["# linear10: scratch (NumPy) vs PyTorch, correct vs as-documented backward", "",
         f"Produced by `{meta['command']}` ({meta['dtype']}; variants: {', '.join(meta['variants'])}; "
         f"seeds {', '.join(map(str, meta['seeds']))}).  ",
         f"Status: **{meta['status']}**" + (f" - {meta['status_detail']}" if meta.get("status_detail") else "")
         + f"; {sum(r['status'] == 'complete' for r in runs)} of {len(meta['variants']) * len(meta['seeds'])} "
           f"runs complete, {recipe['epochs']} epochs each.", "",
         f"Source document: {recipe['source']}. The document reports **{DOCUMENT['train_accuracy']}% training "
         f"/ {DOCUMENT['val_accuracy']}% validation accuracy** after 200 epochs."]
    if summary:
        L += ["", "## Result: mean (min - max) over the seeds, final epoch", "",
              "| variant | side | training accuracy % | validation accuracy % | dead output units |",
              "|---|---|---|---|---|"]
        for variant in VARIANTS:
            if variant not in summary:
                continue
            for side in SIDES:
                s = summary[variant][side]
                L.append(f"| {variant} | {_side_label(variant, side)} | {_mmm(s['train_accuracy'])} "
                         f"| {_mmm(s['val_accuracy'])} | {_mmm(s['dead_units'], '.1f')} |")
        L.append(f"| document | | {DOCUMENT['train_accuracy']} | {DOCUMENT['val_accuracy']} | |")
        if "as-documented" in summary:
            d = summary["as-documented"]["vs_document_pp"]
            within = max(abs(d["train_accuracy"]), abs(d["val_accuracy"])) <= 1.0
            L += ["", f"The as-documented variant (scratch) lands {d['train_accuracy']:+.2f} pp (training) and "
                      f"{d['val_accuracy']:+.2f} pp (validation) from the document's figures (mean over its seeds): "
                      f"**{'within' if within else 'NOT within'} 1 pp**."]
        L += story(summary)
    L += ["", "## What the parity check says", ""]
    for variant in meta["variants"]:
        rs = [r for r in runs if r["variant"] == variant and "parity" in r]
        if not rs:
            continue
        p = rs[0]["parity"]
        oks = sum(r["parity"]["ok"] for r in rs)
        if variant == "correct":
            L += [f"- **correct**: {p['steps']} steps of step parity before training, {oks} of {len(rs)} seeds "
                  f"pass; worst margin {max(r['parity']['worst_margin'] for r in rs):.3g} (tolerance atol "
                  f"{p['tolerance']['atol']:g}, rtol {p['tolerance']['rtol']:g}; <= 1 passes)."]
        else:
            L += [f"- **as-documented**: parity **FAILS, as expected**, for {len(rs) - oks} of {len(rs)} seeds; "
                  "training went on regardless. The first divergence (seed "
                  f"{rs[0]['seed']}):", "", "  ```", "  " + rs[0]["parity_message"].replace("\n", "\n  "), "  ```", "",
                  "  The forward pass and the loss agree; the first tensor to differ is the gradient arriving at "
                  "`fc`'s output, i.e. the ReLU's input gradient: the document's mask is all ones, so negative "
                  "pre-activations pass their gradient straight through where autograd passes 0."]
            if "diagnosis" in p:
                L += [""] + ["  " + line for line in diagnosis_lines(p["diagnosis"])]
        bad = [r for r in rs if variant == "correct" and not r["parity"]["ok"]]
        for r in bad:
            L += ["", f"  seed {r['seed']}:", "", "  ```", "  " + r["parity_message"].replace("\n", "\n  "),
                  "  ```"]
            if "diagnosis" in r["parity"]:
                L += [""] + ["  " + line for line in diagnosis_lines(r["parity"]["diagnosis"])]
    L += drift_section(runs, summary)
    L += ["", "## Per seed (final epoch)", "",
          "| variant | seed | parity | train acc % scratch / torch | val acc % scratch / torch "
          "| dead units at init | dead units scratch / torch | max abs weight diff | scratch s | torch s | status |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        f = r.get("final") or {}
        if not f:
            L.append(f"| {r['variant']} | {r['seed']} | {_parity_word(r)} | - | - | - | - | - | - | - "
                     f"| {r['status']} |")
            continue
        s, t = f["scratch"], f["torch"]
        L.append(f"| {r['variant']} | {r['seed']} | {_parity_word(r)} "
                 f"| {s['train_accuracy']:.2f} / {t['train_accuracy']:.2f} "
                 f"| {s['val_accuracy']:.2f} / {t['val_accuracy']:.2f} | {r.get('dead_units_at_init', '-')} "
                 f"| {s['dead_units']} {r['dead_unit_indices']['scratch']} / {t['dead_units']} "
                 f"{r['dead_unit_indices']['torch']} | {max(e['max_abs_weight_diff'] for e in r['epochs']):.2e} "
                 f"| {s['seconds']:.1f} | {t['seconds']:.1f} | {r['status']} |")
    L += ["", "In the as-documented runs the torch side is autograd's (correct) derivative from the same "
              "weights and batches, so there 'scratch vs torch' is 'as-documented vs correct' for one seed."]
    L += ["", "## Recipe", "", "| field | value |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in recipe.items() if k != "choices"]
    L += ["", "Choices made where the document is silent:", ""] + [f"- {c}" for c in recipe["choices"]]
    first = {}
    for r in runs:
        first.setdefault(r["variant"], r)
    for variant, r in first.items():
        if not r["epochs"]:
            continue
        L += ["", f"## Every 10th epoch: {variant}, seed {r['seed']}", "",
              "| epoch | train loss scratch / torch | train acc % scratch / torch | val loss scratch / torch "
              "| val acc % scratch / torch | dead units scratch / torch | max abs weight diff |",
              "|---|---|---|---|---|---|---|"]
        for e in r["epochs"]:
            if e["epoch"] % 10 and e["epoch"] not in (1, 5, len(r["epochs"])):
                continue
            s, t = e["scratch"], e["torch"]
            L.append(f"| {e['epoch']} | {s['train_loss']:.5f} / {t['train_loss']:.5f} "
                     f"| {100 - s['train_error']:.2f} / {100 - t['train_error']:.2f} "
                     f"| {s['test_loss']:.5f} / {t['test_loss']:.5f} "
                     f"| {s['test_accuracy']:.2f} / {t['test_accuracy']:.2f} "
                     f"| {s['dead_units']} / {t['dead_units']} | {e['max_abs_weight_diff']:.2e} |")
    if figures:
        L += ["", "## Plots", "", "`batch_*.png` and `epoch_*.png` show the first seed, both sides overlaid; the "
              "per-batch values behind them are in `per_batch.npz` (written by the run, not committed: float32 "
              "losses and accuracies, a few MB).", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    env = meta.get("environment", {})
    L += ["", "## Environment", "", ", ".join(f"{k} {v}" for k, v in env.items())
          + (f"; peak resident memory {meta['peak_rss_mib']} MiB" if "peak_rss_mib" in meta else ""), ""]
    return "\n".join(L)


def diagnosis_lines(d: dict) -> list:
    """Own or inherited (``nnparity.check``'s diagnosis, from its record): every stage of
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


def drift_section(runs: list, summary: dict) -> list:
    """Drift between the sides against the rounding envelope, every run (``nnparity.drift``)."""
    assessed = [r for r in runs if r.get("drift")]
    if not assessed:
        return []
    lead = next((r for r in assessed if r["variant"] == "correct"), assessed[0])
    k = lead["drift"]["envelope_steps"]
    L = ["", "## Drift between the sides", "",
         f"Each seed's rounding envelope is measured once, before its runs, from its initial weights on its first "
         f"{k} batches, with the **correct** variant; both variants of the seed are judged against it (their torch "
         "sides are the same computation, so is the rounding band). "
         f"For the {lead['variant']} variant, seed {lead['seed']}:", "",
         drift.markdown(lead["drift"], heading=None), "",
         "| variant | seed | drift at the last enveloped step | band there | largest drift / band (step) "
         "| leaves the envelope | envelope: float64 (correct) scratch vs torch leaves its band "
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
    for variant in VARIANTS:
        v = summary.get(variant, {}).get("drift")
        if not v:
            continue
        n, left = len(v["seeds"]), [s for s in v["leaves_at_step"] if s is not None]
        if variant == "correct":
            L += ["", f"**Correct variant:** drift stays inside the rounding envelope for {n - len(left)} of {n} "
                      "seeds" + (f"; it leaves it at step{'s' * (len(left) > 1)} {', '.join(map(str, left))} for "
                                 f"the others: more difference than rounding explains, see the verdicts above."
                                 if left else ": the two implementations differ by rounding only.")]
        else:
            L += ["", "**As-documented variant (a different derivative by design, not rounding):** its scratch "
                      "side uses the document's straight-through ReLU backward, its torch side autograd's, so its "
                      "drift measures the slip itself. It is expected to leave the rounding envelope at once: it "
                      f"leaves it in {len(left)} of {n} seeds"
                      + (f", at step{'s' * (len(left) > 1)} {', '.join(map(str, left))}" if left else "")
                      + ". This is the parity failure above seen in the weights, growing over the run (right panel "
                      "of `drift.png`): `nnparity check linear10 --variant as-documented --steps 1` names the "
                      "ReLU's backward as the culprit."]
    return L


def story(summary: dict) -> list:
    """The correct-vs-as-documented paragraph, from the numbers."""
    if not {"correct", "as-documented"} <= set(summary):
        return []
    c, d = summary["correct"]["scratch"], summary["as-documented"]["scratch"]
    n = len(summary["correct"]["seeds"])
    init = ""
    if "dead_units_at_init" in summary["correct"]:
        i = summary["correct"]["dead_units_at_init"]
        init = (f" The unit-norm initialisation already leaves {_mmm(i, '.1f')} units negative on every "
                "training image, and the correct derivative can never bring them back.")
    flat = ""
    if "val_accuracy_epoch20" in summary["as-documented"]:
        flat = (f" As the document observes, validation accuracy flattens after about 20 epochs: "
                f"{summary['as-documented']['val_accuracy_epoch20']['mean']:.2f}% at epoch 20, "
                f"{d['val_accuracy']['mean']:.2f}% at the end (as-documented, mean over the seeds).")
    return ["", "**Correct vs as-documented.** The network puts a ReLU between the linear layer and the softmax. "
            "With the derivative autograd computes, the ReLU blocks the gradient wherever a pre-activation is "
            "negative: an image whose true-class output is negative cannot pull it up, and an output unit that is "
            "negative on every training image (*dead*) never learns again (its output stays 0). "
            f"Over {n} seeds, {_mmm(c['dead_units'], '.1f')} of the 10 output units end up dead (mean, min - max) "
            f"and accuracy ends at {_mmm(c['train_accuracy'])}% training and {_mmm(c['val_accuracy'])}% "
            "validation, depending on the initialisation." + init
            + " With the document's slip the gradient passes straight "
            "through the ReLU, so negative outputs keep learning: "
            f"{_mmm(d['dead_units'], '.1f')} dead units, {_mmm(d['train_accuracy'])}% training and "
            f"{_mmm(d['val_accuracy'])}% validation, against the document's {DOCUMENT['train_accuracy']}% / "
            f"{DOCUMENT['val_accuracy']}%. The document's headline figures come from its derivation slip; step "
            "parity flags the slip at step 1, at the ReLU's input gradient." + flat]


def _parity_word(r) -> str:
    if "parity" not in r:
        return "not run"
    if r["parity"]["ok"]:
        return "pass"
    if r["parity"].get("status") == "degenerate":  # no mismatch; gradients zero (or overflowed) on both sides
        return "inconclusive"
    return "FAIL (expected)" if r["variant"] == "as-documented" else "FAIL"


def write(out_dir: Path, meta: dict, runs: list, *, final: bool) -> None:
    """metrics.json always; plots and report.md too when ``final``. Each file atomic."""
    summary = summarize(runs)
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
        figs.update(plot_variants(runs))
        figs.update(plot_first_seed(runs, batches))
        figs.update(plot_drift(runs))
        if batches:
            arrays = {}
            for variant, b in batches.items():
                for key, val in b.items():
                    if key != "batches_per_epoch":
                        arrays[f"{variant}/{key}/loss"] = val[0]
                        arrays[f"{variant}/{key}/accuracy"] = val[1]
            import io as _io

            buf = _io.BytesIO()
            np.savez_compressed(buf, **arrays)
            io.write_bytes(out_dir / "per_batch.npz", buf.getvalue())
    io.write_text(out_dir / "metrics.json", compact_json({**meta, "summary": summary, "runs": clean}) + "\n")
    if final:
        for name, fig in figs.items():
            io.write_figure(out_dir / name, fig)
        plt = _plt()
        for fig in figs.values():
            plt.close(fig)
        io.write_text(out_dir / "report.md", render(meta, runs, summary, list(figs)))


def figures_from_metrics(metrics: dict, folder: Path) -> dict:
    """The report's plots drawn again from its ``metrics.json`` (``nnparity.report.rerender``).

    The per-batch plots need ``per_batch.npz`` beside it (written by the run, not committed):
    without it they are not drawn, and the PNGs already in the folder stay as they are."""
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
    figs = {**plot_variants(runs), **plot_first_seed(runs, batches), **plot_drift(runs)}
    if not batches:
        plt = _plt()
        for name in [n for n in figs if n.startswith("batch_")]:
            plt.close(figs.pop(name))
    return figs


UNSUPPORTED = {
    "save_every": "linear10 trains 10 runs of 200 short epochs each; rerun instead of resuming",
    "resume": "linear10 trains 10 runs of 200 short epochs each; rerun instead of resuming",
}


def run(args) -> int:

    net = get(NET)
    apply_threads(net)
    base = net.recipe.replace(epochs=args.epochs, lr=args.lr[0] if args.lr else None, batch_size=args.batch_size,
                              train_size=args.train_size, test_size=args.test_size)
    dtype = args.dtype or base.dtype
    variants = VARIANTS if (args.variant or "both") == "both" else (args.variant,)
    seeds = [args.seed + i for i in range(args.seeds or DEFAULT_SEEDS)]
    folder = io.RunFolder(args.out, NET)
    progress = False if args.no_progress else None

    t0 = time.perf_counter()
    raw = mnist.load_mnist(args.data_dir)
    with handled_signals(), folder:  # Ctrl-C and kill both end the run cleanly, with its files
        return _run(args, net, base, dtype, variants, seeds, raw, t0, folder, progress)


def _run(args, net, base, dtype, variants, seeds, raw, t0, folder, progress) -> int:
    from ..run import EXIT_COLLAPSED, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARITY

    out_dir = folder.path  # the run's work folder; put in place by _finish
    log(f"{NET}: variants {', '.join(variants)}; seeds {', '.join(map(str, seeds))}; {dtype}, {base.epochs} epochs, "
        f"batch {base.batch_size}, lr {base.lr}, {base.train_size} training / {base.test_size} validation images "
        f"from {raw.source} ({time.perf_counter() - t0:.1f} s)")
    meta = {"net": NET, "command": args.command_line, "dtype": dtype, "status": "incomplete",
            "variants": list(variants), "seeds": seeds, "epochs_planned": base.epochs,
            "document": DOCUMENT, "recipe": {**base.as_dict(), "variant": ", ".join(variants)},
            "environment": environment()}
    runs, status = [], EXIT_OK
    where = "at the start"
    try:
        for seed in seeds:
            where = f"while preparing seed {seed}"
            ds = prepare(net, base, raw, dtype, seed)  # the same for both variants
            envelope = None
            shared_torch = SharedTorch() if len(variants) > 1 else None  # trained by the first run, replayed
            steps = min(args.envelope_steps, base.epochs * math.ceil(len(ds.y_train) / base.batch_size))
            if steps:
                where = f"while measuring the drift envelope of seed {seed}"
                envelope = envelope_for(net, base, ds, seed, steps)
                log(f"drift envelope (seed {seed}): float64 scratch vs torch and float32 vs float64 torch, "
                    f"{steps} steps, {envelope['seconds']:.2f} s")
            for variant in variants:
                recipe = base.replace(variant=variant)
                where = f"during {variant}, seed {seed}"
                res = train_one(recipe, raw, dtype, seed, parity_steps=args.parity_steps,
                                keep_batches=seed == seeds[0], progress=progress, ds=ds, envelope=envelope,
                                shared_torch=shared_torch,
                                on_epoch=lambda r: (write(out_dir, meta, runs + [r], final=False)
                                                    if len(r["epochs"]) % 10 == 0 else None))
                runs.append(res)
                where = f"after {variant}, seed {seed}"
                if res["status"] in ("parity-failed", "parity-missed-slip"):
                    meta.update(status=res["status"], status_detail=res["status_detail"]
                                if res["status"] == "parity-failed" else
                                "the as-documented variant passed parity: the check missed the slip")
                    dest = _finish(folder, meta, runs)
                    log(f"report: {dest / 'report.md'}")
                    return EXIT_PARITY
                if res.get("interrupted"):
                    raise KeyboardInterrupt(res["interrupted"])
                write(out_dir, meta, runs, final=False)
                if res["status"] == "diverged":
                    status = EXIT_DIVERGED
                elif res["status"] == "collapsed" and status == EXIT_OK:
                    status = EXIT_COLLAPSED
    except KeyboardInterrupt as e:
        last = runs[-1] if runs and runs[-1].get("interrupted") else None
        meta["status_detail"] = (f"interrupted: {last['variant']}, seed {last['seed']}, {last['status_detail']}"
                                 if last else f"interrupted ({interrupt_name(e)}) {where}")
        dest = _finish(folder, meta, runs)
        log(f"\ninterrupted: report of the finished epochs: {dest / 'report.md'}")
        return EXIT_INTERRUPTED
    meta["status"] = {EXIT_OK: "complete", EXIT_COLLAPSED: "collapsed"}.get(status, "diverged")
    dest = _finish(folder, meta, runs)
    summary = summarize(runs)
    for variant in variants:
        if variant in summary:
            s = summary[variant]["scratch"]
            log(f"{variant:>13}: train acc {_mmm(s['train_accuracy'])}  val acc {_mmm(s['val_accuracy'])}  "
                f"dead units {_mmm(s['dead_units'], '.1f')}  (scratch; mean (min - max) over {len(seeds)} seeds)")
    log(f"report: {dest / 'report.md'} (peak memory {meta['peak_rss_mib']} MiB)")
    return status


def _finish(folder, meta: dict, runs: list) -> Path:
    """The final files: metrics.json, the plots and report.md, with the peak memory; the
    folder goes in place (``OUT/linear10``, or ``OUT/linear10.incomplete`` unless complete)."""
    from ..run import finish_folder

    meta["peak_rss_mib"] = round(peak_rss_mib())
    return finish_folder(folder, meta["status"] in ("complete", "collapsed"),
                         lambda path: write(path, meta, runs, final=True))
