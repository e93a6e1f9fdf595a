"""Progress of the long phases of ``nnparity run``: a tqdm bar on a terminal (as the
training epochs have), nothing off a terminal or with ``--no-progress``; the caller
then prints one line per phase with its duration, so a log shows where the time went.

``progress``: ``None`` shows a bar only when stderr is a terminal (tqdm's
``disable=None``), ``False`` never, ``True`` always.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager

_parity_bars = contextvars.ContextVar("nnparity_parity_bars", default=())


def bar(iterable=None, *, total: int, desc: str, progress: bool | None = None, unit: str = "step"):
    """A tqdm bar over ``iterable`` (or advanced by hand), gone from the screen when it closes."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False,
                disable=None if progress is None else not progress)


@contextmanager
def parity_bar(desc: str, total: int, progress: bool | None = None):
    """A bar advanced by every step of every step-parity run (``networks.run_parity``)
    started inside the block, however deep (``check.run_check`` calls it for ``run``):
    the step callback need not be passed through every function in between."""
    b = bar(total=total, desc=desc, progress=progress)
    token = _parity_bars.set(_parity_bars.get() + (b,))
    try:
        yield b
    finally:
        _parity_bars.reset(token)
        b.close()


def with_parity_bars(on_step):
    """``on_step(i, trace)`` that also advances the bars of the enclosing ``parity_bar``
    blocks (``on_step`` itself, which may be None, when there are none)."""
    bars = _parity_bars.get()
    if not bars:
        return on_step

    def step(i, trace):
        for b in bars:
            b.update(1)
        if on_step is not None:
            on_step(i, trace)
    return step
