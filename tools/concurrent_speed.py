"""Milliseconds per training step, the sides alternating in one process vs both at once.

    python tools/concurrent_speed.py [ROUNDS]

For each case (network, dtype, training images) one sequential and one concurrent
``Training`` are built on the same data; after one warm-up epoch each (the worker's
start, first-call allocations), their epochs are timed in turn, ROUNDS rounds (default
3), so that both modes see the same load. An epoch's wall time includes its evaluation
on a 100-image test subset. Prints the load (``os.getloadavg``) before and after, every
round's ms per step and ratio, and the median ratio: what to quote on a shared machine;
then the CPU time per step (the least over the rounds) of the sequential run's process,
and of the concurrent run's process and its torch worker, which the load inflates less.
First, and again last, it measures how many cores the machine gives right now: a
one-thread NumPy GEMM loop alone, then two such loops in two processes at once (2.0:
two cores free; 1.0: the other jobs leave the run one core's worth, and training both
sides at once cannot be faster than alternating them).
"""

import os
import statistics
import sys
import time

CASES = [("mlp1000", "float32", 20000), ("mlp1000", "float64", 10000), ("cnn18k", "float32", 1600),
         ("mlp16", "float32", 60000), ("linear10", "float32", 32000)]


def _gemm_loop(_=None) -> float:
    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    with threadpool_limits(1):
        t0 = time.perf_counter()
        for _ in range(200):
            a @ a
        return time.perf_counter() - t0


def cores_free() -> float:
    """One GEMM loop's time alone over its time beside a second one in another process."""
    import multiprocessing

    alone = _gemm_loop()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_gemm_loop, range(2))  # the workers' start-up, not timed
        both = pool.map(_gemm_loop, range(2))
    return 2 * alone / sum(both)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(rounds: int = 3) -> None:
    from nnparity.core import data as mnist
    from nnparity.training.networks import get, prepare
    from nnparity.training.train import Training

    raw = mnist.load_mnist()
    print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; cores: {len(os.sched_getaffinity(0))}; "
          f"cores free (GEMM loops): {cores_free():.2f}")
    print("| net | dtype | steps/epoch | sequential ms/step | concurrent ms/step | ratio per round | median ratio "
          "| CPU ms/step: sequential / concurrent run's process + worker |")
    print("|---|---|---|---|---|---|---|---|")
    for name, dtype, n in CASES:
        net = get(name)
        recipe = net.recipe.replace(train_size=n, test_size=100, epochs=rounds + 1)
        ds = prepare(net, recipe, raw, dtype, 0)
        steps = -(-n // recipe.batch_size)
        modes = {False: Training(net, recipe, ds, dtype, 0), True: Training(net, recipe, ds, dtype, 0, concurrent=True)}
        for t in modes.values():
            t.run_epoch(1, progress=False)
        ms, cpu = {False: [], True: []}, {False: [], True: [], "worker": []}
        worker = modes[True].ref.pid
        for epoch in range(2, rounds + 2):
            for mode, t in modes.items():
                t0, c0, w0 = time.perf_counter(), time.process_time(), _cpu_seconds(worker)
                t.run_epoch(epoch, progress=False)
                ms[mode].append(1000 * (time.perf_counter() - t0) / steps)
                cpu[mode].append(1000 * (time.process_time() - c0) / steps)
                if mode:
                    cpu["worker"].append(1000 * (_cpu_seconds(worker) - w0) / steps)
        for t in modes.values():
            t.close()
        ratios = [c / s for s, c in zip(ms[False], ms[True])]
        print(f"| {name} | {dtype} | {steps} | {' '.join(f'{v:.3f}' for v in ms[False])} | "
              f"{' '.join(f'{v:.3f}' for v in ms[True])} | {' '.join(f'{r:.2f}' for r in ratios)} | "
              f"{statistics.median(ratios):.2f} | {min(cpu[False]):.3f} / {min(cpu[True]):.3f} + "
              f"{min(cpu['worker']):.3f} |", flush=True)
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; cores free (GEMM loops): {cores_free():.2f}")


if __name__ == "__main__":  # the concurrent Training spawns its worker: the guard multiprocessing needs
    main(*(int(a) for a in sys.argv[1:]))
