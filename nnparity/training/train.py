"""Train both sides side by side: same initial weights, same batches, same order.

Either both at once, the torch side in a worker process of its own
(``Training(..., concurrent=True)``, ``nnparity.training.worker``), or alternating
batch by batch in this process (scratch step, then torch step on the same batch).
Each side's steps are timed on their own, and the scratch side's dropout masks are
handed to the torch side, in both modes, which give the same numbers bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from scratch.recipe import Recipe

from nnparity.training.networks import (Dataset, Network, make_sides, rebuildable, side_threads, spec_of,
                                        training_batches)
from nnparity.training.sides import summed
from nnparity.training.tape import RecordingSide, ReplayedSide, Same, Tape, copy_state
from nnparity.training.worker import METRIC


class Diverged(RuntimeError):
    """A loss, gradient or parameter became NaN or infinite."""

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch, self.step = epoch, step


def _tensors(side, result):
    """(key, array) of everything a step leaves behind: loss, every gradient, every parameter,
    optimizer state and buffer."""
    return [("loss", result.loss), *side.grads().items(), *side.state().items()]


def nonfinite(side, result) -> str:
    """Which of the side's loss, gradients and parameters are NaN or infinite, in that order,
    or "" if none is.

    Cheap enough for every step: one sum per tensor of the loss and the state after the
    update, added up (a NaN or inf anywhere makes the total non-finite); only then are all the
    tensors, gradients included, looked at element by element (a total of large finite values
    can also overflow: then nothing is reported). The gradients need no sum of their own: the
    step has just subtracted lr * g (lr > 0) from every parameter, so a NaN or inf in a
    gradient is one in its parameter too (p - lr * inf = -inf, p - lr * NaN = NaN; with
    momentum, in the buffer and the parameter)."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(result.loss) + sum(float(a.sum()) if isinstance(a, np.ndarray) else float(a)
                                         for a in side.state().values())
    if math.isfinite(total):
        return ""
    found = []
    for key, arr in _tensors(side, result):
        a = np.asarray(arr)
        bad = ~np.isfinite(a)
        if bad.any():
            first = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), a.shape))
            where = f" ({int(bad.sum())} of {a.size} elements, first {a.flat[np.flatnonzero(bad)[0]]} at {first})" \
                if a.ndim else f" = {float(a)}"
            found.append(key + where)
    more = f"; and {len(found) - 4} more tensors" if len(found) > 5 else ""
    return "; ".join(found[:4] if more else found) + more


def _sendable(fn) -> bool:
    """Whether ``fn`` can be sent to a worker process: a module-level function, pickled by name."""
    if fn is None:
        return False
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def rounding_noise_keys(net) -> frozenset:
    """State keys that hold rounding noise only: the momentum buffers of gradients that
    are zero by construction (``Network.allowed_zero``, e.g. cnn18k's conv biases before
    BatchNorm). Each side's buffer there is a sum of ~1e-17 (float64) or ~1e-9 (float32)
    residues, so their *relative* difference is O(1) or 1e8 whatever the implementations
    do; parity compares them with zero instead, and drift leaves them out."""
    return frozenset(f"state/{k}.momentum_buffer" for k in net.allowed_zero)


def weight_difference(scratch_state, torch_state, skip=frozenset()) -> tuple[float, float, str]:
    """(max |a - b|, max over tensors of max|a - b| / max|b|, worst tensor) over all
    parameters, optimizer state and buffers, except the keys in ``skip``."""
    worst_abs, worst_rel, worst_name = 0.0, 0.0, ""
    for k, a in scratch_state.items():
        if k in skip:
            continue
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(torch_state[k], dtype=np.float64)
        d = float(np.abs(a - b).max()) if a.size else 0.0
        scale = float(np.abs(b).max()) if b.size else 0.0
        rel = d / scale if scale else (0.0 if d == 0 else math.inf)
        if d > worst_abs:
            worst_abs = d
        if rel > worst_rel or not worst_name:
            worst_rel, worst_name = rel, k
    return worst_abs, worst_rel, worst_name


def evaluate_test(side, ds, chunk: int | None = None):
    """``side``'s (mean loss, accuracy %) on the test set, or, with ``chunk``, the list of
    them for every ``chunk`` test images in order (each evaluated on its own)."""
    if chunk is None:
        return side.evaluate(ds.x_test, ds.y_test)
    return [side.evaluate(ds.x_test[s:s + chunk], ds.y_test[s:s + chunk], batch_size=chunk)
            for s in range(0, len(ds.y_test), chunk)]


# One thread per library for every mode (``side_threads(1)``): training alternating in one
# process needs it (each library's threads would spin against the other's steps,
# ``nnparity.core.threads``), and so does every mode: the scratch side's last bits differ
# between one and two BLAS threads (mlp1000, mlp16, linear10, cnn18k float64), so a run gives
# the same numbers alternating here as concurrently, where each process has one core. (torch's
# inter-op count is set in the torch worker only: in a process where torch has run it can no
# longer change; a training step does not use that pool.)


@dataclass
class Training:
    """Both sides of one network, trained epoch by epoch on a shared dataset.

    ``concurrent``: the torch side trains in a worker process of its own while the
    scratch side trains here, one core each (``nnparity.training.worker``); otherwise the
    sides alternate step by step in this process. Both give the same numbers, bit for
    bit: each side runs at one thread either way (``side_threads(1)``). A concurrent
    ``Training`` holds a process: ``close()`` it (or use it as a context manager); a
    replayed torch side (``replay_ref``) takes no step, so it needs no worker."""

    net: Network
    recipe: Recipe
    ds: Dataset
    dtype: str
    seed: int
    per_batch: bool = False   # each row also holds each step's (loss, accuracy %) and the test set's per batch
    history: list = field(default_factory=list)
    drift_steps: int = 0                              # record the drift after each of the first N steps
    step_drift: list = field(default_factory=list)    # [(step, max relative weight difference)]
    # the torch side shared with a second run (``nnparity.training.tape``): ``record_ref`` keeps its
    # trajectory in ``self.ref_tape``; ``replay_ref`` (an earlier run's ``ref_tape``) replays it
    # instead of training it, for a run whose torch side is the same computation
    record_ref: bool = False
    replay_ref: "Tape | None" = None
    concurrent: bool = False
    # a concurrent run's torch worker goes on with the next epoch while this process closes the last one
    # (``RemoteSide.start_epoch(ahead=True)``), where its torch side takes no draws; then run_epoch takes
    # the epochs 1 to recipe.epochs in order, and the torch side is evaluated only as each epoch closes
    overlap: bool = False
    # a function (side, ds) -> value of each side after every epoch (an entry's ``epoch_metric``: linear10's
    # dead units), in each row as row["metric"] = {side: value}: a torch worker computes its side's while
    # this process computes the scratch side's; a replayed torch side gives the recording run's
    epoch_metric: "Callable | None" = None
    # runs that replay this run's tape while it is recorded, step by step (``follow``): a second
    # variant's scratch side steps beside this run's, in the time this process waits for the torch side
    followers: list = field(default_factory=list)

    def __post_init__(self):
        self.scratch, self.ref = make_sides(self.net, self.recipe, self.dtype, self.seed)
        self.step_count = 0
        self.ref_tape = None
        self.led = None     # a follower: the run it follows, which takes its steps (``follow``)
        self._open = None   # the epoch under way: its totals, curves, parameters before it
        self._metric_in_worker = False  # a torch worker computes epoch_metric (a function it can be sent by name)
        key = self._ref_key()
        if self.replay_ref is not None:
            why = self.replay_ref.mismatch(key, self.drift_steps)
            if why:
                raise ValueError(f"{self.net.name}: the recorded torch side is not this run's: different {why}; "
                                 "replay only a tape of the same recipe, dtype, seed and dataset")
            self.ref = ReplayedSide(self.replay_ref)
            return
        if self.record_ref:
            self.ref_tape = Tape(key, self.ref.name, self.ref.loss_fn.reduction, self.drift_steps,
                                 self.steps_per_epoch)
        if self.concurrent:
            from nnparity.training.worker import RemoteSide

            if not rebuildable(self.net):
                raise ValueError(f"{self.net.name}: a worker process cannot build this network (it was made in this "
                                 "process, not loaded from a file or module): train it with concurrent=False")
            self._metric_in_worker = _sendable(self.epoch_metric)
            draws = [name for name, mod in self.scratch.model.named_modules()
                     if getattr(mod, "draws_mask", False) and self.ref.uses_draw(name)]
            self.ref = RemoteSide(self.ref, spec=spec_of(self.net.name), recipe=self.recipe, ds=self.ds,
                                  dtype=self.dtype, seed=self.seed, draws=draws, drift_steps=self.drift_steps,
                                  tape=self.ref_tape, metric=self.epoch_metric if self._metric_in_worker else None)
        elif self.record_ref:
            self.ref = RecordingSide(self.ref, self.ref_tape)

    def close(self) -> None:
        """Stop the torch worker of a concurrent ``Training`` (nothing to do otherwise)."""
        self.unfollow()
        if getattr(self.ref, "remote", False):
            self.ref.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _ref_key(self) -> dict:
        """What the torch side's computation depends on: the recipe except its variant
        (a variant changes the scratch side; the caller shares a tape only where the
        torch side ignores it), dtype, seed and the very same dataset."""
        return {"network": self.net.name, "recipe": dataclasses.replace(self.recipe, variant=""),
                "dtype": str(np.dtype(self.dtype)), "seed": self.seed, "dataset": Same(self.ds)}

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.ds.y_train) / self.recipe.batch_size)

    @property
    def sides(self):
        return (self.scratch, self.ref)

    def _paired(self, step, epoch, steps, totals, curves):
        """Both sides' step ``step``, ``steps = [(side, result, non-finite tensors, state after
        it or None)]``: every tensor of both checked (a weight that became inf at this step
        shows in the loss only at the next one; a replayed side replays only steps that passed
        this check when they were recorded), then counted, and the drift recorded."""
        bad = [(side, what) for side, _, what, _ in steps if what]
        if bad:
            self.step_count = step
            raise Diverged(f"{self.net.name} diverged at epoch {epoch}, step {step}: "
                           + "; ".join(f"{side.name} side non-finite {what}" for side, what in bad),
                           epoch, step)
        if self.ref_tape is not None:
            self.ref_tape.checked = step
        for side, r, _, _ in steps:
            t = totals[side.name]
            t["loss"] += summed(r.loss, side.loss_fn.reduction, r.n)
            t["correct"] += r.correct
            t["n"] += r.n
            if curves is not None:
                curves[side.name].append((r.loss, 100.0 * r.correct / r.n))
        if step <= self.drift_steps:
            (_, _, _, s_state), (_, _, _, t_state) = steps
            self.step_drift.append((step, weight_difference(s_state, t_state, rounding_noise_keys(self.net))[1]))
        for f in self.followers:  # the step is on the tape now (checked finite): each follower takes it
            f._follow_step()

    def _steps(self, batches, epoch, totals, curves) -> None:
        """The epoch's steps, alternating: scratch first (it draws the dropout masks that
        the torch side reuses), then torch on the same batch."""
        for x, y in batches:
            self._step_both(x, y, epoch, totals, curves)

    def _give(self, x, y) -> None:
        """The batch the followers take at this step, once it is paired (the same arrays: a
        follower does not index the training set again)."""
        for f in self.followers:
            o = f._open
            if o["failed"] is None:  # (held until paired: at most an epoch of batches, where the torch side lags)
                o["inbox"].append((x, y))
                o["taken"] += 1

    def _step_both(self, x, y, epoch, totals, curves) -> None:
        self.step_count += 1
        k = self.step_count
        self._give(x, y)
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected just below
            rs = self.scratch.step(x, y)
            rt = self.ref.step(x, y, draws=self.scratch.draws())
            steps = [(self.scratch, rs, nonfinite(self.scratch, rs)),
                     (self.ref, rt, "" if getattr(self.ref, "replayed", False) else nonfinite(self.ref, rt))]
        kept = k <= self.drift_steps
        self._paired(k, epoch, [(side, r, bad, side.state() if kept else None) for side, r, bad in steps],
                     totals, curves)

    def follow(self, follower: "Training") -> None:
        """Step ``follower``, a run that replays this run's tape (``replay_ref=self.ref_tape``),
        beside this one: its epoch opens with this run's, and it takes each step as soon as this
        run has paired it (the recorded torch step is then on the tape, checked finite). Its
        ``run_epoch`` then closes the epoch (after this run's: its evaluations and states are
        recorded by then). The numbers are those of replaying the finished tape afterwards;
        the follower's scratch side takes the time this process waits for the torch side.
        A follower that fails (diverges) stops following, and its ``run_epoch`` raises it."""
        if follower.replay_ref is not self.ref_tape or self.ref_tape is None:
            raise ValueError("a follower replays this run's tape: Training(..., replay_ref=run.ref_tape)")
        follower.led = self
        self.followers.append(follower)

    def unfollow(self) -> None:
        """A follower stops following (it failed, or its run ended): the run it followed goes on alone."""
        if self.led is not None:
            self.led.followers[:] = [f for f in self.led.followers if f is not self]  # (identity: a dataclass's == compares fields)

    def _follow_step(self) -> None:
        o = self._open
        if o is None or o["failed"] is not None:
            return
        try:
            x, y = o["inbox"].popleft()  # the batch of the step the run it follows has just paired
            self._step_both(x, y, o["epoch"], o["totals"], o["curves"])
        except Exception as e:  # noqa: BLE001 - the follower's own failure: raised by its run_epoch
            o["failed"] = e

    def _steps_concurrent(self, batches, epoch, totals, curves) -> None:
        """The epoch's steps, both sides at once: the torch worker walks the same batches,
        given each step's masks as the scratch side draws them; its results are paired with
        the scratch side's in step order as they come in. A non-finite scratch step waits
        for the torch side's steps up to it (the earliest non-finite step of either side
        stops the run); within the drift steps the scratch side keeps a copy of its state
        and runs at most two steps ahead."""
        ref = self.ref
        evaluations = self._closing_evaluations()
        ref.start_epoch(epoch, self.step_count, evaluations)
        if self.overlap and not ref.draws and epoch < self.recipe.epochs:
            ref.start_epoch(epoch + 1, self.step_count + self.steps_per_epoch,
                            evaluations, lr=self.recipe.lr_at(epoch + 1), ahead=True)
        waiting = deque()  # the scratch side's steps not paired yet: (step, result, non-finite, state copy)
        for x, y in batches:
            self.step_count += 1
            k = self.step_count
            self._give(x, y)
            with np.errstate(over="ignore", invalid="ignore"):
                r = self.scratch.step(x, y)
                ref.give_draws(self.scratch.draws())
                bad = nonfinite(self.scratch, r)
            waiting.append((k, r, bad, copy_state(self.scratch.state()) if k <= self.drift_steps else None))
            until = k if bad else (k - 2 if k <= self.drift_steps else 0)
            while waiting and (waiting[0][0] <= until or ref.ready()):
                self._pair(waiting.popleft(), epoch, totals, curves)
        while waiting:
            self._pair(waiting.popleft(), epoch, totals, curves)

    def _pair(self, scratch_step, epoch, totals, curves) -> None:
        k, r, bad, state = scratch_step
        step, rt, bad_t, state_t = self.ref.next_step()
        assert step == k, (step, k)
        self._paired(k, epoch, [(self.scratch, r, bad, state), (self.ref, rt, bad_t, state_t)], totals, curves)

    def _params(self) -> dict:
        """A copy of both sides' parameters, ``{side: {key: array}}`` (to see what an epoch changed)."""
        return {side.name: {k: np.array(v, copy=True) for k, v in side.state().items() if k.startswith("param/")}
                for side in self.sides}

    def _frozen(self, before: dict) -> list:
        """Parameters that an epoch left exactly as they were, on both sides (not those whose
        gradient is zero by construction, ``Network.allowed_zero``)."""
        now = {side.name: side.state() for side in self.sides}
        return [k for k in before[self.scratch.name]
                if k.split("/", 1)[1] not in self.net.allowed_zero
                and all(np.array_equal(before[n][k], now[n][k]) for n in before)]

    def _both(self, chunk=None) -> dict:
        """``evaluate_test`` of both sides, at one thread each; a torch worker evaluates
        while the scratch side does."""
        with side_threads(1):
            later = self.ref.evaluate_later(chunk) if getattr(self.ref, "remote", False) else None
            out = {self.scratch.name: evaluate_test(self.scratch, self.ds, chunk)}
            out[self.ref.name] = later() if later else evaluate_test(self.ref, self.ds, chunk)
        return out

    def _closing_evaluations(self) -> tuple:
        """What each epoch closes with on the torch side (``_close_epoch``): the whole test set,
        with ``per_batch`` every ``batch_size`` images (chunk sizes, as ``evaluate_test``), and
        the ``epoch_metric`` where a torch worker computes it (``worker.METRIC``)."""
        return ((None, self.recipe.batch_size) if self.per_batch else (None,)) + \
            ((METRIC,) if self._metric_in_worker else ())

    def _metrics(self, remote) -> dict:
        """``epoch_metric`` of both sides after the epoch just trained (``remote``: the torch
        worker's answer, a function that waits for it, or None)."""
        ref = self.ref
        out = {self.scratch.name: self.epoch_metric(self.scratch, self.ds)}
        if remote is not None:
            out[ref.name] = remote()
        elif getattr(ref, "replayed", False):
            out[ref.name] = self.replay_ref.metrics[len(self.history)]
        else:
            out[ref.name] = self.epoch_metric(ref, self.ds)
        if self.ref_tape is not None:
            self.ref_tape.metrics.append(out[ref.name])
        return out

    def evaluate(self) -> dict:
        return {name: {"test_loss": loss, "test_accuracy": acc} for name, (loss, acc) in self._both().items()}

    def evaluate_chunks(self, chunk: int) -> dict:
        """``{side: [(loss, accuracy %) of every ``chunk`` test images]}`` (per-batch validation curves)."""
        return self._both(chunk)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of both sides' optimizers (the recipe's ``lr_schedule``)."""
        for side in self.sides:
            side.set_lr(lr)

    def _open_epoch(self, epoch: int) -> None:
        lr = self.recipe.lr_at(epoch)
        self.set_lr(lr)
        self._open = {"epoch": epoch, "lr": lr, "totals": {s.name: {"loss": 0.0, "correct": 0, "n": 0} for s in self.sides},
                      "secs0": {s.name: s.seconds for s in self.sides}, "before": self._params(),
                      "curves": {s.name: [] for s in self.sides} if self.per_batch else None,
                      "batches": iter(training_batches(self.ds, self.recipe, self.seed, epoch)), "failed": None,
                      "inbox": deque(), "taken": 0}  # a follower's: the batches given to it, how many given

    def run_epoch(self, epoch: int, progress: bool | None = None) -> dict:
        """Train one epoch on both sides; return its metrics (accuracy and error in %). A
        follower's steps were taken by the run it follows (``follow``): here its epoch closes."""
        from tqdm.auto import tqdm

        if self.led is not None:
            o = self._open
            if o is None or o["epoch"] != epoch:
                raise RuntimeError(f"{self.net.name}: epoch {epoch} of a follower was not stepped by its run")
            if o["failed"] is not None:
                self.unfollow()
                raise o["failed"]
            if o["inbox"] or o["taken"] < self.steps_per_epoch:
                raise RuntimeError(f"{self.net.name}: the run this one follows stopped within epoch {epoch}")
            return self._close_epoch()
        for f in self.followers:
            if f._open is not None:
                raise RuntimeError(f"{self.net.name}: a follower's epoch {f._open['epoch']} is not closed yet: "
                                   "call its run_epoch after each epoch of the run it follows")
        self._open_epoch(epoch)
        for f in self.followers:
            f._open_epoch(epoch)
        o = self._open
        n_batches = self.steps_per_epoch
        bar = tqdm(o["batches"], total=n_batches, desc=f"{self.net.name} epoch {epoch}/{self.recipe.epochs}",
                   leave=False, disable=None if progress is None else not progress, unit="batch")
        steps = self._steps_concurrent if getattr(self.ref, "remote", False) else self._steps
        with side_threads(1):
            steps(bar, epoch, o["totals"], o["curves"])
        bar.close()
        return self._close_epoch()

    def _close_epoch(self) -> dict:
        o, self._open = self._open, None
        epoch, lr, totals, secs0, curves = o["epoch"], o["lr"], o["totals"], o["secs0"], o["curves"]
        test = self.evaluate()
        s_state, t_state = self.scratch.state(), self.ref.state()
        diff_abs, diff_rel, diff_name = weight_difference(s_state, t_state, rounding_noise_keys(self.net))
        p_abs, p_rel, p_name = weight_difference({k: v for k, v in s_state.items() if k.startswith("param/")},
                                                 t_state)
        row = {"epoch": epoch, "lr": lr}
        for side in self.sides:
            t = totals[side.name]
            row[side.name] = {
                "train_loss": t["loss"] / t["n"],
                "train_error": 100.0 * (1 - t["correct"] / t["n"]),
                **test[side.name],
                "seconds": side.seconds - secs0[side.name],
            }
        row.update(max_abs_weight_diff=diff_abs, max_rel_weight_diff=diff_rel, worst_tensor=diff_name,
                   max_abs_param_diff=p_abs, max_rel_param_diff=p_rel, worst_param=p_name,
                   frozen=self._frozen(o["before"]))
        if curves is not None:
            row["per_batch"] = curves
            row["per_batch_val"] = self.evaluate_chunks(self.recipe.batch_size)
        if self.epoch_metric is not None:
            row["metric"] = self._metrics(self.ref.evaluate_later(METRIC) if self._metric_in_worker else None)
        self.history.append(row)
        return row


def collapsed(history) -> str | None:
    """Why a finished run has *collapsed*, or None: its last epoch left some parameter tensor
    exactly unchanged on both sides (every one of its gradients was zero: a saturated
    sigmoid, a layer of dead ReLU units), so training no longer trains it. Both sides agree,
    so this is no derivation bug, and no parity check can judge those gradients.

    Test accuracy at chance alone is not the criterion: a healthy run of a few steps can be
    there too; it is reported alongside."""
    if not history:
        return None
    last = history[-1]
    frozen = last.get("frozen") or []
    if not frozen:
        return None
    names = [k.split("/", 1)[1] for k in frozen]
    acc = " | ".join(f"{last[s]['test_accuracy']:.2f}%" for s in ("scratch", "torch") if s in last)
    since = last["epoch"]
    for row in reversed(history[:-1]):  # the first epoch of the unbroken run of frozen epochs
        if not set(frozen) <= set(row.get("frozen") or []):
            break
        since = row["epoch"]
    return (f"training no longer changes {', '.join(names)} on either side (unchanged over epoch"
            f"{'s ' + str(since) + '-' if since != last['epoch'] else ' '}{last['epoch']}: every gradient of "
            f"{'it' if len(names) == 1 else 'them'} was zero, both sides agree); test accuracy {acc} "
            "(scratch | torch)")
