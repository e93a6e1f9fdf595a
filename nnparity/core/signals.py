"""SIGINT (Ctrl-C) and SIGTERM (kill) end a command cleanly: both raise
``KeyboardInterrupt`` carrying the signal's name, from the first line of ``main`` to
the last file a run writes; while a run's final files are written and put in place
the signals are held (``signals_held``), so a folder never holds half a report.

Standard library only: ``nnparity.cli.main`` installs the handlers before it imports NumPy
or torch.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

_held = None  # while the final files are written: the signals received, held until they are in place
_raised: list = []  # the signals whose KeyboardInterrupt the handler raised, in order


def _interrupt(signum, frame):
    name = signal.Signals(signum).name
    if _held is not None:
        _held.append(name)
        return
    _raised.append(name)
    raise KeyboardInterrupt(name)


def raised_signal() -> str | None:
    """The last signal whose ``KeyboardInterrupt`` the handler raised, if any. C code can turn
    that exception into another one: a SIGTERM while NumPy's extension imports ``datetime``
    came out as "ImportError: PyCapsule_Import could not import module datetime" (seen in CI).
    A command that fails after a signal is then reported as interrupted, not as that error."""
    return _raised[-1] if _raised else None


def catch_interrupts():
    """From now on SIGINT (Ctrl-C) and SIGTERM (kill) both raise ``KeyboardInterrupt``
    carrying the signal's name, even where the shell started the process with SIGINT
    ignored (a background job of a non-interactive shell, as in CI), so that a run can
    catch it and write its files marked incomplete. Returns the function that puts the
    previous handlers back (call it in a ``finally``)."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, _redeliver(sys.unraisablehook)

    def restore():
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = previous_hook

    return restore


def _redeliver(hook):
    """An ``unraisablehook`` that gives a signal back when its ``KeyboardInterrupt`` was raised
    where Python cannot let an exception out (a weakref callback, such as the import system's
    module-lock cleanup, or a ``__del__``): Python would print "Exception ignored in ..." with a
    traceback and carry on as if no signal had come. The signal is sent again instead, 10 ms
    later from a timer thread (raised here, its handler would run inside this hook, where the
    exception would be lost again), and its handler runs in the main thread wherever it then
    is. Anything else goes to ``hook``."""
    def redeliver(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, KeyboardInterrupt) and exc.args and exc.args[0] in ("SIGINT", "SIGTERM"):
            timer = threading.Timer(0.01, os.kill, (os.getpid(), signal.Signals[exc.args[0]]))
            timer.daemon = True
            timer.start()
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


def interrupt_name(e: KeyboardInterrupt) -> str:
    """The signal behind a ``KeyboardInterrupt`` (a plain Ctrl-C carries no name: SIGINT)."""
    return e.args[0] if e.args else "SIGINT"
