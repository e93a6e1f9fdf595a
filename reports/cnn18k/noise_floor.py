"""The float32 noise floor of cnn18k step parity, and why the reference aligns ties.

Runs four models on the same first STEPS training batches with the same dropout masks,
all from the same float32 initial weights: scratch float32, torch float32, scratch
float64, torch float64. The torch models keep torch's own max-pool and ReLU decisions
(no tie alignment: that only happens inside ``nnparity.core.parity.check_steps``). Prints the
per-step worst margins, at the float32 tolerance, of

    scratch32 vs torch32   what step parity would see without tie alignment
    torch32   vs torch64   torch's own float32 noise floor on the same steps
    scratch64 vs torch64   (at the float64 tolerance) the same, in float64

    PYTHONPATH=$PWD python reports/cnn18k/noise_floor.py [STEPS]

The first lines name the machine: which max-pool windows hold values that the two
libraries round apart (and so how many steps fail without tie alignment) depends on
the CPU, the BLAS kernel, the thread count and the torch build. On one AVX-512 Xeon,
float64 parity without alignment passed 20 steps. A test asserts only what holds
everywhere: ``parity_tests/test_cnn18k.py`` builds its tie on purpose.
"""
import platform
import sys
from collections import OrderedDict

import numpy as np

from nnparity.training import networks
from nnparity.core.data import load_mnist
from nnparity.core.parity import Trace, compare_records, tolerance_for
from reference import bridge

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20


def machine() -> str:
    import torch
    from threadpoolctl import threadpool_info

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or "unknown CPU") if sys.platform.startswith("linux") else platform.processor()
    blas = ", ".join(f"{i['internal_api']} {i.get('version')} kernel {i.get('architecture')} "
                     f"{i['num_threads']} threads" for i in threadpool_info() if i["user_api"] == "blas")
    return (f"machine: {platform.machine()} {cpu}; NumPy {np.__version__} ({blas}); torch {torch.__version__} "
            f"({torch.get_num_threads()} intra-op threads)")


print(machine())
print("(which windows round apart depends on the machine: see this script's docstring)")
net = networks.get("cnn18k")
recipe = net.recipe.replace(train_size=steps * net.recipe.batch_size)
ds = networks.prepare(net, recipe, load_mnist(), "float32", 0)
s32, t32 = networks.make_sides(net, recipe, "float32", 0)
s64, t64 = networks.make_sides(net, recipe, "float64", 0)
s64.model.load_state_dict(OrderedDict((k, v.astype(np.float64) if v.dtype == np.float32 else v)
                                      for k, v in s32.model.state_dict().items()))
bridge.copy_to_torch(s64.model, t64.model)
tol32, tol64 = tolerance_for("float32"), tolerance_for("float64")
pairs = {"scratch32 vs torch32": Trace("cnn18k", "float32", tol32),
         "torch32 vs torch64": Trace("cnn18k", "float32", tol32),
         "scratch64 vs torch64": Trace("cnn18k", "float64", tol64)}


def as32(rec):
    return OrderedDict((k, v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in rec.items())


for i, (x, y) in enumerate(networks.first_batches(ds, recipe, 0, steps), 1):
    a = s32.step(x, y, record=True)
    masks = s32.draws()
    b = t32.step(x, y, record=True, draws=masks)
    c = s64.step(x.astype(np.float64), y, record=True)  # same seeds: the same dropout masks
    assert all((s64.draws()[k] == masks[k]).all() for k in masks if k.startswith("drop"))
    d = t64.step(x.astype(np.float64), y, record=True, draws=s64.draws())
    pairs["scratch32 vs torch32"].steps.append(compare_records(a.record, b.record, tol32, i, net.allowed_zero))
    pairs["torch32 vs torch64"].steps.append(compare_records(b.record, as32(d.record), tol32, i, net.allowed_zero))
    pairs["scratch64 vs torch64"].steps.append(compare_records(c.record, d.record, tol64, i, net.allowed_zero))
for name, trace in pairs.items():
    print(f"===== {name} (no tie alignment)")
    print(trace.table(every=max(1, steps // 10)))
    print(trace.message().splitlines()[0])
