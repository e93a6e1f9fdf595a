"""``nnparity run NET``: step parity first, then full training of both sides, then the report."""

from __future__ import annotations

import time
from pathlib import Path

from . import checkpoint
from .bench import peak_rss_mib
from . import data as mnist
from . import drift, io
from .check import run_check
from .networks import apply_threads, get, prepare
from .progress import parity_bar
from .report import environment, write_report
from .signals import handled_signals, interrupt_name, signals_held
from .train import Diverged, Training, collapsed

EXIT_OK, EXIT_PARITY, EXIT_DIVERGED, EXIT_COLLAPSED, EXIT_INTERRUPTED = 0, 1, 3, 4, 130


def log(msg: str = "") -> None:
    print(msg, flush=True)


def finish_folder(folder: io.RunFolder, complete: bool, write) -> Path:
    """Write the run's last files (``write(path)``) and put its folder in place, with
    signals held until both are done; returns where the files are."""
    with signals_held() as held:
        try:
            write(folder.path)
        except BaseException:  # e.g. the disk is full: no half-written set of files survives
            folder.discard()
            raise
        dest = folder.finish(complete)
    if held:
        log(f"({', '.join(held)} received while the report was written: it was finished first)")
    return dest


def run_network(name: str, *, epochs=None, lr=None, batch_size=None, seed: int = 0, dtype=None, out="runs",
                data_dir=None,
                parity_steps: int = 20, progress=None, command: str | None = None,
                train_size=None, test_size=None, save_every: int | None = None, resume=None,
                envelope_steps: int = drift.DEFAULT_STEPS) -> int:
    """Run one documented network end to end; returns the process exit status.

    Everything that can refuse the run (the checkpoint, the output folder's name, the
    data) is checked before any folder is made. The files go to ``OUT/NAME`` only if
    the run completes; otherwise to ``OUT/NAME.incomplete`` (``io.RunFolder``)."""
    net = get(name)
    apply_threads(net)
    recipe = net.recipe.replace(epochs=epochs, lr=lr, batch_size=batch_size, train_size=train_size,
                                test_size=test_size)
    dtype = dtype or recipe.dtype
    identity = {"net": name, "dtype": dtype, "seed": seed,
                "recipe": {k: v for k, v in recipe.as_dict().items() if k != "epochs"}}
    resumed = (checkpoint.load(resume, identity, checkpoint.expected_state(net, recipe, dtype, seed))
               if resume else None)  # refuse a bad one, checked whole, before any work
    folder = io.RunFolder(out, name)
    command = command or f"nnparity run {name}"

    t0 = time.perf_counter()
    raw = mnist.load_mnist(data_dir)
    with handled_signals(), folder:  # Ctrl-C and kill both end the run cleanly, from here to the last file
        ds = prepare(net, recipe, raw, dtype, seed)
        log(f"{name}: {len(ds.y_train)} training / {len(ds.y_test)} test images from {raw.source} "
            f"({time.perf_counter() - t0:.1f} s); {dtype}, seed {seed}, {recipe.epochs} epochs, "
            f"batch {recipe.batch_size}, lr {recipe.lr}")

        meta = {"net": name, "command": command, "dtype": dtype, "seed": seed, "status": "incomplete",
                "epochs_planned": recipe.epochs, "recipe": recipe.as_dict(), "environment": environment()}
        if parity_steps:
            log(f"step parity: {parity_steps} steps, {dtype} ...")
            t_phase = time.perf_counter()
            with parity_bar("step parity", parity_steps, progress):
                checked = run_check(name, parity_steps, dtype, seed, recipe=recipe, ds=ds)
            trace = checked.trace
            log(f"step parity: {len(trace.steps)} steps in {time.perf_counter() - t_phase:.1f} s")
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
                dest = finish_folder(folder, False, lambda path: write_report(path, meta, []))
                why = checked.diagnosis.render() if checked.diagnosis is not None else trace.message()
                log(f"PARITY FAILED - not training.\n{why}\nreport: {dest / 'report.md'}")
                return EXIT_PARITY
            log(f"parity {'ok' if trace.ok else 'found no mismatch'}: worst margin {trace.worst_margin():.3g} "
                "(<= 1 passes)")

        steps_per_epoch = -(-len(ds.y_train) // recipe.batch_size)
        envelope_steps = min(envelope_steps, recipe.epochs * steps_per_epoch)
        envelope = None
        if envelope_steps:
            log(f"drift envelope: float64 scratch vs torch and float32 vs float64 torch, {envelope_steps} steps ...")
            envelope = drift.measure_envelope(net, recipe, ds, seed, envelope_steps, progress=progress)
            log(f"drift envelope: {envelope['steps']} steps in {envelope['seconds']:.1f} s")
        training = Training(net, recipe, ds, dtype, seed, drift_steps=envelope_steps)
        start = 1
        if resumed:
            start = checkpoint.restore(training, *resumed)
            meta["resumed_from"] = f"{resume} (after epoch {start - 1})"
            log(f"resumed from {resume}: {start - 1} epochs done")
        status = EXIT_OK
        try:
            for epoch in range(start, recipe.epochs + 1):
                row = training.run_epoch(epoch, progress)
                s, t = row["scratch"], row["torch"]
                log(f"epoch {epoch:>3}/{recipe.epochs}  loss {s['train_loss']:.5f} | {t['train_loss']:.5f}  "
                    f"train err {s['train_error']:.3f}% | {t['train_error']:.3f}%  "
                    f"test acc {s['test_accuracy']:.2f}% | {t['test_accuracy']:.2f}%  "
                    f"time {s['seconds']:.1f}s | {t['seconds']:.1f}s  "
                    f"max |dw| {row['max_abs_weight_diff']:.1e}   (scratch | torch)")
                io.write_json(folder.path / "metrics.json", {**meta, "epochs": training.history})
                if save_every and epoch % save_every == 0:
                    checkpoint.save(folder.path / checkpoint.FILE_NAME, training, identity)
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

        def write(path):
            if envelope is not None:
                meta["drift"] = drift.assess(envelope, training.step_drift, training.history, steps_per_epoch, dtype)
            meta["peak_rss_mib"] = round(peak_rss_mib())
            write_report(path, meta, training.history)

        # every planned epoch ran (a collapsed run too: its status names the problem): OUT/NET
        dest = finish_folder(folder, meta["status"] in ("complete", "collapsed"), write)
        if envelope is not None:
            log(f"drift: {drift.verdict(meta['drift'])}")
        log(f"report: {dest / 'report.md'} (peak memory {meta['peak_rss_mib']} MiB)")
        return status
