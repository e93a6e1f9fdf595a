"""Limit NumPy's BLAS threads at run time, for code that alternates NumPy and torch.

On a 2-core machine, a training step of one library right after a step of the other
runs against the other library's worker threads, which keep spinning for a while after
their last call: measured on cnn18k (batch 16), alternating steps took 276 ms (scratch)
and 387 ms (torch) instead of 8 and 6.5 ms; on mlp1000, 4.7 and 11.9 ms instead of 3.2
and 2.2 ms. One BLAS thread during the alternation removes the contention. Training
runs each side at one thread in every mode (``nnparity.training.train.one_thread_per_side``;
the scratch side's last bits differ between one and two BLAS threads), alternating in
one process or both at once, the torch side in a worker process of its own.

The BLAS libraries loaded in the process are found and driven by ``threadpoolctl``
(the well-kept library for exactly this: OpenBLAS, MKL, BLIS, on Linux, macOS and
Windows); where it finds none, ``blas_threads`` does nothing. Only ``user_api="blas"``
is touched: torch's OpenMP pool keeps its own setting.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache


@lru_cache(maxsize=1)
def _blas():
    """The BLAS thread pools of this process (NumPy's), found once."""
    import numpy  # noqa: F401  (make sure NumPy's BLAS is loaded)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def blas_thread_count() -> int | None:
    """NumPy's current BLAS thread count (None if no BLAS pool was found)."""
    pools = _blas().info()
    return max(p["num_threads"] for p in pools) if pools else None


def openblas_pool_threads() -> int:
    """The threads NumPy's OpenBLAS pool holds besides the calling one, at most (0 if none)."""
    return sum(max(p["num_threads"] - 1, 0) for p in _blas().info() if p["internal_api"] == "openblas")


@contextmanager
def blas_threads(n: int):
    """Run the block with at most ``n`` BLAS threads, then restore the previous count."""
    with _blas().limit(limits=n):
        yield


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
