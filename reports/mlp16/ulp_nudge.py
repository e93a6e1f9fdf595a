"""Is the late drift between scratch and torch in mlp16's documented run a numerics
defect, or the training dynamics? Output: ulp_nudge.txt.

Trains two scratch models and two torch models from the documented run's weights on
its batches (seed 0, float64), the second of each pair with ONE weight (fc1.weight[0, 300])
moved by one unit in the last place, and prints every 5 epochs the largest weight
difference within each pair. If a 1-ulp nudge grows like scratch-vs-torch does
(report.md, drift.png), the growth is the dynamics amplifying rounding, whatever
produced it.

    PYTHONPATH=$PWD nice -n 10 python reports/mlp16/ulp_nudge.py > reports/mlp16/ulp_nudge.txt
"""

import numpy as np
import torch

from nnparity.core.data import load_mnist
from nnparity.training.networks import get, make_sides, prepare, training_batches


def max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a)


def main(epochs: int = 60):
    net = get("mlp16")
    r = net.recipe
    ds = prepare(net, r, load_mnist(), "float64", 0)
    s1, t1 = make_sides(net, r, "float64", 0)
    s2, t2 = make_sides(net, r, "float64", 0)
    w = s2.model.fc1.weight.data
    w[0, 300] = np.nextafter(w[0, 300], 1.0)
    with torch.no_grad():
        t2.model.fc1.weight[0, 300] = float(w[0, 300])
    for epoch in range(1, epochs + 1):
        for x, y in training_batches(ds, r, 0, epoch):
            for side in (s1, s2, t1, t2):
                side.step(x, y)
        if epoch % 5 == 0:
            ds_ = max_diff(s1.model.state_dict(), s2.model.state_dict())
            dt_ = max_diff({k: v.numpy() for k, v in t1.model.state_dict().items()},
                           {k: v.numpy() for k, v in t2.model.state_dict().items()})
            print(f"epoch {epoch}: scratch vs scratch+1ulp {ds_:.2e}   torch vs torch+1ulp {dt_:.2e}", flush=True)


if __name__ == "__main__":
    main()
