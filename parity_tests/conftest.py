"""Fixtures of the parity tests, and the registry they are parametrized over.

A test that takes the argument ``network`` runs once per registered network (ids = the
names): every entry of ``nnparity.training.networks.NETWORKS``, then every network named by the
environment variable ``NNPARITY_EXTRA_NETWORKS`` (network specs as ``nnparity`` takes
them, a ``path/to/net.py`` or a ``module:attr``, separated by commas). So a new
registry entry, or your own network file, gets the registry's tests without editing a
test file::

    NNPARITY_EXTRA_NETWORKS=path/to/my_net.py python -m pytest parity_tests/test_registry.py

``@pytest.mark.networks(where=...)`` keeps the networks ``where(net)`` holds for (e.g. the
MNIST networks: ``lambda net: net.mnist``).
"""

import os

import numpy as np
import pytest

from nnparity.training import networks
from nnparity.core.data import load_mnist
from preloaded import PreloadedPython

DTYPES = ["float64", "float32"]
PARITY_STEPS = 50  # the step parity of every network: its first 50 training batches
EXTRA = "NNPARITY_EXTRA_NETWORKS"


def registered() -> list:
    """The names of every network the parametrized tests cover: the registry's, then the extras
    (loaded and registered in this process, so ``networks.get(name)`` finds them)."""
    extra = [networks.get(spec).name for spec in os.environ.get(EXTRA, "").split(",") if spec.strip()]
    return list(networks.NETWORKS) + [n for n in dict.fromkeys(extra) if n not in networks.NETWORKS]


def pytest_configure(config):
    try:
        registered()
    except networks.UnknownNetwork as e:  # a bad extra network: one line, not a traceback
        raise pytest.UsageError(f"{EXTRA}: {e}") from None


def pytest_generate_tests(metafunc):
    if "network" in metafunc.fixturenames:
        names = registered()
        for mark in metafunc.definition.iter_markers("networks"):
            names = [n for n in names if mark.kwargs["where"](networks.get(n))]
        metafunc.parametrize("network", names, ids=names)


@pytest.fixture(scope="session")
def mnist():
    """The shipped MNIST, loaded once per test session."""
    return load_mnist()


# The libraries `python -m nnparity.cli.main` imports to run a command (torch imports its
# compiler at the first optimizer): preloaded, they cost a command nothing. Nothing of this
# repository is preloaded: each command imports nnparity afresh, as a new interpreter does.
LIBRARIES = "import numpy, torch, torch._dynamo, matplotlib.pyplot"


@pytest.fixture(scope="session")
def cli_process():
    """``cli_process.run(ARGS)`` / ``cli_process.popen(ARGS)``: ``python -m nnparity.cli.main
    ARGS`` as a real process (its own pid, pipes, signals, exit status), forked from a Python
    that has imported the libraries once (``preloaded.py``): 1-2 s a run instead of 4-7.
    Tests of what happens while the interpreter starts and imports torch start
    ``sys.executable`` themselves."""
    server = PreloadedPython(LIBRARIES, module="nnparity.cli.main")
    yield server
    server.close()


@pytest.fixture(params=DTYPES)
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


class Kept:
    """What a network's own tests look at after the shared step-parity run (an observer of
    ``parity.check_steps``): both sides after the last step, and every step's random draws
    (dropout masks) as the scratch side made them."""

    def __init__(self):
        self.sides, self.draws = None, []

    def before_step(self, i, x, y, scratch_side, torch_side):
        self.sides = (scratch_side, torch_side)

    def after_step(self, i, x, y, s, t, trace):
        self.draws.append({k: np.copy(v) for k, v in self.sides[0].draws().items()})


@pytest.fixture(scope="session")
def step_parity(mnist):
    """``step_parity(name, dtype) -> (trace, kept)``: ``networks.run_parity`` of the network
    over its first ``step_parity.steps`` (``PARITY_STEPS``) batches on the shipped MNIST, run once per session and
    shared by the registry's test (``test_registry.py``) and the network's own
    (``test_cnn18k.py`` looks at the same run's dropout masks and eval mode)."""
    cache = {}

    def run(name, dtype):
        if (name, dtype) not in cache:
            kept = Kept()
            trace = networks.run_parity(name, steps=PARITY_STEPS, dtype=dtype, raw=mnist, observer=kept)
            cache[name, dtype] = trace, kept
        return cache[name, dtype]

    run.steps = PARITY_STEPS
    return run
