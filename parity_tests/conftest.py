import numpy as np
import pytest

from nnparity.data import load_mnist

DTYPES = ["float64", "float32"]


@pytest.fixture(scope="session")
def mnist():
    """The shipped MNIST, loaded once per test session."""
    return load_mnist()


@pytest.fixture(params=DTYPES)
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
