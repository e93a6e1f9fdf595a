"""The torch side in a process of its own, stepping while the scratch side steps.

``Training(..., concurrent=True)`` (what ``nnparity run`` does on a machine with two
cores or more) keeps the scratch side in this process and trains the torch side in a
worker process, one core each: NumPy's BLAS at one thread here, torch at one intra-op
and one inter-op thread there. The worker walks the same batches (``training_batches``
of the same seed and epoch, over the same arrays) and takes the scratch side's dropout
masks, step by step, from this process: the masks are the ones the scratch side drew,
never a second generator's. Everything it computes comes back here in step order: each
step's loss, count and time, whether any of its tensors is non-finite, its state after
each of the first drift steps and after every epoch, and every evaluation.

Why the torch side goes to the worker, not the scratch side: a new process can still set
torch's inter-op pool to one thread (in a process where torch has already run, it cannot);
the scratch model, whose generators a checkpoint saves and whose layers the reports read,
stays in the process that owns the run; and the masks flow the way they are made, from the
scratch side to the torch side.

How the worker starts. *Spawned* (a fresh interpreter that imports torch: 3-6 s of CPU on
the other core), unless ``warm_up(fork=True)`` is called where the caller knows this process
has run no torch operation yet (``nnparity run`` calls it before anything else it does).
Then the worker is *forked*: it starts with torch and nnparity already imported, at once.
A fork is sound only while torch has started no thread pool (a child inherits a pool's
bookkeeping, not its threads) and no other thread of this process holds a lock; so besides
the caller's word, ``_forkable`` refuses a fork when another Python thread runs or when
torch no longer lets its inter-op pool be set (it exists, or a first fork set it: a second
worker of the same process is spawned). NumPy's OpenBLAS pool shuts itself down across a
fork (its own ``pthread_atfork`` handler), as ``parity_tests/preloaded.py`` relies on too.

This process writes to the worker from a thread of its own (``_Writer``): a step's masks
are larger than the pipe's buffer, and writing them from the main thread would hold the
scratch side at each step until the worker came to read them, the two sides in lockstep;
the writer lets the scratch side run up to ``OUTBOX`` messages ahead. Each message is
pickled when it is sent, so later changes to its arrays do not reach the worker; it is
handed over through C queues only, which a Ctrl-C cannot leave locked (``_Writer``).

The data are passed once: written to one file (in ``/dev/shm``, memory, where it
exists) that the worker maps and unlinks at once, so nothing is left behind whichever
process ends first. A worker that dies is a ``WorkerError`` of one line, never a wait;
a worker whose parent dies finds its pipe closed at its next message and exits. The
worker ignores SIGINT (a Ctrl-C reaches the whole process group): the parent stops it.

A worker lives as long as this process needs it: started early (``warm_up``, while the
run checks parity), it serves one ``Training`` after another
(a sweep's seeds, a test module's runs); one that a ``Training`` leaves with an answer
still due (an interrupted epoch, a divergence) is stopped instead of reused.

Messages, in order on one pipe (the worker answers each in turn)::

    to the worker:   ("setup", {...})  ("epoch", epoch, lr, steps done, evaluations)  then, if
                     it takes the scratch side's draws, ("draws", {layer: mask}) once per step;
                     ("evaluate", chunk)  ("load", state)  ("release",)  ("stop",)
    from the worker: ("ready",)  ("steps", [(step, StepResult, seconds, non-finite, state or None), ...])
                     ("evaluated", result)  ("state", state)  ("error", what)

An epoch's ``evaluations`` (chunk sizes, None for the whole test set, or ``METRIC``: the
``Training.epoch_metric`` the setup names) are evaluated on the state after its last step and
sent after its steps, each an ``("evaluated", result)``. So
a torch side that takes no draws can be sent its next epoch before this process has closed
the last one (``RemoteSide.start_epoch(..., ahead=True)``): it trains on while this process
compares, evaluates and logs, and each epoch's evaluations still see that epoch's state.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
import multiprocessing
import os
import queue
import signal
import sys
import tempfile
import threading
import traceback
import warnings
import weakref
from multiprocessing.reduction import ForkingPickler

import numpy as np

from nnparity.core.signals import signals_deferred
from nnparity.training.tape import copy_state

_FIELDS = ("x_train", "y_train", "x_test", "y_test")
BATCHED_STEPS = 16  # steps' results per message from the worker, at most
OUTBOX = 64  # messages to the worker waiting to be written, at most (cnn18k: 64 steps' masks, 22 MB)
METRIC = "metric"  # an epoch's evaluation that is the setup's per-epoch metric of the side, not a test-set evaluation
_ALIGN = 64  # each array starts on a 64-byte boundary of the mapped file (as NumPy's own allocations)


class WorkerError(RuntimeError):
    """The torch worker process died or failed: one line saying which, and when."""


def _write_data(ds) -> tuple[str, list]:
    """The dataset's arrays in one new file (memory-backed where ``/dev/shm`` exists), and
    their layout ``[(field, dtype, shape, offset)]``."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="nnparity-data-", dir=folder)
    layout, offset = [], 0
    try:
        with os.fdopen(fd, "wb") as f:
            for name in _FIELDS:
                a = np.ascontiguousarray(getattr(ds, name))
                f.write(b"\0" * (-offset % _ALIGN))
                offset += -offset % _ALIGN
                layout.append((name, a.dtype.str, a.shape, offset))
                a.tofile(f)
                offset += a.nbytes
            f.write(b"\0" * _ALIGN)  # never an empty file (mmap refuses one)
    except BaseException:
        _unlink(path)
        raise
    return path, layout


def _map_data(path: str, layout: list):
    """The dataset, mapped from the file ``_write_data`` made (copy-on-write: writable
    arrays, as the parent's are, sharing the parent's pages), then the file is unlinked."""
    import mmap

    from nnparity.training.networks import Dataset

    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    _unlink(path)
    return Dataset(**{name: np.ndarray(shape, np.dtype(dtype), buffer=mm, offset=offset)
                      for name, dtype, shape, offset in layout})


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- the worker process

def serve(conn, parent_end=None) -> None:
    """The worker process: torch at one thread, then one training session after another
    (``("setup", ...)`` to ``("release",)``) until told to stop. ``parent_end``: the parent's
    end of the pipe, which a forked worker inherits (with the parent's inter-op setting of one
    thread, ``_forkable``) and closes, so that the parent's death closes the pipe."""
    forked = parent_end is not None
    if forked:
        parent_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle: it stops this process
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the start (signals_deferred)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the parent's handler: not its own
    try:
        import torch

        if not forked:  # before torch does any parallel work (it cannot change afterwards)
            torch.set_num_interop_threads(1)
        torch.set_num_threads(1)
        import nnparity.training.train  # noqa: F401  (what every session needs, imported while the parent works)
        _warm(torch)
        from nnparity.core.threads import blas_threads

        with blas_threads(1):
            while True:
                msg = conn.recv()
                if msg[0] == "setup":
                    if not _session(conn, msg[1]):
                        return
                elif msg[0] == "stop":
                    return
                # anything else is left over from a session that ended early (its last draws): not needed
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone
    except BaseException as e:  # noqa: BLE001 - said to the parent in one line, with where it happened
        frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        where = f" ({os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
        try:
            conn.send(("error", f"{type(e).__name__}: {e}{where}"))
        except OSError:
            pass


def _warm(torch) -> None:
    """One SGD step with momentum on a throwaway parameter: torch imports most of what an
    optimizer needs (its compiler front end among them, seconds) on first use."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    (p * 2.0).sum().backward()
    opt.step()


def _session(conn, setup: dict) -> bool:
    """One ``Training``'s torch side, until ``("release",)`` (returns True) or ``("stop",)`` (False)."""
    import torch

    from nnparity.training.networks import get, make_sides, training_batches
    from nnparity.training.train import evaluate_test, nonfinite

    ds = _map_data(*setup["data"])
    net = get(setup["spec"])
    recipe = dataclasses.replace(net.recipe, **setup["recipe"])
    seed, drift_steps, takes_draws, metric = setup["seed"], setup["drift_steps"], bool(setup["draws"]), setup["metric"]
    _, side = make_sides(net, recipe, setup["dtype"], seed)
    torch.set_num_threads(1)  # after make_sides, which applies the network's own count
    side.load_state(setup["state"])
    n_batches = math.ceil(len(ds.y_train) / recipe.batch_size)
    conn.send(("ready",))
    while True:
        msg = conn.recv()
        kind = msg[0]
        if kind == "epoch":
            _, epoch, lr, step, evaluations = msg
            side.set_lr(lr)
            done = []  # steps not sent yet: sent in batches, a message per step would cost the parent time

            def send():
                if done:
                    conn.send(("steps", done[:]))
                    done.clear()

            for i, (x, y) in enumerate(training_batches(ds, recipe, seed, epoch), 1):
                step += 1
                if takes_draws and not conn.poll():
                    send()  # about to wait for the parent's next masks: what is done goes first
                draws = _expect(conn, "draws")[1] if takes_draws else None
                before = side.seconds
                with np.errstate(over="ignore", invalid="ignore"):  # the parent decides what a non-finite step means
                    r = side.step(x, y, draws=draws)
                    bad = nonfinite(side, r)
                state = side.state() if step <= drift_steps or i == n_batches else None
                done.append((step, r, side.seconds - before, bad, state))
                if state is not None or bad or len(done) == BATCHED_STEPS:
                    send()  # (the parent pairs the drift steps' states at once, and stops at a non-finite step)
                if bad:
                    break  # the run stops at the earliest non-finite step of either side
            send()
            for chunk in evaluations if not bad else ():  # (after a non-finite step the run stops: none is read)
                conn.send(("evaluated", metric(side, ds) if chunk == METRIC else evaluate_test(side, ds, chunk)))
        elif kind == "evaluate":
            conn.send(("evaluated", evaluate_test(side, ds, msg[1])))
        elif kind == "load":
            side.load_state(msg[1])
            conn.send(("state", side.state()))
        elif kind in ("release", "stop"):
            return kind == "release"
        elif kind != "draws":  # the rest of an epoch's draws after a non-finite step: not needed
            raise ValueError(f"unexpected message {kind!r}")


def _expect(conn, kind: str):
    msg = conn.recv()
    if msg[0] != kind:
        raise ValueError(f"expected {kind!r}, got {msg[0]!r}")
    return msg


# ---------------------------------------------------------------- this process's end

def _read(conn, inbox) -> None:
    """The reader thread: every message into ``inbox`` as it comes (so the worker never
    waits to send while this process waits to send it masks), ``None`` once the pipe is
    closed (the worker ended)."""
    try:
        while True:
            inbox.put(conn.recv())
    except (EOFError, OSError):
        inbox.put(None)


class _Writer:
    """The thread that writes this process's messages to the worker, in order (see the module
    doc). ``send`` pickles a message and hands it over; at most ``OUTBOX`` wait. A step's
    masks (cnn18k: 346 kB) do not fit in the pipe's buffer, so a write waits until the worker
    reads them, at its next step; from this thread, the scratch side steps on meanwhile.

    The main thread touches only ``queue.SimpleQueue``s, whose ``put`` and ``get`` are single C
    calls: a signal's ``KeyboardInterrupt`` comes before or after one, never inside, so it
    cannot leave a lock held. ``queue.Queue`` can, for its ``put`` runs Python code while it
    holds its mutex: at 12 of the places where a signal could land in a ``send`` that put into
    a ``queue.Queue`` (c363bc0), the mutex stayed held and the worker's stop waited for ever.
    ``test_a_signal_anywhere_in_a_send_leaves_the_worker_stoppable`` tries every place. The
    bound is a stock of ``OUTBOX`` credits: ``send`` takes one, the thread gives it back once
    the message is written; an interrupt between the two loses a credit, never a message."""

    def __init__(self, conn, process):
        self._conn, self._process = conn, process
        self._outbox, self._credits, self._failed = queue.SimpleQueue(), queue.SimpleQueue(), threading.Event()
        for _ in range(OUTBOX):
            self._credits.put(True)
        self._thread = threading.Thread(target=self._run, daemon=True, name="nnparity torch worker writer")
        self._thread.start()

    def _run(self) -> None:
        """Each message onto the pipe until ``None``; once a write fails (the worker ended)
        ``_failed`` is set and the rest is dropped."""
        while True:
            buf = self._outbox.get()
            if buf is None:
                return
            if not self._failed.is_set():
                try:
                    self._conn.send_bytes(buf)
                except (OSError, ValueError):  # the worker ended
                    self._failed.set()
            self._credits.put(True)

    def send(self, msg) -> None:
        """``msg`` to the worker, after those sent before it: pickled here (the arrays as they
        are now, whatever this process does to them next); an ``OSError`` once the worker has
        ended. Waits while ``OUTBOX`` messages wait (a Ctrl-C interrupts the wait)."""
        buf = ForkingPickler.dumps(msg)
        while True:
            if self._failed.is_set():
                raise OSError("the torch worker's pipe is closed")
            try:
                self._credits.get(timeout=1.0)
                break
            except queue.Empty:  # the worker is busy, or has ended
                if not self._process.is_alive():
                    raise OSError("the torch worker has ended") from None
        self._outbox.put(buf)

    def close(self) -> None:
        """End the thread, then close the pipe, once the worker has ended (a write to an ended
        worker fails at once): the pipe is never closed under a write, whose descriptor could
        by then be another file's."""
        self._outbox.put(None)
        if threading.current_thread() is not self._thread:  # (a finalizer can run in any thread)
            self._thread.join(5.0)
        self._conn.close()


def _stop(process, writer) -> None:
    """End a worker process: SIGTERM (it holds nothing to save), then SIGKILL if need be;
    then its writer thread and the pipe."""
    try:
        if process.is_alive():
            process.terminate()
            process.join(2.0)
    finally:
        if process.is_alive():
            process.kill()
            process.join()
        writer.close()


def _ending(process) -> str:
    process.join(2.0)
    code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _forkable() -> bool:
    """Whether a worker may be forked from this process (the module doc, "How the worker
    starts"): on Linux, torch imported, no thread but this one and OpenBLAS's pool (no other
    Python thread, no OpenMP pool of torch's), and torch's inter-op pool still unset, which
    this sets to the worker's one thread (torch refuses that once the pool exists)."""
    torch = sys.modules.get("torch")
    if torch is None or threading.active_count() > 1 or not os.path.isdir("/proc/self/task"):
        return False
    from nnparity.core.threads import openblas_pool_threads

    if len(os.listdir("/proc/self/task")) > 1 + openblas_pool_threads():
        return False
    try:
        torch.set_num_interop_threads(1)  # this process trains no torch side itself in a concurrent run
    except RuntimeError:
        return False
    return True


class _Worker:
    """A worker process (``serve``), its pipe and the two threads that read and write it
    (``send``); forked if ``fork`` and ``_forkable()``, spawned otherwise."""

    def __init__(self, fork: bool = False):
        forked = fork and _forkable()
        ctx = multiprocessing.get_context("fork" if forked else "spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, self.conn if forked else None),
                                   name="nnparity torch worker", daemon=True)
        try:
            with signals_deferred():  # a signal is raised once the worker has started, not half-way
                with warnings.catch_warnings():  # 3.12+ warns of a fork with threads: OpenBLAS's are fork-safe
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.process.start()
                child.close()
                self.pid = self.process.pid
                self.inbox = queue.SimpleQueue()
                threading.Thread(target=_read, args=(self.conn, self.inbox), daemon=True,
                                 name="nnparity torch worker reader").start()
                writer = _Writer(self.conn, self.process)
                self.send = writer.send
                self.stop = weakref.finalize(self, _stop, self.process, writer)
        except KeyboardInterrupt:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.process.is_alive()


_IDLE: list = []  # at most one started worker that no Training holds


def warm_up(fork: bool = False) -> None:
    """Start a worker process now, for the next concurrent ``Training``, while this process
    does other work (the step parity, the drift envelope). ``fork=True`` only where this
    process has run no torch operation yet: the worker is then forked with torch imported,
    instead of spawned to import it (seconds); ``_forkable`` checks what it can of that."""
    if not any(w.alive() for w in _IDLE):
        if fork and "torch" in sys.modules:
            import torch._dynamo  # noqa: F401  (torch imports it at the first optimizer: seconds, once for both)
        _IDLE.append(_Worker(fork))


def _acquire() -> _Worker:
    while _IDLE:
        w = _IDLE.pop()
        if w.alive():
            return w
        w.stop()
    return _Worker()


class _Session:
    """What a ``RemoteSide`` has asked of its worker and not yet received; a session that
    ends with nothing outstanding gives the worker back for the next one."""

    def __init__(self, worker: _Worker, path: str):
        self.worker, self.path, self.outstanding, self.broken = worker, path, 0, False

    def end(self) -> None:
        _unlink(self.path)
        w = self.worker
        if self.outstanding or self.broken or not w.alive() or any(i.alive() for i in _IDLE):
            w.stop()
            return
        try:
            w.send(("release",))
        except OSError:
            w.stop()
            return
        _IDLE.append(w)


class RemoteSide:
    """The torch side of a ``Training``, trained in a worker process (see the module doc).

    It answers what ``Training`` reads from a side: ``name``, ``loss_fn.reduction``,
    ``seconds``, ``state()`` (between epochs: the state after the last step received),
    ``load_state``, ``set_lr``; stepping is ``start_epoch`` then, per step, ``give_draws``
    and ``next_step``; ``evaluate_later`` asks for an evaluation and returns the function
    that waits for it. ``tape``: a ``nnparity.training.tape.Tape`` it records into. ``metric``:
    the ``Training.epoch_metric`` the worker computes when an epoch asks for ``METRIC``
    (a module-level function: it is sent to the worker by name)."""

    remote = True

    def __init__(self, local, *, spec: str, recipe, ds, dtype, seed: int, draws, drift_steps: int, tape=None,
                 metric=None):
        self.name, self.loss_fn, self.seconds, self.tape = local.name, local.loss_fn, 0.0, tape
        self.draws = tuple(draws)
        if tape is not None:
            tape.states[0] = copy_state(local.state())
        self._state, self._lr, self._epoch, self._n_test = copy_state(local.state()), None, None, len(ds.y_test)
        self._sent = deque()  # epochs sent, not yet begun by this process: (epoch, lr, steps done), at most one
        self._due = deque()   # evaluations sent with an epoch, not yet taken: (epoch, chunk)
        self._steps_per_epoch = math.ceil(len(ds.y_train) / recipe.batch_size)
        self._received = deque()  # steps come in batches: those not asked for yet
        path, layout = _write_data(ds)
        setup = {"spec": spec, "recipe": {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)},
                 "dtype": str(np.dtype(dtype)), "seed": seed, "data": (path, layout), "state": self._state,
                 "draws": self.draws, "drift_steps": drift_steps, "metric": metric}
        try:
            self._worker = _acquire()
        except BaseException:
            _unlink(path)
            raise
        self._session = _Session(self._worker, path)
        self.close = weakref.finalize(self, self._session.end)
        self.pid = self._worker.pid
        self._ask(1, "setup", setup)

    # -- messages
    def _ask(self, replies: int, *msg) -> None:
        """Send ``msg``, which ``replies`` messages will answer."""
        self._session.outstanding += replies
        try:
            self._worker.send(msg)
        except OSError:
            raise self._died() from None

    def _when(self) -> str:
        return f"during epoch {self._epoch}" if self._epoch else "before the first epoch"

    def _died(self) -> WorkerError:
        self._session.broken = True
        return WorkerError(f"the torch worker process (pid {self.pid}) {_ending(self._worker.process)} "
                           f"{self._when()}; the run stops here (nnparity run --sequential trains both sides "
                           "in one process)")

    def _receive(self, kind):
        inbox, process = self._worker.inbox, self._worker.process
        while True:
            try:
                msg = inbox.get(timeout=1.0)
            except queue.Empty:
                if not process.is_alive() and inbox.empty():
                    msg = None
                else:
                    continue
            if msg is None:
                raise self._died()
            self._session.outstanding -= len(msg[1]) if msg[0] == "steps" else 1
            if msg[0] == "error":
                self._session.broken = True
                raise WorkerError(f"the torch worker process failed {self._when()}: {msg[1]}")
            if msg[0] == "ready":
                continue
            if msg[0] != kind:
                self._session.broken = True
                raise WorkerError(f"the torch worker process answered {msg[0]!r} where {kind!r} was due")
            return msg

    # -- what Training reads from a side
    def state(self):
        return self._state

    def load_state(self, state: dict) -> None:
        if self._sent:
            raise RuntimeError(f"the torch worker is training epoch {self._sent[0][0]} already: load a state "
                               "before the epochs, not between them")
        self._ask(1, "load", dict(state))
        self._state = self._receive("state")[1]

    def set_lr(self, lr: float) -> None:
        self._lr = lr  # sent with the next epoch

    def start_epoch(self, epoch: int, steps_done: int, evaluations=(), lr=None, ahead: bool = False) -> None:
        """Train epoch ``epoch``, after ``steps_done`` steps of the run, at ``lr`` (default: the
        learning rate set last); then evaluate ``evaluations`` on the state after it (chunk sizes,
        None: the whole test set), which ``evaluate_later`` then takes in that order.

        ``ahead``: send it now, while the epoch before is still under way here, so that the worker
        goes on with it at once; the later ``start_epoch`` of that epoch, with the same learning
        rate and step count, only begins it here. Only for a side that takes no draws (the worker
        would wait for this process's masks), and only an epoch this process will train next: an
        epoch sent ahead and never begun leaves the worker with answers due, so it is stopped at
        the end, not reused."""
        lr = self._lr if lr is None else lr
        if self._sent:
            sent = self._sent[0]
            if ahead or sent != (epoch, lr, steps_done):
                raise RuntimeError(f"the torch worker was sent epoch {sent[0]} (lr {sent[1]}, after {sent[2]} steps) "
                                   f"ahead; epoch {epoch} (lr {lr}, after {steps_done} steps) cannot come before it")
            self._sent.popleft()
        else:
            if ahead and self.draws:
                raise ValueError("an epoch is sent ahead only to a torch side that takes no draws")
            self._ask(self._steps_per_epoch + len(evaluations), "epoch", epoch, lr, steps_done, tuple(evaluations))
            self._due.extend((epoch, chunk) for chunk in evaluations)
            if ahead:
                self._sent.append((epoch, lr, steps_done))
                return
        self._epoch = epoch

    def give_draws(self, draws) -> None:
        """The scratch side's draws of the step it just took, those the torch side takes."""
        if self.draws:
            self._ask(0, "draws", {name: draws[name] for name in self.draws if name in draws})

    def ready(self) -> bool:
        """Whether a step's result has come in (``next_step`` would not wait)."""
        return bool(self._received) or not self._worker.inbox.empty()

    def next_step(self):
        """``(step, StepResult, non-finite tensors or "", state or None)`` of the next step,
        waiting for it."""
        if not self._received:
            self._received.extend(self._receive("steps")[1])
        step, result, seconds, bad, state = self._received.popleft()
        if bad:
            self._session.broken = True  # the worker left the epoch there
        self.seconds += seconds
        if state is not None:
            self._state = state
        if self.tape is not None:
            self.tape.add_step(result, seconds, lambda: state)
        return step, result, bad, state

    def evaluate_later(self, chunk=None):
        """Ask for ``evaluate_test(side, ds, chunk)`` now (or take the one the epoch just trained
        was sent with, ``start_epoch``); the function returned waits for it."""
        if self._due and self._due[0] == (self._epoch, chunk):
            self._due.popleft()  # asked for with the epoch: already due
        elif self._due or self._sent:  # (a _sent epoch's evaluations are in _due)
            why = "those sent with its epoch come first" if self._due and self._due[0][0] == self._epoch \
                else "the next epoch is under way"
            raise RuntimeError(f"an evaluation (chunk {chunk}) of the torch side was asked for at epoch {self._epoch}, "
                               f"where {why}: give every evaluation of an epoch to start_epoch")
        else:
            self._ask(1, "evaluate", chunk)

        def result():
            out = self._receive("evaluated")[1]
            if self.tape is not None and chunk != METRIC:  # (Training records the metric)
                if chunk is None:
                    self.tape.add_evaluation(self._n_test, None, out)
                else:
                    for start, r in zip(range(0, self._n_test, chunk), out):
                        self.tape.add_evaluation(min(chunk, self._n_test - start), chunk, r)
            return out

        return result
