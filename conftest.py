"""Root conftest: the repo's own test run uses its pytest plugin (the ``nnparity`` fixture,
also installed through the ``pytest11`` entry point; registered once either way) and
``pytester`` to test that plugin in-process.

The tests run torch on one intra-op thread (unless ``OMP_NUM_THREADS`` says otherwise),
in this process and in the CLI runs they start. Their tensors are small, and on a busy
2-core machine torch's default two threads spin against the other jobs: the whole
suite took 306-378 s there with two threads and 100 s with one (same machine, same
load). Results do not depend on it: parity tolerances hold for any thread count.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

pytest_plugins = ("nnparity.api.plugin", "pytester")
