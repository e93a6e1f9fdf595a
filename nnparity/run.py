"""``nnparity run NET``: step parity first, then full training of both sides, then the report."""

from __future__ import annotations

import time
from pathlib import Path

from . import data as mnist
from . import io
from .networks import apply_threads, get, prepare, run_parity
from .report import environment, write_report
from .train import Diverged, Training

EXIT_OK, EXIT_PARITY, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 3, 130


def log(msg: str = "") -> None:
    print(msg, flush=True)


def run_network(name: str, *, epochs=None, seed: int = 0, dtype=None, out="reports", data_dir=None,
                parity_steps: int = 20, progress=None, command: str | None = None,
                train_size=None, test_size=None) -> int:
    """Run one documented network end to end; returns the process exit status."""
    net = get(name)
    apply_threads(net)
    recipe = net.recipe.replace(epochs=epochs, train_size=train_size, test_size=test_size)
    dtype = dtype or recipe.dtype
    out_dir = io.ensure_writable_dir(Path(out) / name)
    command = command or f"nnparity run {name}"

    t0 = time.perf_counter()
    raw = mnist.load_mnist(data_dir)
    ds = prepare(net, recipe, raw, dtype, seed)
    log(f"{name}: {len(ds.y_train)} training / {len(ds.y_test)} test images from {raw.source} "
        f"({time.perf_counter() - t0:.1f} s); {dtype}, seed {seed}, {recipe.epochs} epochs, "
        f"batch {recipe.batch_size}, lr {recipe.lr}")

    meta = {"net": name, "command": command, "dtype": dtype, "seed": seed, "status": "incomplete",
            "epochs_planned": recipe.epochs, "recipe": recipe.as_dict(), "environment": environment()}
    if parity_steps:
        log(f"step parity: {parity_steps} steps, {dtype} ...")
        trace = run_parity(name, parity_steps, dtype, seed, recipe=recipe, ds=ds)
        log(trace.table(every=max(1, parity_steps // 5)))
        meta["parity"] = {k: v for k, v in trace.to_dict().items() if k != "per_step"}
        if not trace.ok:
            meta.update(status="parity-failed", status_detail=trace.message().splitlines()[0])
            write_report(out_dir, meta, [])
            log(f"PARITY FAILED - not training.\n{trace.message()}\nreport: {out_dir / 'report.md'}")
            return EXIT_PARITY
        log(f"parity ok: worst margin {trace.worst_margin():.3g} (<= 1 passes)")

    training = Training(net, recipe, ds, dtype, seed)
    status = EXIT_OK
    try:
        for epoch in range(1, recipe.epochs + 1):
            row = training.run_epoch(epoch, progress)
            s, t = row["scratch"], row["torch"]
            log(f"epoch {epoch:>3}/{recipe.epochs}  loss {s['train_loss']:.5f} | {t['train_loss']:.5f}  "
                f"train err {s['train_error']:.3f}% | {t['train_error']:.3f}%  "
                f"test acc {s['test_accuracy']:.2f}% | {t['test_accuracy']:.2f}%  "
                f"time {s['seconds']:.1f}s | {t['seconds']:.1f}s  "
                f"max |dw| {row['max_abs_weight_diff']:.1e}   (scratch | torch)")
            io.write_json(out_dir / "metrics.json", {**meta, "epochs": training.history})
        meta["status"] = "complete"
    except KeyboardInterrupt:
        meta["status_detail"] = f"interrupted during epoch {len(training.history) + 1}"
        status = EXIT_INTERRUPTED
        log(f"\ninterrupted: writing the report of the {len(training.history)} finished epochs")
    except Diverged as e:
        meta.update(status="diverged", status_detail=str(e))
        status = EXIT_DIVERGED
        log(f"DIVERGED: {e}")
    write_report(out_dir, meta, training.history)
    log(f"report: {out_dir / 'report.md'}")
    return status
