"""A fingerprint of the scratch side's numbers, to show a speed change leaves them bit for bit.

    python tools/scratch_bits.py [STEPS] > before.txt   # on the old code
    python tools/scratch_bits.py [STEPS] > after.txt    # on the new code
    diff before.txt after.txt                            # nothing: the same bits

For every documented MNIST network (linear10 in both variants) in float32 and float64, the
scratch side alone trains STEPS steps (default 40) on the run's own first batches (a
2,000-image training subset), one step recorded as a parity run records it, then is
evaluated on 500 test images. Each line hashes (SHA-256) the bytes of every step's
loss and correct count, the recorded step's tensors, the final parameters, optimizer
state and buffers, and the evaluation. It tells whether anything changed, not where:
``nnparity check`` does that.
"""

import hashlib
import sys

import numpy as np


def fingerprint(raw, name: str, dtype: str, steps: int, variant: str | None = None) -> str:
    from nnparity.training.networks import first_batches, get, make_sides, prepare

    net = get(name)
    recipe = net.recipe.replace(train_size=2000, test_size=500, variant=variant)
    ds = prepare(net, recipe, raw, dtype, 0)
    scratch, _ = make_sides(net, recipe, dtype, 0)
    h = hashlib.sha256()
    for i, (x, y) in enumerate(first_batches(ds, recipe, 0, steps)):
        r = scratch.step(x, y, record=(i == 1))
        h.update(np.float64(r.loss).tobytes() + np.int64(r.correct).tobytes())
        for key, value in (r.record or {}).items():
            h.update(key.encode() + np.ascontiguousarray(value).tobytes())
    for key, value in scratch.state().items():
        h.update(key.encode() + np.ascontiguousarray(value).tobytes())
    h.update(np.float64(scratch.evaluate(ds.x_test, ds.y_test)).tobytes())
    return h.hexdigest()[:16]


def main(steps: int = 40) -> None:
    from nnparity.cli.reproduce import documented_runs
    from nnparity.core import data as mnist
    from nnparity.training.networks import get

    raw = mnist.load_mnist()
    for name in documented_runs():
        net = get(name)
        if not getattr(net, "mnist", True):  # toy221 trains on its own two points
            continue
        for variant in net.variants or (None,):
            for dtype in ("float32", "float64"):
                label = name if variant is None else f"{name}[{variant}]"
                print(f"{label} {dtype} {fingerprint(raw, name, dtype, steps, variant)}", flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
