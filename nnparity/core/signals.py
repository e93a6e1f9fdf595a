"""SIGINT (Ctrl-C) and SIGTERM (kill) end a command cleanly: both raise
``KeyboardInterrupt`` carrying the signal's name, from the first line of ``main`` to
the last file a run writes; while a run's final files are written and put in place
the signals are held (``signals_held``), so a folder never holds half a report.

Never inside an import: there the handler's exception can land in Python code that C
or C++ called (torch's ``_c10d_init`` during ``import torch``: pybind11 cannot pass it
on and the process aborts, exit -6; NumPy's ``PyCapsule_Import`` turns it into an
ImportError), so a signal that arrives during an import is handed back 10 ms later,
again until the import is over (``_deliver_later``).

Standard library only: ``nnparity.cli.main`` installs the handlers before it imports NumPy
or torch.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager

_held = None  # while the final files are written: the signals received, held until they are in place
_raised: list = []  # the signals whose KeyboardInterrupt the handler raised, in order
_pending = None  # a signal that landed where it could not be raised, handed back by SIGALRM


def _interrupt(signum, frame):
    name = signal.Signals(signum).name
    if _held is not None:
        _held.append(name)
        return
    if _importing(frame):
        _deliver_later(signum)
        return
    _raise(name)


def _raise(name: str):
    """The signal ``name`` as a ``KeyboardInterrupt``, recorded for ``raised_signal``."""
    _raised.append(name)
    raise KeyboardInterrupt(name)


def _importing(frame) -> bool:
    """Whether the main thread is inside an import: a frame of the import system is on its
    stack (C calls in between do not cut the chain of ``f_back``)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib."):
            return True
        frame = frame.f_back
    return False


def _deliver_later(signum) -> None:
    """Hand ``signum`` to the handler again in 10 ms, by SIGALRM (``_alarm``), wherever the main
    thread is by then. A timer rather than a thread: a thread would stop a worker from being
    forked; a timer is not inherited by a forked child."""
    global _pending
    if _pending is None:
        _pending = signum
    signal.setitimer(signal.ITIMER_REAL, 0.01)


def _alarm(signum, frame):
    global _pending
    pending, _pending = _pending, None
    if pending is not None:
        _interrupt(pending, frame)


def raised_count() -> int:
    """How many signals the handler has raised in this process so far (``raised_signal``'s mark)."""
    return len(_raised)


def raised_signal(since: int = 0) -> str | None:
    """The last signal whose ``KeyboardInterrupt`` the handler raised after the first ``since``
    (a ``raised_count()`` taken when a command began), if any. C code can turn that exception
    into another one: a SIGTERM while NumPy's extension imports ``datetime`` came out as
    "ImportError: PyCapsule_Import could not import module datetime" (seen in CI). A command
    that fails after a signal is then reported as interrupted, not as that error; a signal an
    earlier command of the same process took (``main`` called again, as tests do) is not this
    command's."""
    return _raised[-1] if len(_raised) > since else None


def catch_interrupts():
    """From now on SIGINT (Ctrl-C) and SIGTERM (kill) both raise ``KeyboardInterrupt``
    carrying the signal's name, even where the shell started the process with SIGINT
    ignored (a background job of a non-interactive shell, as in CI), so that a run can
    catch it and write its files marked incomplete. Returns the function that puts the
    previous handlers back (call it in a ``finally``)."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, _alarm)
    previous_hook, sys.unraisablehook = sys.unraisablehook, _redeliver(sys.unraisablehook)

    def restore():
        global _pending
        if previous[signal.SIGALRM] is not _alarm:  # not nested in another catch_interrupts: nothing to hand back
            signal.setitimer(signal.ITIMER_REAL, 0)
            _pending = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = previous_hook

    return restore


def _redeliver(hook):
    """An ``unraisablehook`` that gives a signal back when its ``KeyboardInterrupt`` was raised
    where Python cannot let an exception out (a weakref callback, such as the import system's
    module-lock cleanup, or a ``__del__``): Python would print "Exception ignored in ..." with a
    traceback and carry on as if no signal had come. The signal is handed back instead
    (``_deliver_later``). Anything else goes to ``hook``."""
    def redeliver(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, KeyboardInterrupt) and exc.args and exc.args[0] in ("SIGINT", "SIGTERM"):
            _deliver_later(signal.Signals[exc.args[0]])
            return
        hook(unraisable)
    return redeliver


@contextmanager
def handled_signals():
    """``catch_interrupts`` for the duration of a ``with`` block."""
    restore = catch_interrupts()
    try:
        yield
    finally:
        restore()


@contextmanager
def signals_held():
    """While the final files are written and put in place, a SIGINT or SIGTERM is held
    (the list yielded collects their names) instead of cutting the writing short: the
    folder then holds one complete, consistent set of files whatever arrives."""
    global _held
    _held = []
    try:
        yield _held
    finally:
        _held = None


@contextmanager
def signals_deferred():
    """A SIGINT or SIGTERM that arrives inside the block is raised when the block ends: for
    starting a process, which a ``KeyboardInterrupt`` half-way through would leave reading a
    start that never comes (a spawned child then prints "EOFError: Ran out of input" with a
    traceback). Inside an outer ``signals_held`` the outer block decides.

    A process started inside the block has SIGINT blocked from its first instruction
    (``_children_block_sigint``): a terminal's Ctrl-C reaches the whole process group, and
    this process, the parent, is the one that stops its children."""
    if _held is not None:
        with _children_block_sigint():
            yield
        return
    with signals_held() as held:
        with _children_block_sigint():
            yield
    if held:
        _raise(held[0])


@contextmanager
def _children_block_sigint():
    """SIGINT blocked in every process started inside the block, from its first instruction.

    A child spawned with Python's default SIGINT handler can be hit by Ctrl-C while it imports
    torch and abort with pybind11's "terminate called after throwing ..." (see the module doc);
    setting ``SIG_IGN`` in the child's own code comes too late. A thread's signal mask is what a
    child inherits through fork and exec (and Python's start-up leaves it), so the main thread
    blocks SIGINT while it starts the child: the child never receives a Ctrl-C (the torch
    worker then ignores SIGINT and unblocks it; the parent stops its children). This process
    loses nothing: a SIGINT that comes meanwhile goes to another thread, or waits, pending,
    until the mask is restored, and its handler runs then. Blocking, not ``SIG_IGN``: an
    ignored disposition would be inherited too, but a Ctrl-C taken by another thread while it
    was set would be lost."""
    if os.name == "posix":  # the first spawn starts multiprocessing's resource tracker, and that start
        from multiprocessing import resource_tracker  # unblocks SIGINT in this process: it runs first here

        resource_tracker.ensure_running()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending SIGINT's handler runs here


def interrupt_name(e: KeyboardInterrupt) -> str:
    """The signal behind a ``KeyboardInterrupt`` (a plain Ctrl-C carries no name: SIGINT)."""
    return e.args[0] if e.args else "SIGINT"
