"""``nnparity bench``: seconds per full training epoch, scratch vs torch, measured in
the same process and alternating (S T, then T S, ...) so that both sides see the
same machine state; achieved GFLOP/s against this machine's measured GEMM peak;
peak resident memory.
"""

from __future__ import annotations

import resource
import statistics
import time

import numpy as np

from . import data as mnist
from .networks import first_batches, get, make_sides, prepare, training_batches


def gemm_peak(dtype, n: int = 1536, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n NumPy matmul on this machine."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n)).astype(dtype), rng.random((n, n)).astype(dtype)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def train_flops_per_sample(model, x_one) -> float:
    """Multiply-adds x 2 of one training step per sample, from the layers' own counts
    (``flops_per_sample()``, defined after a forward pass)."""
    model.forward(x_one)
    return float(sum(m.flops_per_sample() for _, m in model.named_modules() if hasattr(m, "flops_per_sample")))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_network(name: str, raw, dtype: str = "float32", repeats: int = 3, seed: int = 0, recipe=None) -> dict:
    """Seconds per epoch of each side (``recipe`` defaults to the network's: full MNIST)."""
    net = get(name)
    recipe = recipe or net.recipe
    ds = prepare(net, recipe, raw, dtype, seed)
    scratch, ref = make_sides(net, recipe, dtype, seed)
    # warm-up: a few steps each (allocations, thread pools)
    for x, y in first_batches(ds, recipe, seed, 3):
        scratch.step(x, y)
        ref.step(x, y, draws=scratch.draws())
    # Timed epochs run one side at a time, so the torch side cannot take the scratch side's
    # dropout masks: each side draws its own, as a standalone run of each library would.
    for m in ref.model.modules():
        if hasattr(m, "draw_own_mask"):
            m.draw_own_mask = True
    times = {"scratch": [], "torch": []}
    for r in range(repeats):
        order = (scratch, ref) if r % 2 == 0 else (ref, scratch)
        for side in order:
            t0 = time.perf_counter()
            for x, y in training_batches(ds, recipe, seed, r + 1):
                side.step(x, y)
            times[side.name].append(time.perf_counter() - t0)
    s, t = statistics.median(times["scratch"]), statistics.median(times["torch"])
    flops = train_flops_per_sample(scratch.model, ds.x_train[:1]) * len(ds.y_train)
    return {"net": name, "dtype": dtype, "batch_size": recipe.batch_size, "samples": len(ds.y_train),
            "scratch_s": s, "torch_s": t, "ratio": s / t, "scratch_all": times["scratch"],
            "torch_all": times["torch"], "gflop_per_epoch": flops / 1e9,
            "scratch_gflops": flops / s / 1e9, "torch_gflops": flops / t / 1e9}


def bench(names, dtype="float32", repeats=3, data_dir=None) -> int:
    raw = mnist.load_mnist(data_dir)
    peak = gemm_peak(dtype)
    print(f"GEMM peak ({dtype}, NumPy): {peak:.0f} GFLOP/s")
    print(f"{'net':10s} {'scratch s/epoch':>16s} {'torch s/epoch':>14s} {'ratio':>6s} "
          f"{'scratch GFLOP/s':>16s} {'torch GFLOP/s':>14s} {'% of peak':>10s}")
    for name in names:
        r = bench_network(name, raw, dtype, repeats)
        print(f"{name:10s} {r['scratch_s']:16.2f} {r['torch_s']:14.2f} {r['ratio']:6.2f} "
              f"{r['scratch_gflops']:16.1f} {r['torch_gflops']:14.1f} {100 * r['scratch_gflops'] / peak:9.0f}%")
    print(f"peak resident memory: {peak_rss_mib():.0f} MiB")
    return 0
