"""Milliseconds per training step, the sides alternating in one process vs both at once.

    python tools/concurrent_speed.py [ROUNDS]

For each case (network, dtype, training images) one sequential and one concurrent
``Training`` are built on the same data; after one warm-up epoch each (the worker's
start, first-call allocations), their epochs are timed in turn, ROUNDS rounds (default
3), so that both modes see the same load. An epoch's wall time includes its evaluation
on a 100-image test subset. Prints the load (``os.getloadavg``) before and after, every
round's ms per step and ratio, and the median ratio: what to quote on a shared machine.
"""

import os
import statistics
import sys
import time

CASES = [("mlp1000", "float32", 6000), ("mlp1000", "float64", 4000), ("cnn18k", "float32", 800),
         ("mlp16", "float32", 32000), ("linear10", "float32", 32000)]


def main(rounds: int = 3) -> None:
    from nnparity.core import data as mnist
    from nnparity.training.networks import get, prepare
    from nnparity.training.train import Training

    raw = mnist.load_mnist()
    print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; cores: {len(os.sched_getaffinity(0))}")
    print("| net | dtype | steps/epoch | sequential ms/step | concurrent ms/step | ratio per round | median ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, dtype, n in CASES:
        net = get(name)
        recipe = net.recipe.replace(train_size=n, test_size=100, epochs=rounds + 1)
        ds = prepare(net, recipe, raw, dtype, 0)
        steps = -(-n // recipe.batch_size)
        modes = {False: Training(net, recipe, ds, dtype, 0), True: Training(net, recipe, ds, dtype, 0, concurrent=True)}
        for t in modes.values():
            t.run_epoch(1, progress=False)
        ms = {False: [], True: []}
        for epoch in range(2, rounds + 2):
            for mode, t in modes.items():
                t0 = time.perf_counter()
                t.run_epoch(epoch, progress=False)
                ms[mode].append(1000 * (time.perf_counter() - t0) / steps)
        for t in modes.values():
            t.close()
        ratios = [c / s for s, c in zip(ms[False], ms[True])]
        print(f"| {name} | {dtype} | {steps} | {' '.join(f'{v:.3f}' for v in ms[False])} | "
              f"{' '.join(f'{v:.3f}' for v in ms[True])} | {' '.join(f'{r:.2f}' for r in ratios)} | "
              f"{statistics.median(ratios):.2f} |", flush=True)
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":  # the concurrent Training spawns its worker: the guard multiprocessing needs
    main(*(int(a) for a in sys.argv[1:]))
