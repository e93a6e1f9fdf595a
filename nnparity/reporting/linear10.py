"""What ``nnparity run linear10`` adds to the generic sweep (``nnparity.cli.run``): the
dead-unit metric, the document's figures and the correct-vs-as-documented story.

Its entry sweeps 5 seeds x both variants and expects the as-documented variant to fail
step parity; the rest (parity, envelope, training, the torch side trained once per seed,
the report's tables and plots) is the generic sweep's (``run.train_one``, ``report``).

A *dead* output unit is one whose pre-activation ``fc(x)`` is never positive on any of
the 30,000 training images (counted on each side at the start and after every epoch):
ReLU outputs 0 for it on every image and the correct derivative sends it no gradient,
so it never recovers. A run's ``dead_unit_indices`` are those after its last finished
epoch (at the start if none finished), as its final figures.
"""

from __future__ import annotations

import numpy as np

from scratch.nets import linear10 as l10

from nnparity.reporting.report import _stats, mmm

DOCUMENT = {"train_accuracy": 93.33, "val_accuracy": 92.02}
TITLE = "correct vs as-documented backward"
EPOCH_METRIC = ("dead_units", "dead_unit_indices")  # (count per side and epoch, indices at the end)
METRIC_LABEL, METRIC_SHORT = "dead output units", "dead units"
# its plot (report.plot_metric): file, y label, title, legend word
METRIC_PLOT = ("dead_units.png", "dead output units (of 10)", "output units never positive on any training image",
               "dead")


def epoch_metric(side, ds) -> list:
    """The dead output units of ``side`` on the training images (see the module doc)."""
    st = side.state()
    return [int(i) for i in l10.dead_units(np.asarray(st["param/fc.weight"]), np.asarray(st["param/fc.bias"]),
                                           ds.x_train)]


def source_note() -> str:  # after "Source document: ..."
    return (f" The document reports **{DOCUMENT['train_accuracy']}% training / {DOCUMENT['val_accuracy']}% "
            "validation accuracy** after 200 epochs.")


def side_label(variant: str, side: str) -> str:
    if variant == "as-documented":
        return "scratch (document's ReLU backward)" if side == "scratch" else "torch (autograd)"
    return side


def summarize_variant(v: dict, runs: list) -> None:
    """Validation accuracy at epoch 20, where the document says it flattens."""
    at20 = [r["epochs"][19]["scratch"]["test_accuracy"] for r in runs if len(r["epochs"]) >= 20]
    if at20 and len(at20) == len(v["seeds"]):
        v["val_accuracy_epoch20"] = _stats(at20)


def summarize(out: dict) -> None:
    """How far the as-documented variant lands from the document's figures (percentage points)."""
    if "as-documented" in out:
        s = out["as-documented"]["scratch"]
        out["as-documented"]["vs_document_pp"] = {k: s[k]["mean"] - DOCUMENT[k] for k in DOCUMENT}


def result_notes(summary: dict) -> list:
    """Below the result table: the as-documented variant against the document, then the story."""
    L = []
    if "as-documented" in summary:
        d = summary["as-documented"]["vs_document_pp"]
        within = max(abs(d["train_accuracy"]), abs(d["val_accuracy"])) <= 1.0
        L += ["", f"The as-documented variant (scratch) lands {d['train_accuracy']:+.2f} pp (training) and "
                  f"{d['val_accuracy']:+.2f} pp (validation) from the document's figures (mean over its seeds): "
                  f"**{'within' if within else 'NOT within'} 1 pp**."]
    return L + story(summary)


def story(summary: dict) -> list:
    """The correct-vs-as-documented paragraph, from the numbers."""
    if not {"correct", "as-documented"} <= set(summary):
        return []
    c, d = summary["correct"]["scratch"], summary["as-documented"]["scratch"]
    n = len(summary["correct"]["seeds"])
    init = ""
    if "dead_units_at_init" in summary["correct"]:
        i = summary["correct"]["dead_units_at_init"]
        init = (f" The unit-norm initialisation already leaves {mmm(i, '.1f')} units negative on every "
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
            f"Over {n} seeds, {mmm(c['dead_units'], '.1f')} of the 10 output units end up dead (mean, min - max) "
            f"and accuracy ends at {mmm(c['train_accuracy'])}% training and {mmm(c['val_accuracy'])}% "
            "validation, depending on the initialisation." + init
            + " With the document's slip the gradient passes straight "
            "through the ReLU, so negative outputs keep learning: "
            f"{mmm(d['dead_units'], '.1f')} dead units, {mmm(d['train_accuracy'])}% training and "
            f"{mmm(d['val_accuracy'])}% validation, against the document's {DOCUMENT['train_accuracy']}% / "
            f"{DOCUMENT['val_accuracy']}%. The document's headline figures come from its derivation slip; step "
            "parity flags the slip at step 1, at the ReLU's input gradient." + flat]


def expected_failure_note(variant: str) -> str:
    return ("The forward pass and the loss agree; the first tensor to differ is the gradient arriving at "
            "`fc`'s output, i.e. the ReLU's input gradient: the document's mask is all ones, so negative "
            "pre-activations pass their gradient straight through where autograd passes 0.")


def drift_note(variant: str, n: int, left: list) -> str:
    return ("**As-documented variant (a different derivative by design, not rounding):** its scratch "
            "side uses the document's straight-through ReLU backward, its torch side autograd's, so its "
            "drift measures the slip itself. It is expected to leave the rounding envelope at once: it "
            f"leaves it in {len(left)} of {n} seeds"
            + (f", at step{'s' * (len(left) > 1)} {', '.join(map(str, left))}" if left else "")
            + ". This is the parity failure above seen in the weights, growing over the run (right panel "
            "of `drift.png`): `nnparity check linear10 --variant as-documented --steps 1` names the "
            "ReLU's backward as the culprit.")


def drift_title(variant: str, seed: int) -> tuple:
    """(title, drift curve label) of a variant's panel of ``drift.png``."""
    if variant == "as-documented":
        return (f"as-documented, seed {seed}: the document's ReLU backward vs "
                "autograd\n(a different derivative by design: expected to leave the envelope at once)",
                "document's backward vs autograd")
    return f"{variant}, seed {seed}: scratch vs torch", None
