"""``nnparity run NET``: step parity first, then full training of both sides, then the report."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from . import checkpoint
from .bench import peak_rss_mib
from . import data as mnist
from . import drift, io
from .check import run_check
from .networks import apply_threads, get, prepare
from .report import environment, write_report
from .train import Diverged, Training, collapsed

EXIT_OK, EXIT_PARITY, EXIT_DIVERGED, EXIT_COLLAPSED, EXIT_INTERRUPTED = 0, 1, 3, 4, 130


def log(msg: str = "") -> None:
    print(msg, flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def catch_interrupts():
    """From now on SIGINT (Ctrl-C) and SIGTERM (kill) both raise ``KeyboardInterrupt``
    carrying the signal's name, even where the shell started the process with SIGINT
    ignored (a background job of a non-interactive shell, as in CI), so that a run can
    catch it and write its files marked incomplete. Returns the function that puts the
    previous handlers back (call it in a ``finally``)."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore():
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def interrupt_name(e: KeyboardInterrupt) -> str:
    """The signal behind a ``KeyboardInterrupt`` (a plain Ctrl-C carries no name: SIGINT)."""
    return e.args[0] if e.args else "SIGINT"


def run_network(name: str, *, epochs=None, lr=None, batch_size=None, seed: int = 0, dtype=None, out="reports",
                data_dir=None,
                parity_steps: int = 20, progress=None, command: str | None = None,
                train_size=None, test_size=None, save_every: int | None = None, resume=None,
                envelope_steps: int = drift.DEFAULT_STEPS) -> int:
    """Run one documented network end to end; returns the process exit status."""
    net = get(name)
    apply_threads(net)
    recipe = net.recipe.replace(epochs=epochs, lr=lr, batch_size=batch_size, train_size=train_size,
                                test_size=test_size)
    dtype = dtype or recipe.dtype
    identity = {"net": name, "dtype": dtype, "seed": seed,
                "recipe": {k: v for k, v in recipe.as_dict().items() if k != "epochs"}}
    resumed = checkpoint.load(resume, identity) if resume else None  # refuse a bad one before any work
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
        checked = run_check(name, parity_steps, dtype, seed, recipe=recipe, ds=ds)
        trace = checked.trace
        log(trace.table(every=max(1, parity_steps // 5)))
        meta["parity"] = {k: v for k, v in trace.to_dict().items() if k != "per_step"}
        if checked.vanished is not None:  # degenerate, not a mismatch: say so, and train
            meta["parity"]["vanished"] = checked.vanished.to_dict()
            log(f"parity INCONCLUSIVE (not a bug): {checked.vanished.sentence()}")
        if trace.failures:
            meta.update(status="parity-failed", status_detail=trace.message().splitlines()[0])
            if checked.diagnosis is not None:
                meta["parity"]["diagnosis"] = checked.diagnosis.to_dict()
                meta["status_detail"] += f" - {checked.diagnosis.verdict}"
            write_report(out_dir, meta, [])
            why = checked.diagnosis.render() if checked.diagnosis is not None else trace.message()
            log(f"PARITY FAILED - not training.\n{why}\nreport: {out_dir / 'report.md'}")
            return EXIT_PARITY
        log(f"parity {'ok' if trace.ok else 'found no mismatch'}: worst margin {trace.worst_margin():.3g} "
            "(<= 1 passes)")

    steps_per_epoch = -(-len(ds.y_train) // recipe.batch_size)
    envelope_steps = min(envelope_steps, recipe.epochs * steps_per_epoch)
    envelope = None
    if envelope_steps:
        log(f"drift envelope: float64 scratch vs torch and float32 vs float64 torch, {envelope_steps} steps ...")
        envelope = drift.measure_envelope(net, recipe, ds, seed, envelope_steps)
    training = Training(net, recipe, ds, dtype, seed, drift_steps=envelope_steps)
    start = 1
    if resumed:
        start = checkpoint.restore(training, *resumed)
        meta["resumed_from"] = f"{resume} (after epoch {start - 1})"
        log(f"resumed from {resume}: {start - 1} epochs done")
    status = EXIT_OK
    restore_signals = catch_interrupts()  # Ctrl-C and kill both end the run cleanly
    try:
        for epoch in range(start, recipe.epochs + 1):
            row = training.run_epoch(epoch, progress)
            s, t = row["scratch"], row["torch"]
            log(f"epoch {epoch:>3}/{recipe.epochs}  loss {s['train_loss']:.5f} | {t['train_loss']:.5f}  "
                f"train err {s['train_error']:.3f}% | {t['train_error']:.3f}%  "
                f"test acc {s['test_accuracy']:.2f}% | {t['test_accuracy']:.2f}%  "
                f"time {s['seconds']:.1f}s | {t['seconds']:.1f}s  "
                f"max |dw| {row['max_abs_weight_diff']:.1e}   (scratch | torch)")
            io.write_json(out_dir / "metrics.json", {**meta, "epochs": training.history})
            if save_every and epoch % save_every == 0:
                checkpoint.save(out_dir / checkpoint.FILE_NAME, training, identity)
        meta["status"] = "complete"
        why = collapsed(training.history)
        if why:
            meta.update(status="collapsed", status_detail=why)
            status = EXIT_COLLAPSED
            log(f"COLLAPSED: {why}")
    except KeyboardInterrupt as e:
        meta["status_detail"] = f"interrupted ({interrupt_name(e)}) during epoch {len(training.history) + 1}"
        status = EXIT_INTERRUPTED
        log(f"\ninterrupted: writing the report of the {len(training.history)} finished epochs")
    except Diverged as e:
        meta.update(status="diverged", status_detail=str(e))
        status = EXIT_DIVERGED
        log(f"DIVERGED: {e}")
    finally:
        restore_signals()
    if envelope is not None:
        meta["drift"] = drift.assess(envelope, training.step_drift, training.history, steps_per_epoch, dtype)
        log(f"drift: {drift.verdict(meta['drift'])}")
    meta["peak_rss_mib"] = round(peak_rss_mib())
    write_report(out_dir, meta, training.history)
    log(f"report: {out_dir / 'report.md'} (peak memory {meta['peak_rss_mib']} MiB)")
    return status
