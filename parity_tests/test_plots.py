"""The report plots a newcomer reads: whole-number epoch ticks, every line named and every
legend entry visible, end labels that do not overlap, and ``rerender`` (PNGs redrawn from
``metrics.json`` without training, byte for byte reproducible)."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from nnparity.reporting import report  # noqa: E402
from nnparity.training import drift  # noqa: E402
from nnparity.reporting.report import spread_labels  # noqa: E402


def _history(epochs: int) -> list:
    def side(e):
        return {"train_loss": 1.0 / e, "train_error": 10.0 / e, "test_accuracy": 90 + e, "seconds": 1.0}

    return [{"epoch": e, "scratch": side(e), "torch": side(e), "max_abs_weight_diff": 1e-15 * e,
             "max_rel_weight_diff": 1e-16 * e} for e in range(1, epochs + 1)]


def _drift(dtype="float64", k=20, leaves=None) -> dict:
    impl = [1e-16 * (1 + s / k) for s in range(1, k + 1)]
    chaos = [1e-7 * (1 + s / k) for s in range(1, k + 1)]
    return {"dtype": dtype, "envelope_steps": k, "steps_per_epoch": 10, "envelope_seconds": 0.1,
            "impl64": impl, "chaos32": chaos, "band": drift.band(chaos, dtype),
            "step_drift": [[s, v] for s, v in enumerate(impl, 1)],  # a float64 run: drift = impl64
            "epoch_drift": [[10 * e, e, 1e-15 * e] for e in range(1, 6)], "worst_ratio": None,
            "leaves": leaves, "impl_leaves": None}


def test_two_epoch_plots_have_whole_number_epoch_ticks():
    figs = report.per_epoch_plots(_history(2), "net")
    try:
        for name, fig in figs.items():
            ax = fig.axes[0]
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
    finally:
        report._close(figs)


@pytest.mark.parametrize("leaves", [None, {"step": 3, "epoch": 1, "drift": 1e-3, "band": 1e-12}])
def test_drift_plot_names_every_line_and_draws_the_envelope_on_top(leaves):
    d = _drift(leaves=leaves)
    fig, ax = plt.subplots()
    try:
        drift.draw(ax, d, "t")
        unnamed = [line for line in ax.lines if line.get_label().startswith("_")]
        assert not unnamed, "every line (the step-K boundary, the leave marker too) has a legend label"
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("end of the per-step record (step 20)" in t for t in labels)
        assert any("leaves the band (step 3)" in t for t in labels) == bool(leaves)
        by_label = {line.get_label(): line for line in ax.lines}
        drift_line = by_label["drift, per step"]
        impl = next(line for lab, line in by_label.items() if lab.startswith("envelope: float64"))
        chaos = next(line for lab, line in by_label.items() if lab.startswith("envelope: float32"))
        # in a float64 run the float64 envelope is the drift itself: drawn over it, and said so
        assert impl.get_zorder() > drift_line.get_zorder() and chaos.get_zorder() > drift_line.get_zorder()
        assert "= the drift per step" in impl.get_label()
    finally:
        plt.close(fig)


def test_drift_plot_does_not_claim_coincidence_when_curves_differ():
    d = _drift(dtype="float32")
    d["step_drift"] = [[s, 2 * v] for s, v in d["step_drift"]]
    fig, ax = plt.subplots()
    try:
        drift.draw(ax, d, "t")
        assert not any("= the drift" in line.get_label() for line in ax.lines)
    finally:
        plt.close(fig)


def test_end_labels_keep_their_distance():
    ys = [84.5, 84.6, 85.8, 56.8, 38.6]  # linear10's seeds 0, 3 (0.1 apart), 2, 1, 4
    placed = spread_labels(ys, gap=2.0)
    ordered = sorted(placed)
    assert all(b - a >= 2.0 - 1e-12 for a, b in zip(ordered, ordered[1:]))
    assert placed[3:] == ys[3:], "labels with room stay at their curve"
    assert min(placed[:3]) == 84.5 and all(p >= y for p, y in zip(placed, ys))


def _report_folder(tmp_path):
    meta = {"net": "mlp1000", "command": "nnparity run mlp1000", "seed": 0, "dtype": "float64",
            "status": "complete", "epochs_planned": 2, "drift": _drift()}
    folder = tmp_path / "mlp1000"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({**meta, "epochs": _history(2)}))
    (folder / "report.md").write_text("# the report\n")
    return folder


def test_rerender_redraws_pngs_deterministically_and_touches_nothing_else(tmp_path):
    folder = _report_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    names = report.rerender(folder)
    assert sorted(names) == ["accuracy.png", "drift.png", "error.png", "loss.png"]
    first = {n: (folder / n).read_bytes() for n in names}
    assert all(b.startswith(b"\x89PNG") for b in first.values())
    assert all(b"Software" not in b and b"Creation Time" not in b for b in first.values())
    report.rerender(folder)
    assert {n: (folder / n).read_bytes() for n in names} == first, "the same metrics give the same bytes"
    for name in ("metrics.json", "report.md"):
        assert (folder / name).read_bytes() == before[name]


def test_rerender_cli_names_a_folder_without_metrics(tmp_path, capsys):
    assert report.main(["--rerender", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "metrics.json does not exist" in err


def test_linear10_per_batch_plots_name_every_line():
    import numpy as np

    from nnparity.training.networks import get
    from nnparity.reporting.report import plot_first_seed

    side = {"train_loss": 0.5, "test_loss": 0.6, "train_error": 10.0, "test_accuracy": 88.0}
    runs = [{"variant": v, "seed": 0, "epochs": [{"epoch": e, "scratch": side, "torch": side} for e in (1, 2)]}
            for v in ("correct", "as-documented")]
    curve = (np.linspace(1, 0.1, 8, dtype=np.float32), np.linspace(50, 90, 8, dtype=np.float32))
    b = {f"{s}/{split}": curve for s in ("scratch", "torch") for split in ("train", "val")}
    b["batches_per_epoch"] = {"train": 4, "val": 4}
    figs = plot_first_seed(get("linear10"), runs, {"correct": b, "as-documented": b})
    try:
        assert {"batch_loss.png", "epoch_loss.png"} <= set(figs)
        for name, fig in figs.items():
            for ax in fig.axes:
                assert ax.lines and not [ln for ln in ax.lines if ln.get_label().startswith("_")], name
    finally:
        report._close(figs)
