"""Limit NumPy's BLAS (OpenBLAS) threads at run time, for code that alternates NumPy and torch.

On a 2-core machine, a training step of one library right after a step of the other
runs against the other library's worker threads, which keep spinning for a while after
their last call: measured on cnn18k (batch 16), alternating steps took 276 ms (scratch)
and 387 ms (torch) instead of 8 and 6.5 ms; on mlp1000, 4.7 and 11.9 ms instead of 3.2
and 2.2 ms. One BLAS thread during the alternation removes the contention; torch keeps
its threads. ``nnparity bench`` alternates the same way (``Training.run_epoch``), so
it times what ``nnparity run`` does.

The OpenBLAS library NumPy loaded is found in ``/proc/self/maps`` and driven through
its ``*_set_num_threads`` entry point (what ``threadpoolctl`` does); where there is none
(another BLAS, another OS) ``blas_threads`` does nothing.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager

_SYMBOLS = [(f"{p}_get_num_threads{s}", f"{p}_set_num_threads{s}")
            for p in ("scipy_openblas", "openblas") for s in ("64_", "")]


def _openblas():
    """(get, set) functions of the OpenBLAS loaded in this process, or None."""
    import numpy  # noqa: F401  (make sure NumPy's BLAS is loaded)

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
    except OSError:
        return None
    for path in sorted(p for p in paths if "openblas" in os.path.basename(p).lower()):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _SYMBOLS:
            get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and set_ is not None:
                get.restype = ctypes.c_int
                set_.argtypes = [ctypes.c_int]
                return get, set_
    return None


def blas_thread_count() -> int | None:
    """NumPy's current OpenBLAS thread count (None if it cannot be controlled)."""
    fns = _openblas()
    return fns[0]() if fns else None


@contextmanager
def blas_threads(n: int):
    """Run the block with at most ``n`` OpenBLAS threads, then restore the previous count."""
    fns = _openblas()
    if fns is None:
        yield
        return
    get, set_ = fns
    old = get()
    set_(min(n, old))
    try:
        yield
    finally:
        set_(old)
