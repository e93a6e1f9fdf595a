"""``nnparity run NET``: one run path for every network, read from its registry entry.

``run_network`` turns the entry (``networks.Network``) and the command line into a
plan, and trains it with one of three shapes, chosen by the entry's data, never by
the network's name:

* a **single run** (an MNIST network without a ``sweep``): step parity, the drift
  envelope, both sides trained epoch by epoch, ``report.write_report``;
* a **sweep** (an MNIST network whose entry sweeps ``seeds`` and/or ``variants``):
  the same run for every seed and variant, the seed's data and drift envelope shared
  by its variants, the torch side trained once per seed (a variant changes the
  scratch side only) and replayed (``SharedTorch``); a variant the entry expects to
  fail parity (``expected_failure``) is trained anyway, and a pass fails the run;
  ``report.write_sweep`` with the entry's ``extras``;
* **every step recorded** (a network that brings its own samples, ``OwnSamples``):
  full-batch steps on them for every learning rate of the sweep (``lrs``), every
  recorded number and every intermediate compared at the entry's tolerance; the
  report is the entry's ``extras.write``.

Both sides train at once, the torch side in a worker process, one core each
(``Training.concurrent``, ``nnparity.training.worker``), unless ``--sequential`` asks
for today's alternation in one process or the machine has a single core; the numbers
are the same either way, bit for bit.

Exit statuses: 0 complete, 1 parity failed, 3 diverged, 4 collapsed, 5 the torch worker
process died, 130 interrupted.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nnparity.training import checkpoint
from nnparity.reporting.bench import peak_rss_mib, reset_peak_memory
from nnparity.core import data as mnist
from nnparity.training import drift
from nnparity.core import io
from nnparity.diagnosis.check import run_check
from nnparity.training.networks import apply_threads, get, make_sides, prepare, spec_of
from nnparity.core.parity import Trace, compare_records, gradient_notes
from nnparity.core.progress import parity_bar
from nnparity.reporting.report import environment, extras_of, mmm, summarize_sweep, write_report, write_sweep
from nnparity.core.signals import handled_signals, interrupt_name, signals_held
from nnparity.core.threads import cores
from nnparity.training.tape import Tape
from nnparity.training.train import Diverged, Training, collapsed
from nnparity.training.worker import WorkerError, warm_up

EXIT_OK, EXIT_PARITY, EXIT_DIVERGED, EXIT_COLLAPSED, EXIT_WORKER, EXIT_INTERRUPTED = 0, 1, 3, 4, 5, 130
SIDES = ("scratch", "torch")


def log(msg: str = "") -> None:
    print(msg, flush=True)


def cli_name(name: str) -> str:
    """How a command names network ``name``: its name if documented, else the file it was
    loaded from, relative to the working folder when it lies below it (``module:attr`` as is)."""
    spec = spec_of(name)
    if spec != name and os.path.isabs(spec):
        rel = os.path.relpath(spec)
        return spec if rel.startswith("..") else rel
    return spec


def concurrent_mode(sequential: bool) -> bool:
    """Train both sides at once (a worker process for the torch side), unless asked not to
    or the machine has a single core: then they alternate in this process."""
    return not sequential and cores() >= 2


def training_mode(training) -> str:
    """The line that says how the sides train."""
    if getattr(training.ref, "remote", False):
        return f"training: both sides at once, the torch side in worker process {training.ref.pid} (one core each)"
    return (f"training: the sides alternate step by step in this process "
            f"({'--sequential' if cores() >= 2 else 'one core'})")


def worker_failed(what) -> None:
    """A torch worker that died (``WorkerError``): one line on stderr."""
    print(f"nnparity run: error: {what}", file=sys.stderr, flush=True)


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


def run_recipe(net, *, epochs=None, lr=None, batch_size=None, dtype=None, train_size=None, test_size=None,
               options=None):
    """The entry's recipe with the command line's changes: the generic options, the
    learning rates of an ``lrs`` sweep, the entry's own options that set a recipe field
    (``Option.field``) and the generic ones its recipe records (``recipe_options``)."""
    lrs = list(lr) if isinstance(lr, (list, tuple)) else ([] if lr is None else [lr])
    changes = {"epochs": epochs, "batch_size": batch_size, "train_size": train_size, "test_size": test_size,
               "lr": lrs[0] if lrs else None}
    if "lrs" in net.sweep and lrs:
        changes["lrs"] = tuple(lrs)
    for option in net.run_options():
        value = (options or {}).get(option.dest, option.default)
        if option.field and value != option.default:
            changes[option.field] = tuple(value) if isinstance(value, list) else value
    if "dtype" in net.recipe_options:
        changes["dtype"] = dtype
    return net.recipe.replace(**changes)


def run_network(name: str, *, epochs=None, lr=None, batch_size=None, seed: int = 0, dtype=None, out="runs",
                data_dir=None, parity_steps: int = 20, progress=None, command: str | None = None,
                train_size=None, test_size=None, save_every: int | None = None, resume=None,
                envelope_steps: int = drift.DEFAULT_STEPS, options: dict | None = None,
               sequential: bool = False) -> int:
    """Run one network end to end, as its entry says (see the module doc); returns the
    process exit status. ``lr``: a learning rate, or several for an entry that sweeps
    ``lrs``; ``options``: the entry's own options (``Network.run_options``) by dest;
    ``sequential``: alternate the sides in this process instead of training them at once."""
    net = get(name)
    recipe = run_recipe(net, epochs=epochs, lr=lr, batch_size=batch_size, dtype=dtype, train_size=train_size,
                        test_size=test_size, options=options)
    command = command or f"nnparity run {name}"
    reset_peak_memory()  # the report's peak memory is this run's, also after other runs in this process
    if not net.mnist:
        return _run_every_step(net, recipe, out=out, command=command)
    concurrent = concurrent_mode(sequential)
    apply_threads(net)
    if concurrent:  # first, before this process runs any torch operation: the worker can be forked
        warm_up(fork=True)
    if net.sweep:
        options = options or {}
        variant = options.get("variant") or "both"
        variants = (net.variants if variant == "both" else (variant,)) if "variants" in net.sweep \
            else (recipe.variant,)
        count = (options.get("seeds") or net.seeds) if "seeds" in net.sweep else 1
        return _run_sweep(net, recipe, dtype or recipe.dtype, variants, [seed + i for i in range(count)],
                          out=out, data_dir=data_dir, parity_steps=parity_steps, progress=progress,
                          command=command, envelope_steps=envelope_steps, concurrent=concurrent)
    return _run_single(net, recipe, seed=seed, dtype=dtype, out=out, data_dir=data_dir, parity_steps=parity_steps,
                       progress=progress, command=command, save_every=save_every, resume=resume,
                       envelope_steps=envelope_steps, concurrent=concurrent)


def _run_single(net, recipe, *, seed, dtype, out, data_dir, parity_steps, progress, command, save_every, resume,
                envelope_steps, concurrent) -> int:
    """A single run: everything that can refuse it (the checkpoint, the output folder's
    name, the data) is checked before any folder is made. The files go to ``OUT/NAME``
    only if the run completes; otherwise to ``OUT/NAME.incomplete`` (``io.RunFolder``)."""
    name = net.name
    dtype = dtype or recipe.dtype
    identity = {"net": name, "dtype": dtype, "seed": seed,
                "recipe": {k: v for k, v in recipe.as_dict().items() if k != "epochs"}}
    resumed = (checkpoint.load(resume, identity, checkpoint.expected_state(net, recipe, dtype, seed))
               if resume else None)  # refuse a bad one, checked whole, before any work
    folder = io.RunFolder(out, name)

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
        training = None
        status = EXIT_OK
        try:
            training = Training(net, recipe, ds, dtype, seed, drift_steps=envelope_steps, concurrent=concurrent,
                                overlap=True)
            log(training_mode(training))
            start = 1
            if resumed:
                start = checkpoint.restore(training, *resumed)
                meta["resumed_from"] = f"{resume} (after epoch {start - 1})"
                log(f"resumed from {resume}: {start - 1} epochs done")
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
            if training is not None:
                training.close()  # the torch worker first
            done = len(training.history) if training is not None else 0
            meta["status_detail"] = f"interrupted ({interrupt_name(e)}) during epoch {done + 1}"
            status = EXIT_INTERRUPTED
            log(f"\ninterrupted: writing the report of the {done} finished epochs")
        except Diverged as e:
            meta.update(status="diverged", status_detail=str(e))
            status = EXIT_DIVERGED
            log(f"DIVERGED: {e}")
        except WorkerError as e:
            meta["status_detail"] = str(e)
            status = EXIT_WORKER
            worker_failed(e)
        finally:
            if training is not None:
                training.close()
        history = training.history if training is not None else []

        def write(path):
            if envelope is not None:
                meta["drift"] = drift.assess(envelope, training.step_drift if training else [], history,
                                             steps_per_epoch, dtype)
                meta["drift"]["check_command"] = f"nnparity check {cli_name(name)} --seed {seed}"
            meta["peak_rss_mib"] = round(peak_rss_mib())
            write_report(path, meta, history)

        # every planned epoch ran (a collapsed run too: its status names the problem): OUT/NET
        dest = finish_folder(folder, meta["status"] in ("complete", "collapsed"), write)
        if envelope is not None:
            log(f"drift: {drift.verdict(meta['drift'])}")
        log(f"report: {dest / 'report.md'} (peak memory {meta['peak_rss_mib']} MiB)")
        return status


# --- a sweep: seeds x variants ------------------------------------------------------------------
@dataclass
class SharedTorch:
    """The torch side of one seed, shared by its variants' runs.

    A variant changes the scratch side only (``Recipe.variant``): every variant trains the
    torch side from the same weights on the same batches in the same order, the same
    computation. The first run trains it and records its trajectory (``nnparity.training.tape``);
    the others replay it, stepping only their scratch side, and read the same numbers bit
    for bit: every torch figure of the report (losses, accuracies, the entry's per-epoch
    metric, per-batch curves), and the torch weights each scratch side is compared with
    after each of the first drift steps and every epoch. The replayed times are the
    recorded ones.

    The replaying runs follow the first one step by step (``train_variants``,
    ``Training.follow``): their scratch sides step while this process waits for the torch
    worker, and no variant waits for another to finish."""

    tape: Tape | None = None                    # the first run's, recorded as it trains


def _final(epochs: list, metric: str | None) -> dict:
    if not epochs:
        return {}
    last = epochs[-1]
    return {side: {"train_accuracy": 100 - last[side]["train_error"], "val_accuracy": last[side]["test_accuracy"],
                   "train_loss": last[side]["train_loss"], "val_loss": last[side]["test_loss"],
                   **({metric: last[side][metric]} if metric else {}),
                   "seconds": sum(r[side]["seconds"] for r in epochs)} for side in SIDES}


def train_one(net, recipe, raw, dtype: str, seed: int, **kwargs) -> dict:
    """One variant, one seed of a sweep, on its own (``train_run``, driven to its end)."""
    run = train_run(net, recipe, raw, dtype, seed, **kwargs)
    try:
        while True:
            next(run)
    except StopIteration as done:
        return done.value


def train_variants(net, recipes: list, raw, dtype: str, seed: int, **kwargs) -> list:
    """Every variant of one seed, in order, the torch side trained once (``SharedTorch``): the
    first variant's run trains and records it; the others follow that run step by step,
    replaying each step as it is recorded (``Training.follow``), and close each epoch after
    it. A follower whose first run stopped before its last epoch (it diverged) is run again
    on its own, training its own torch side, as it would have been without a shared one;
    an interrupt or a dead torch worker ends them all. Returns the runs' results (the
    variants that ran; after a dead worker, the first only)."""
    shared = SharedTorch() if len(recipes) > 1 else None
    lead = train_run(net, recipes[0], raw, dtype, seed, shared_torch=shared, **kwargs)
    results = {}
    try:
        training = next(lead)  # parity checked, the Training made (recording its torch side)
    except StopIteration as done:  # stopped before training: parity failed, or interrupted
        return [done.value]
    followers = {}  # variant index -> its run (a generator), following the first
    for i, recipe in enumerate(recipes[1:], 1):
        run = train_run(net, recipe, raw, dtype, seed, shared_torch=shared, **kwargs)
        try:
            training.follow(next(run))  # (a follower whose run ends is let go: Training.unfollow)
            followers[i] = run
        except StopIteration as done:  # its parity check stopped it (a slip it missed), or an interrupt
            results[i] = done.value
            if done.value.get("interrupted"):
                results[0] = _stop(lead, KeyboardInterrupt(done.value["interrupted"]))
                for other in followers.values():
                    other.close()
                return [results[k] for k in sorted(results)]
    while 0 not in results:
        try:
            next(lead)  # one epoch of the first run, with its followers' steps
        except StopIteration as done:
            results[0] = done.value
            break
        for i, run in list(followers.items()):
            try:
                next(run)  # the same epoch, closed on the follower
            except StopIteration as done:
                results[i] = done.value
                del followers[i]
                if done.value.get("interrupted"):  # the signal came while the follower closed its epoch
                    results[0] = _stop(lead, KeyboardInterrupt(done.value["interrupted"]))
                    break
    first = results[0]
    for i, run in followers.items():
        if first.get("interrupted"):
            results[i] = _stop(run, KeyboardInterrupt(first["interrupted"]))
        elif first["status"] in ("complete", "collapsed"):  # every epoch followed: the run ends
            results[i] = _stop(run, None)
        else:
            run.close()  # no whole torch side to follow
            if not first.get("worker_error"):
                results[i] = train_one(net, recipes[i], raw, dtype, seed, **kwargs)
    return [results[k] for k in sorted(results)]


def _stop(run, exc: BaseException | None):
    """The result of the generator ``run`` ended with ``exc`` raised where it waits (None:
    run on to its end)."""
    try:
        if exc is None:
            while True:
                next(run)
        run.throw(exc)
    except StopIteration as done:
        return done.value
    raise RuntimeError("a run went on after it was stopped")


def train_run(net, recipe, raw, dtype: str, seed: int, *, parity_steps: int, keep_batches: bool, progress,
              on_epoch=None, ds=None, envelope: dict | None = None, shared_torch: SharedTorch | None = None,
              concurrent: bool = False):
    """One variant, one seed of a sweep: parity, then both sides trained for ``recipe.epochs``.

    A generator: it yields its ``Training`` once parity has passed (nothing if the run stops
    before), then once after each epoch, and returns the run's result (``train_one`` drives
    it alone, ``train_variants`` beside the seed's other variants).

    ``ds``: the seed's prepared data (else prepared here). ``envelope``: the seed's
    drift envelope (``drift.measure_envelope``); with it the drift of the envelope's
    first steps and of every epoch is recorded and assessed into ``res["drift"]``.
    ``shared_torch``: the seed's ``SharedTorch``; without a tape, this run trains its torch
    side and records it there as it goes; with one, this run replays it instead of training
    it, following the recording run (``train_variants``). The entry's per-epoch metric
    (``extras.EPOCH_METRIC``: (count key, indices key), ``extras.epoch_metric(side, ds)``)
    is counted on each side at the start and after every epoch.
    A ``KeyboardInterrupt`` (see ``nnparity.core.signals``) ends the run early with
    everything finished so far, ``res["interrupted"]`` set to the signal's name; so does
    a torch worker that dies (``concurrent``), with ``res["worker_error"]``.
    """
    extras = extras_of(net)
    metric, indices_key = getattr(extras, "EPOCH_METRIC", (None, None))
    variant = recipe.variant
    ds = ds if ds is not None else prepare(net, recipe, raw, dtype, seed)
    res = {"variant": variant, "seed": seed, "status": "incomplete", "train_size": len(ds.y_train),
           "val_size": len(ds.y_test), "epochs": []}
    training = values = None
    replay = shared_torch.tape if shared_torch is not None else None
    try:
        if parity_steps and not _parity(net, res, recipe, ds, dtype, seed, parity_steps):
            return res
        steps_per_epoch = math.ceil(len(ds.y_train) / recipe.batch_size)
        training = Training(net, recipe, ds, dtype, seed, per_batch=keep_batches,
                            drift_steps=envelope["steps"] if envelope else 0,
                            record_ref=shared_torch is not None and replay is None, replay_ref=replay,
                            concurrent=concurrent and replay is None, overlap=True,
                            epoch_metric=extras.epoch_metric if metric else None)
        if training.ref_tape is not None:  # the seed's other variants follow it as it is recorded
            shared_torch.tape = training.ref_tape
        if metric:
            at_init = extras.epoch_metric(training.scratch, ds)  # both sides start from the same weights
            res[f"{metric}_at_init"] = len(at_init)
            values = {side: at_init for side in SIDES}  # after the last finished epoch
        batches = {f"{side}/{what}": [] for side in SIDES for what in ("train", "val")} if keep_batches else None
        if batches is not None:
            res["_batches"] = batches
        yield training
        for epoch in range(1, recipe.epochs + 1):
            row = training.run_epoch(epoch, progress)
            curves = row.pop("per_batch", None)
            val = row.pop("per_batch_val", None)
            if metric:
                values = row.pop("metric")
            for side in training.sides:
                if metric:
                    row[side.name][metric] = len(values[side.name])
                if batches is not None:
                    batches[f"{side.name}/train"] += curves[side.name]
                    batches[f"{side.name}/val"] += val[side.name]
            res["epochs"].append(row)
            s, t = row["scratch"], row["torch"]
            log(f"{variant:>13} seed {seed} epoch {epoch:>3}/{recipe.epochs}  "
                f"train acc {100 - s['train_error']:.2f}% | {100 - t['train_error']:.2f}%  "
                f"val acc {s['test_accuracy']:.2f}% | {t['test_accuracy']:.2f}%  "
                + (f"{metric.replace('_units', '')} {s[metric]} | {t[metric]}  " if metric else "")
                + f"time {s['seconds']:.1f}s | {t['seconds']:.1f}s  "
                f"max |dw| {row['max_abs_weight_diff']:.1e}   (scratch | torch)")
            if on_epoch:
                on_epoch(res)
            yield training
        res["status"] = "complete"
        why = collapsed(res["epochs"])
        if why:
            res.update(status="collapsed", status_detail=why)
            log(f"{variant:>13} seed {seed} COLLAPSED: {why}")
    except Diverged as e:
        res.update(status="diverged", status_detail=str(e))
        log(f"DIVERGED: {e}")
    except KeyboardInterrupt as e:
        if training is not None:
            training.close()  # the torch worker first
        where = f"during epoch {len(res['epochs']) + 1}" if training else "during the parity check"
        res.update(status="incomplete", status_detail=f"interrupted ({interrupt_name(e)}) {where}",
                   interrupted=interrupt_name(e))
    except WorkerError as e:
        res.update(status="incomplete", status_detail=str(e), worker_error=str(e))
    finally:
        if training is not None:
            training.close()
    if training is None:
        return res
    if metric:
        if values is None:  # interrupted before the initial count
            values = {side.name: extras.epoch_metric(side, ds) for side in training.sides}
        res[indices_key] = {side: list(values[side]) for side in SIDES}
    res["final"] = _final(res["epochs"], metric)
    if envelope:
        res["drift"] = drift.assess(envelope, training.step_drift, training.history, steps_per_epoch, dtype)
        res["drift"]["check_command"] = f"nnparity check {net.name} --variant {variant} --seed {seed}"
        expected = dict(net.expected_failure).get(variant)
        log(f"{variant:>13} seed {seed} drift: {drift.verdict(res['drift'])}"
            + (f" (expected: {expected}, a different derivative)" if expected else ""))
    return res


def _parity(net, res: dict, recipe, ds, dtype: str, seed: int, steps: int) -> bool:
    """Step parity before training, with the own/inherited diagnosis of a failure
    (``nnparity.diagnosis.check``) into ``res``; False if the run must stop here: an unexpected
    failure, or a pass of a variant expected to fail (the check missed its slip)."""
    variant = recipe.variant
    checked = run_check(net.name, steps, dtype, seed, recipe=recipe, ds=ds)
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
    slip = dict(net.expected_failure).get(variant)
    if slip is None and trace.failures:
        res.update(status="parity-failed", status_detail=trace.message().splitlines()[0]
                   + (f" - {diagnosis.verdict}" if diagnosis is not None else ""))
        log(f"PARITY FAILED ({variant}, seed {seed}) - not training.\n{why}")
        return False
    if slip is not None:
        if not trace.failures:
            res["status"] = "parity-missed-slip"
            log(f"ERROR: the {variant} variant PASSED {steps} steps of parity: the check missed its slip ({slip})")
            return False
        log("=" * 100 + f"\nPARITY FAILED, AS EXPECTED, for the {variant} variant (seed {seed}): {slip}.\n" + why +
            "\nTraining anyway, to show what the slip does.\n" + "=" * 100)
    else:
        log(f"parity {'ok' if trace.ok else 'found no mismatch'} ({variant}, seed {seed}, {steps} steps, {dtype}): "
            f"worst margin {trace.worst_margin():.3g} (<= 1 passes)")
    return True


def envelope_for(net, recipe, ds, seed: int, steps: int) -> dict:
    """The seed's drift envelope, shared by its variants: it is measured with the first
    (default) reading (float64 scratch vs torch, float32 vs float64 torch). The torch side,
    and so the rounding band, is the same in every variant: the others are judged against it."""
    return drift.measure_envelope(net, recipe.replace(variant=net.variants[0] if net.variants else None), ds, seed,
                                  steps)


def _run_sweep(net, base, dtype, variants, seeds, *, out, data_dir, parity_steps, progress, command,
               envelope_steps, concurrent) -> int:
    folder = io.RunFolder(out, net.name)
    t0 = time.perf_counter()
    raw = net.data.load(data_dir)
    with handled_signals(), folder:  # Ctrl-C and kill both end the run cleanly, with its files
        return _sweep(net, base, dtype, variants, seeds, raw, t0, folder, progress, command=command,
                      parity_steps=parity_steps, envelope_steps=envelope_steps, concurrent=concurrent)


def _sweep(net, base, dtype, variants, seeds, raw, t0, folder, progress, *, command, parity_steps,
           envelope_steps, concurrent) -> int:
    extras = extras_of(net)
    out_dir = folder.path  # the run's work folder; put in place by _finish
    log(f"{net.name}: variants {', '.join(map(str, variants))}; seeds {', '.join(map(str, seeds))}; {dtype}, "
        f"{base.epochs} epochs, batch {base.batch_size}, lr {base.lr}, {base.train_size} training / "
        f"{base.test_size} validation images from {raw.source} ({time.perf_counter() - t0:.1f} s)")
    meta = {"net": net.name, "command": command, "dtype": dtype, "status": "incomplete",
            "variants": list(variants), "seeds": seeds, "epochs_planned": base.epochs,
            **({"document": extras.DOCUMENT} if hasattr(extras, "DOCUMENT") else {}),
            "recipe": {**base.as_dict(), "variant": ", ".join(map(str, variants))},
            "environment": environment()}
    runs, status = [], EXIT_OK
    where = "at the start"
    try:
        for seed in seeds:
            where = f"while preparing seed {seed}"
            ds = prepare(net, base, raw, dtype, seed)  # the same for every variant
            envelope = None
            steps = min(envelope_steps, base.epochs * math.ceil(len(ds.y_train) / base.batch_size))
            if steps:
                where = f"while measuring the drift envelope of seed {seed}"
                envelope = envelope_for(net, base, ds, seed, steps)
                log(f"drift envelope (seed {seed}): float64 scratch vs torch and float32 vs float64 torch, "
                    f"{steps} steps, {envelope['seconds']:.2f} s")
            where = f"during seed {seed}"
            live = {}  # the seed's runs under way, by variant: in the metrics written every 10 epochs

            def on_epoch(r):
                live[r["variant"]] = r
                if len(r["epochs"]) % 10 == 0:
                    write_sweep(out_dir, net, meta, runs + list(live.values()), final=False)
            seed_runs = train_variants(net, [base.replace(variant=v) for v in variants], raw, dtype, seed,
                                       parity_steps=parity_steps, keep_batches=seed == seeds[0], progress=progress,
                                       ds=ds, envelope=envelope, concurrent=concurrent, on_epoch=on_epoch)
            for k, res in enumerate(seed_runs):
                variant = res["variant"]
                runs.append(res)
                where = f"after {variant}, seed {seed}"
                if res["status"] in ("parity-failed", "parity-missed-slip"):
                    meta.update(status=res["status"], status_detail=res["status_detail"]
                                if res["status"] == "parity-failed" else
                                f"the {variant} variant passed parity: the check missed the slip")
                    dest = _finish(folder, net, meta, runs)
                    log(f"report: {dest / 'report.md'}")
                    return EXIT_PARITY
                if res.get("interrupted"):  # the variants after it, interrupted with it, are reported too
                    runs += seed_runs[k + 1:]
                    raise KeyboardInterrupt(res["interrupted"])
                if res.get("worker_error"):
                    meta["status_detail"] = f"{variant}, seed {seed}: {res['worker_error']}"
                    dest = _finish(folder, net, meta, runs)
                    worker_failed(res["worker_error"])
                    log(f"report of the finished epochs: {dest / 'report.md'}")
                    return EXIT_WORKER
                write_sweep(out_dir, net, meta, runs, final=False)
                if res["status"] == "diverged":
                    status = EXIT_DIVERGED
                elif res["status"] == "collapsed" and status == EXIT_OK:
                    status = EXIT_COLLAPSED
    except KeyboardInterrupt as e:
        last = next((r for r in runs if r.get("interrupted")), None)
        meta["status_detail"] = (f"interrupted: {last['variant']}, seed {last['seed']}, {last['status_detail']}"
                                 if last else f"interrupted ({interrupt_name(e)}) {where}")
        dest = _finish(folder, net, meta, runs)
        log(f"\ninterrupted: report of the finished epochs: {dest / 'report.md'}")
        return EXIT_INTERRUPTED
    meta["status"] = {EXIT_OK: "complete", EXIT_COLLAPSED: "collapsed"}.get(status, "diverged")
    dest = _finish(folder, net, meta, runs)
    summary = summarize_sweep(net, runs)
    metric = getattr(extras, "EPOCH_METRIC", (None,))[0]
    for variant in variants:
        if variant in summary:
            s = summary[variant]["scratch"]
            log(f"{variant:>13}: train acc {mmm(s['train_accuracy'])}  val acc {mmm(s['val_accuracy'])}  "
                + (f"{metric.replace('_', ' ')} {mmm(s[metric], '.1f')}  " if metric else "")
                + f"(scratch; mean (min - max) over {len(seeds)} seeds)")
    log(f"report: {dest / 'report.md'} (peak memory {meta['peak_rss_mib']} MiB)")
    return status


def _finish(folder, net, meta: dict, runs: list) -> Path:
    """The final files: metrics.json, the plots and report.md, with the peak memory; the
    folder goes in place (``OUT/NET``, or ``OUT/NET.incomplete`` unless complete)."""
    meta["peak_rss_mib"] = round(peak_rss_mib())
    return finish_folder(folder, meta["status"] in ("complete", "collapsed"),
                         lambda path: write_sweep(path, net, meta, runs, final=True))


# --- every step recorded: a network with its own samples ---------------------------------------
def train_steps(net, recipe, lr: float, dtype: str = "float64") -> dict:
    """Both sides, ``recipe.epochs`` full-batch steps at ``lr`` on the network's own samples:
    the records of every step (``extras.record(step, record, weights)``), every intermediate
    compared at the entry's tolerance, and the largest difference of the recorded numbers."""
    extras = extras_of(net)
    r = recipe.replace(lr=lr)
    scratch, ref = make_sides(net, r, dtype, seed=0)
    x, t = next(iter(net.data.first_batches(net, r, None, dtype, 0, 1)))
    names = extras.recorded(r)
    tol = net.tolerance(dtype)
    trace = Trace(net.name, dtype, tol)
    notes = gradient_notes(scratch.model)
    records = {"scratch": [], "torch": []}
    grads0 = {}
    for k in range(r.epochs + 1):
        # record k: the weights after k updates, the loss and outputs at them (the step then updates:
        # after the last record that update is not needed, and not recorded)
        before = {side.name: _weights(side, names) for side in (scratch, ref)}
        s = scratch.step(x, t, record=True)
        o = ref.step(x, t, record=True)
        trace.steps.append(compare_records(s.record, o.record, tol, k + 1, notes=notes))
        if k == 0:
            grads0 = {side: {n: float(res.record[f"grad/{n}"]) for n in names if f"grad/{n}" in res.record}
                      for side, res in (("scratch", s), ("torch", o))}
        for side, res in (("scratch", s), ("torch", o)):
            records[side].append(extras.record(k, res.record, before[side]))
    diff = max(abs(a[key] - b[key]) for a, b in zip(records["scratch"], records["torch"]) for key in a)
    return {"lr": lr, "max_abs_diff": diff, "parity": {k: v for k, v in trace.to_dict().items() if k != "per_step"},
            "parity_ok": trace.ok, "parity_message": trace.message(), "grads_step0": grads0,
            "scratch": records["scratch"], "torch": records["torch"]}


def _weights(side, names) -> dict:
    state = {k.split("/", 1)[1]: v for k, v in side.state().items()}
    return {n: float(state[n]) for n in names}


def _run_every_step(net, recipe, *, out, command) -> int:
    apply_threads(net)
    extras = extras_of(net)
    loss = getattr(extras, "LOSS", "loss")
    dtype = recipe.dtype
    folder = io.RunFolder(out, net.name)
    meta = {"net": net.name, "command": command, "dtype": dtype, "status": "incomplete",
            "recipe": recipe.as_dict(), "environment": environment()}
    log(f"{net.name}: {recipe.summary()}")
    with handled_signals(), folder:
        runs = []
        for lr in recipe.lrs:
            res = train_steps(net, recipe, lr, dtype)
            runs.append(res)
            first, last = res["scratch"][0], res["scratch"][-1]
            log(f"lr {lr:<5g} {loss} step 0 {first[loss]:.17g}  step {len(res['scratch']) - 1} "
                f"{last[loss]:.17g}   max |scratch - torch| {res['max_abs_diff']:.3g}  "
                f"parity {'ok' if res['parity_ok'] else 'FAILED'} (worst margin {res['parity']['worst_margin']:.3g})")
        failed = [r for r in runs if not r["parity_ok"]]
        meta["status"] = "parity-failed" if failed else "complete"
        if failed:
            meta["status_detail"] = failed[0]["parity_message"].splitlines()[0]
        dest = finish_folder(folder, not failed, lambda path: extras.write(path, meta, runs))
    if failed:
        log(f"PARITY FAILED at lr {failed[0]['lr']:g}:\n{failed[0]['parity_message']}")
    log(f"report: {dest / 'report.md'}")
    return EXIT_PARITY if failed else EXIT_OK
