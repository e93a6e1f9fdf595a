"""blas_threads limits NumPy's OpenBLAS threads for a block and restores them."""

import numpy as np

from nnparity.core.threads import blas_thread_count, blas_threads


def test_blas_threads_limits_and_restores():
    before = blas_thread_count()
    with blas_threads(1):
        if before is not None:
            assert blas_thread_count() == 1
        a = np.ones((64, 64))
        np.testing.assert_array_equal(a @ a, np.full((64, 64), 64.0))  # BLAS still works
    assert blas_thread_count() == before


def test_blas_threads_restores_after_an_error():
    before = blas_thread_count()
    try:
        with blas_threads(1):
            raise KeyError("boom")
    except KeyError:
        pass
    assert blas_thread_count() == before
