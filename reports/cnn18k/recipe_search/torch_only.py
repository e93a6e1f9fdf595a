"""How the undocumented parts of the cnn18k recipe were chosen: the PyTorch side alone.

Trains the reference model (torch's own ``nn.Dropout`` in place of the masked one) from the
scratch side's initial weights on the project's batches, float32, 20 epochs, and prints the
test accuracy after every epoch, then one ``RESULT`` JSON line. Run from the checkout:

    PYTHONPATH=$PWD python reports/cnn18k/recipe_search/torch_only.py SEED SCHEDULE BATCH [WEIGHT_DECAY [MOMENTUM]]

SCHEDULE is ``-`` (constant lr 0.01) or ``EPOCH:LR[,EPOCH:LR...]`` (e.g. ``11:0.001``). The
logs in this folder were produced with ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` and
``nice -n 10`` on the shared 2-core machine (the per-epoch seconds are not benchmarks).
"""
import json
import sys
import time

import numpy as np
import torch
from torch import nn

from nnparity.training import networks
from nnparity.core.data import load_mnist
from reference import bridge

seed, sched = int(sys.argv[1]), sys.argv[2]
bs = int(sys.argv[3]) if len(sys.argv) > 3 else 64
wd = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
mom = float(sys.argv[5]) if len(sys.argv) > 5 else 0.9
schedule = () if sched == "-" else tuple((int(a), float(b)) for a, b in (p.split(":") for p in sched.split(",")))
net = networks.get("cnn18k")
r = net.recipe.replace(lr_schedule=schedule, batch_size=bs, momentum=mom)
ds = networks.prepare(net, r, load_mnist(), "float32", seed)
tm = bridge.mirror(net.scratch.build(r, networks.stream(seed, "init"), np.float32), net.reference.build(r))
for b in range(1, 5):
    setattr(tm, f"drop{b}", nn.Dropout(0.01))
torch.manual_seed(seed)
opt = torch.optim.SGD(tm.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=wd)
lossf = nn.NLLLoss()
xt_test, yt_test = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
hist = []
for epoch in range(1, r.epochs + 1):
    for g in opt.param_groups:
        g["lr"] = r.lr_at(epoch)
    tm.train()
    t0, tl, tc = time.time(), 0.0, 0
    for x, y in networks.training_batches(ds, r, seed, epoch):
        opt.zero_grad()
        out = tm(torch.from_numpy(x))
        loss = lossf(out, torch.from_numpy(y))
        loss.backward()
        opt.step()
        tl += loss.item() * len(y)
        tc += int((out.argmax(1) == torch.from_numpy(y)).sum())
    tm.eval()
    with torch.no_grad():
        acc = sum(int((tm(xt_test[i:i + 1000]).argmax(1) == yt_test[i:i + 1000]).sum())
                  for i in range(0, len(yt_test), 1000)) / len(yt_test) * 100
    hist.append(acc)
    print(f"seed {seed} sched {sched} bs {bs} wd {wd} mom {mom} epoch {epoch} lr {r.lr_at(epoch)} "
          f"train loss {tl / len(ds.y_train):.4f} train acc {100 * tc / len(ds.y_train):.2f} "
          f"test acc {acc:.2f} ({time.time() - t0:.0f}s)", flush=True)
print("RESULT", json.dumps({"seed": seed, "sched": sched, "bs": bs, "wd": wd, "mom": mom, "accs": hist,
                            "best": max(hist), "final": hist[-1]}))
