"""The scratch side's milliseconds per training step at two revisions, in one run.

    python tools/scratch_speed.py OLD [NEW] [--nets cnn18k:float32,mlp1000:float32] [--rounds 5] [--steps 200]

A speed figure taken on a shared machine means something only beside another taken in the
same run: this compares two versions of the code that way. Each revision (any git revision;
NEW defaults to the working tree) is exported with ``git archive`` to a temporary folder.
For each network and dtype, every round starts one fresh process per revision, in turn
(OLD, NEW, OLD, NEW, ...), so both see the same load. The process imports that revision's
code, builds the scratch side of the documented recipe, trains 5 warm-up steps and then
STEPS steps on the run's own first batches with one BLAS thread, and reports the CPU time
(``time.process_time``) per step: the scratch side alone, as a concurrent run gives it one
core. Each step then reads the dropout masks it drew, as a run does to hand them to the torch
side (``draws()``: an eager dict in older revisions, built on reading since). The table
shows each revision's least over the rounds and NEW / OLD; the load (``os.getloadavg``) is
printed before and after.
"""

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs inside the exported tree. The registry moved from nnparity/networks.py to
# nnparity/training/networks.py (and the data module into nnparity/core) during issue 15.
CHILD = r"""
import sys, time
from threadpoolctl import threadpool_limits
try:
    from nnparity.training.networks import first_batches, get, make_sides, prepare
    from nnparity.core import data as mnist
except ImportError:
    from nnparity.networks import first_batches, get, make_sides, prepare
    from nnparity import data as mnist
name, dtype, steps, data_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
net = get(name)
recipe = net.recipe.replace(train_size=(steps + 5) * net.recipe.batch_size, test_size=100)
ds = prepare(net, recipe, mnist.load_mnist(data_dir), dtype, 0)
scratch, _ = make_sides(net, recipe, dtype, 0)
batches = list(first_batches(ds, recipe, 0, steps + 5))
# what a run reads after each step: the dropout masks, handed to the torch side
dropouts = [k for k, mod in scratch.model.named_modules() if type(mod).__name__ == "Dropout"]


def step(x, y):
    scratch.step(x, y)
    draws = scratch.draws()
    for k in dropouts:
        draws[k]


with threadpool_limits(1):
    for x, y in batches[:5]:
        step(x, y)
    t0 = time.process_time()
    for x, y in batches[5:]:
        step(x, y)
    print((time.process_time() - t0) / steps * 1e3)
"""


def export(rev: str, into: str) -> str:
    """The tree of ``rev`` in a fresh folder under ``into`` (the working tree for ``rev`` None)."""
    if rev is None:
        return ROOT
    folder = os.path.join(into, rev.replace("/", "_"))
    os.makedirs(folder)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "--", "nnparity", "scratch", "reference"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def ms_per_step(tree: str, name: str, dtype: str, steps: int) -> float:
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD, name, dtype, str(steps), os.path.join(ROOT, "data", "mnist")],
                         cwd=tree, env=env, check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new", nargs="?")
    ap.add_argument("--nets", default="cnn18k:float32,mlp1000:float32,mlp1000:float64")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    cases = [tuple(c.split(":")) for c in args.nets.split(",")]
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"old": export(args.old, tmp), "new": export(args.new, tmp)}
        labels = {"old": args.old, "new": args.new or "working tree"}
        rows = []
        for name, dtype in cases:
            best = {}
            for r in range(args.rounds):
                for side in ("old", "new"):
                    ms = ms_per_step(trees[side], name, dtype, args.steps)
                    best[side] = min(best.get(side, ms), ms)
                    print(f"  {name} {dtype} round {r + 1} {labels[side]}: {ms:.3f} ms/step", flush=True)
            rows.append((name, dtype, best["old"], best["new"]))
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print(f"\n| network | dtype | {labels['old']} ms/step | {labels['new']} ms/step | new / old |")
    print("|---|---|---|---|---|")
    for name, dtype, old, new in rows:
        print(f"| {name} | {dtype} | {old:.3f} | {new:.3f} | {new / old:.3f} |")


if __name__ == "__main__":
    main()
