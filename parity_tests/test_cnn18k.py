"""cnn18k: 18,800 parameters named as in torch; the registry's 50-step parity run in float64
and float32 (``test_registry.py``: the loss, every activation and gradient, every updated
parameter, the momentum buffers and BatchNorm's running statistics after every step) seen
with dropout active, then eval-mode log-probabilities on held-out images. And proof that
the check sees the classic CNN traps (biased running variance, a mask not handed over, a
wrong argmax)."""

import numpy as np
import pytest
import torch

from nnparity.training import networks
from nnparity.training.networks import get, make_sides
from nnparity.core.parity import check_steps, compare, tolerance_for
from nnparity.training.sides import ScratchSide
from nnparity.training.train import Training
from reference import cnn18k as ref_cnn18k
from scratch.nets import cnn18k
from scratch.norm import BatchNorm2d
from scratch.pool import MaxPool2d

NET = get("cnn18k")
# The injected-slip tests take one or two steps: a seeded subset of 20 batches keeps them fast
# (real MNIST batches all the same; the documented run uses all 60,000).
RECIPE = cnn18k.RECIPE.replace(train_size=20 * cnn18k.RECIPE.batch_size, test_size=500)

EXPECTED_SHAPES = {
    "conv1.weight": (10, 1, 3, 3), "conv1.bias": (10,), "bn1.weight": (10,), "bn1.bias": (10,),
    "conv2.weight": (20, 10, 3, 3), "conv2.bias": (20,), "bn2.weight": (20,), "bn2.bias": (20,),
    "conv3.weight": (30, 20, 3, 3), "conv3.bias": (30,), "bn3.weight": (30,), "bn3.bias": (30,),
    "conv4.weight": (40, 30, 3, 3), "conv4.bias": (40,), "bn4.weight": (40,), "bn4.bias": (40,),
    "fc.weight": (10, 40), "fc.bias": (10,),
}


@pytest.fixture(scope="module")
def data(mnist):
    return {dt: networks.prepare(NET, RECIPE, mnist, dt, seed=0) for dt in ("float64", "float32")}


def test_recipe_is_the_documented_one():
    r = cnn18k.RECIPE
    assert (r.lr, r.epochs, r.loss, r.reduction) == (0.01, 20, "nll", "mean")
    assert (r.batch_size, r.momentum, r.dtype, r.lr_schedule) == (16, 0.9, "float32", ((11, 0.001),))
    assert [r.lr_at(e) for e in (1, 10, 11, 20)] == [0.01, 0.01, 0.001, 0.001]
    assert NET.flat is False


def test_exactly_18800_trainable_parameters_named_as_in_torch():
    scratch, ref = make_sides(NET, cnn18k.RECIPE, "float32", seed=0)
    s = {k: p.shape for k, p in scratch.model.named_parameters()}
    t = {k: tuple(p.shape) for k, p in ref.model.named_parameters() if p.requires_grad}
    assert s == t == EXPECTED_SHAPES
    assert scratch.model.num_parameters() == 18_800
    assert sum(p.numel() for p in ref.model.parameters() if p.requires_grad) == 18_800
    # buffers too, in torch's state_dict order, num_batches_tracked as int64 scalars
    s_state, t_state = scratch.model.state_dict(), ref.model.state_dict()
    assert list(s_state) == list(t_state)
    assert s_state["bn3.num_batches_tracked"].dtype == np.int64 and s_state["bn3.num_batches_tracked"].shape == ()


def test_layer_order_and_feature_map_sizes():
    model = cnn18k.build(dtype=np.float64)
    model.record = True
    model.forward(np.zeros((2, 1, 28, 28)))
    sizes = {k: v.shape[1:] for k, v in model.outputs.items()}
    assert list(sizes)[:5] == ["conv1", "bn1", "relu1", "drop1", "conv2"]
    assert sizes["conv1"] == (10, 26, 26) and sizes["conv2"] == (20, 24, 24) and sizes["pool2"] == (20, 12, 12)
    assert sizes["conv3"] == (30, 10, 10) and sizes["pool3"] == (30, 5, 5) and sizes["conv4"] == (40, 3, 3)
    assert sizes["gap"] == (40, 1, 1) and sizes["flatten"] == (40,) and sizes["log_softmax"] == (10,)
    assert [n for n in model.outputs if n.startswith("pool")] == ["pool2", "pool3"]
    assert [n for n in model.outputs if n.startswith("drop")] == ["drop1", "drop2", "drop3", "drop4"]
    ref = ref_cnn18k.build()
    assert [n for n, _ in ref.named_children()] == list(model.outputs)


def test_init_is_torchs_default():
    state = cnn18k.build(rng=np.random.default_rng(0), dtype=np.float64).state_dict()
    for b, fan_in in ((1, 9), (2, 90), (3, 180), (4, 270)):
        w, bias = state[f"conv{b}.weight"], state[f"conv{b}.bias"]
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound and np.abs(bias).max() <= bound
        np.testing.assert_array_equal(state[f"bn{b}.weight"], 1)
        np.testing.assert_array_equal(state[f"bn{b}.bias"], 0)
    assert np.abs(state["fc.weight"]).max() <= 1 / np.sqrt(40)


def _run(data, dtype, steps, sides=None):
    scratch, ref = sides or make_sides(NET, RECIPE, dtype, seed=0)
    masks = []

    def keep_masks(i, trace):
        masks.append({k: v.copy() for k, v in scratch.draws().items() if k.startswith("drop")})

    trace = check_steps(scratch, ref, networks.first_batches(data[dtype], RECIPE, 0, steps), net="cnn18k",
                        dtype=dtype, allowed_zero=NET.allowed_zero, on_step=keep_masks)
    return trace, scratch, ref, masks


@pytest.mark.slow
def test_the_step_parity_run_drops_out_and_eval_mode_uses_the_running_statistics(data, dtype, step_parity):
    """The registry's step parity run (``test_registry.py``: 50 steps, every tensor named there
    compared, momentum buffers and BatchNorm's running statistics included), looked at for what
    is cnn18k's: dropout active, zero-by-construction conv-bias gradients, then eval mode."""
    trace, kept = step_parity("cnn18k", dtype)
    scratch, ref = kept.sides
    masks = [{k: v for k, v in d.items() if k.startswith("drop")} for d in kept.draws]
    assert trace.ok, trace.message()
    assert len(trace.steps) == step_parity.steps
    # dropout was active: every step dropped elements in every block, and the masks changed
    assert len(masks) == step_parity.steps and all(set(m) == {"drop1", "drop2", "drop3", "drop4"} for m in masks)
    assert all((~m["drop1"]).sum() > 0 and (~m["drop2"]).sum() > 0 for m in masks)
    assert (masks[0]["drop1"] != masks[1]["drop1"]).any()
    # conv biases before BatchNorm: zero gradient by construction (and declared); nothing else is
    for c in trace.steps[0]:
        if c.name.startswith("grad/"):
            assert c.degenerate == (c.name.split("/")[1] in NET.allowed_zero), c.name
    nbt = [c for c in trace.steps[-1] if c.name == "buffer/bn2.num_batches_tracked"][0]
    assert nbt.scratch == nbt.reference == step_parity.steps

    # eval mode on held-out images: running statistics, no dropout
    x = data[dtype].x_test[:256]
    scratch.model.eval()
    ref.model.eval()
    try:
        with torch.no_grad():
            expected = ref.model(torch.from_numpy(x)).numpy()
        c = compare("out/log_softmax", scratch.model.forward(x), expected, tolerance_for(dtype))
        assert c.passed, c.describe("cnn18k", dtype)
        # the running statistics (not the batch's) were used: a batch-statistics forward differs
        scratch.model.train()
        assert np.abs(scratch.model.forward(x) - expected).max() > 100 * c.max_abs
    finally:
        scratch.model.train()
        ref.model.train()


def test_biased_running_variance_is_caught(data):
    """The classic BatchNorm slip: running_var updated with the biased batch variance."""
    scratch, ref = make_sides(NET, RECIPE, "float64", seed=0)
    for _, mod in scratch.model.named_modules():
        if isinstance(mod, BatchNorm2d):
            def biased(x, _mod=mod, _fwd=mod.forward):
                y = _fwd(x)
                m = x.shape[0] * x.shape[2] * x.shape[3]
                var = (_mod.xc ** 2).mean(axis=(0, 2, 3))
                _mod.running_var[...] -= _mod.momentum * var / (m - 1)  # unbiased -> biased
                return y
            mod.forward = biased
    trace, *_ = _run(data, "float64", steps=2, sides=(scratch, ref))
    first = trace.first_failure
    assert (first.step, first.name) == (1, "buffer/bn1.running_var")


def test_dropout_mask_not_handed_over_is_caught(data, monkeypatch):
    """If the reference does not get the scratch side's masks, parity fails at the first dropout."""
    real = ScratchSide.draws
    monkeypatch.setattr(ScratchSide, "draws",
                        lambda self: {k: (~v if k == "drop1" else v) for k, v in real(self).items()})
    first = _run(data, "float64", steps=1)[0].first_failure
    assert (first.step, first.name) == (1, "out/drop1")


def test_tie_alignment_does_not_hide_a_wrong_argmax(data, monkeypatch):
    """The reference adopts the scratch choice only among ties: a pool routing its gradient to a
    non-maximal element is still caught at the first upstream gradient it reaches."""
    real = MaxPool2d.backward

    def to_the_wrong_element(self, dy):
        self.argmax = (self.argmax + 1) % 4  # the next element of the window, a non-maximum
        return real(self, dy)

    monkeypatch.setattr(MaxPool2d, "backward", to_the_wrong_element)
    first = _run(data, "float64", steps=1)[0].first_failure
    assert (first.step, first.name, first.quantity) == (1, "dout/drop3", "upstream gradient")


def _deliberate_tie(scratch, ref, window=(0, 0, 0, 0)):
    """Build a tie that the two sides provably break differently, on every machine.

    In the first window of pool2's input (sample 0, channel 0, rows 0-1, columns 0-1) the
    two top-row elements are set to the same value ``m`` above the window's maximum on the
    scratch side, and to ``m`` and the next float64 above ``m`` on the torch side: a tie
    one ulp apart, as two implementations' rounding makes it. Scratch gives the gradient to
    the first (row-major) of its equal maxima, torch to its larger element: different
    elements unless the reference adopts the scratch choice. Forward values are substituted
    (scratch) or added straight through (torch: ``x - x.detach() + target``), so the
    gradient reaching ``drop2``'s output is the pool's own routing on both sides."""
    n, c, r, q = window
    s_pool, real_forward = scratch.model.pool2, scratch.model.pool2.forward

    def scratch_forward(x):
        x = np.array(x)
        m = float(x[n, c, r:r + 2, q:q + 2].max()) + 1.0
        x[n, c, r, q] = x[n, c, r, q + 1] = m
        return real_forward(x)

    def torch_pre_hook(_mod, args):
        (x,) = args
        target = x.detach().clone()
        m = float(target[n, c, r:r + 2, q:q + 2].max()) + 1.0
        target[n, c, r, q], target[n, c, r, q + 1] = m, float(np.nextafter(m, np.inf))
        return (x - x.detach() + target,)

    s_pool.forward = scratch_forward
    return ref.model.pool2.register_forward_pre_hook(torch_pre_hook)


class _Records:
    """An observer for ``check_steps`` that keeps both sides' step records."""

    def __init__(self):
        self.steps = []

    def before_step(self, *args):
        pass

    def after_step(self, i, x, y, s, t, trace):
        self.steps.append((s.record, t.record))


@pytest.mark.parametrize("aligned", [False, True], ids=["without-alignment", "with-alignment"])
def test_a_deliberate_tie_fails_without_tie_alignment_and_passes_with_it(data, monkeypatch, aligned):
    """Why the reference aligns ties: two equal maxima that the sides round one ulp apart send
    the gradient to different elements of the window. The tie here is constructed (see
    ``_deliberate_tie``), so the outcome is the same on every machine. (Whether MNIST's blank
    borders produce such ties by themselves depends on the BLAS kernel and summation order.
    Measured over these 20 steps without alignment on a 2-core AMD EPYC (AVX-512; NumPy on
    OpenBLAS 0.3.31 SkylakeX, torch 2.14.1 on MKL): float64 fails at step 1 (dout/drop3,
    margin 3.3e6) with 1 or 2 threads and OpenBLAS forced to Nehalem, Sandybridge or Haswell;
    float32 passes all 20 steps there, but fails at step 1 (margin 5.2) with torch's kernels at
    AVX2; on an AVX-512 Xeon float64 passed over 20 steps. That is a measured note, not
    something a test can assert.)"""
    from nnparity.core import parity

    if not aligned:
        monkeypatch.setattr(parity, "_tie_modules", lambda torch_side: [])  # torch keeps its own choices
    scratch, ref = make_sides(NET, RECIPE, "float64", seed=0)
    hook = _deliberate_tie(scratch, ref)
    records = _Records()
    try:
        trace = check_steps(scratch, ref, networks.first_batches(data["float64"], RECIPE, 0, 1), net="cnn18k",
                            dtype="float64", allowed_zero=NET.allowed_zero, observer=records)
    finally:
        hook.remove()
    (s, t), = records.steps
    tol = tolerance_for("float64")
    g = s["dout/drop2"][0, 0, 0, :2]  # the gradient reaching the two tied elements
    assert g[0] != 0 and g[1] == 0, "scratch routes the window's gradient to the first of its equal maxima"
    if aligned:
        assert ref.model.pool2.adopted >= 1  # the constructed window took the scratch choice
        np.testing.assert_allclose(t["dout/drop2"][0, 0, 0, :2], g, rtol=tol.rtol, atol=tol.atol)
        assert trace.ok, trace.message()
    else:
        # torch sends it to its larger element, one ulp above: the same value, one element over
        np.testing.assert_allclose(t["dout/drop2"][0, 0, 0, :2], g[::-1], rtol=tol.rtol, atol=tol.atol)
        failed = {c.name: c for c in trace.failures}
        assert "dout/drop2" in failed and failed["dout/drop2"].quantity == "upstream gradient"
        tie = failed["dout/drop2"]
        # at least the whole gradient of the tied element, not rounding (its torch value is ~0). Not a
        # margin floor: g[0] is 8.2e-6 on an AVX-512 Xeon, margin 8.2e4; the 1e6 this asserted held on the
        # AMD EPYC, where MNIST's own ties fail at step 1 as well (see above), not here.
        assert abs(g[0]) > 10 * tol.atol and tie.max_abs >= abs(g[0]) - tol.atol


def test_lr_schedule_is_honoured_by_both_sides(mnist):
    recipe = cnn18k.RECIPE.replace(train_size=128, test_size=100, epochs=2, lr_schedule=((2, 0.004),))
    ds = networks.prepare(NET, recipe, mnist, "float32", seed=0)
    training = Training(NET, recipe, ds, "float32", seed=0)
    rows = [training.run_epoch(e, progress=False) for e in (1, 2)]
    assert [r["lr"] for r in rows] == [0.01, 0.004]
    assert training.scratch.optimizer.lr == 0.004
    assert [g["lr"] for g in training.ref.optimizer.param_groups] == [0.004]


def test_lr_schedule_is_validated():
    with pytest.raises(ValueError, match="ascending"):
        cnn18k.RECIPE.replace(lr_schedule=((5, 0.001), (3, 0.01)))
    with pytest.raises(ValueError, match="must be > 0"):
        cnn18k.RECIPE.replace(lr_schedule=((5, 0.0),))


def test_bench_runs_cnn18k_alone_and_alternating_with_dropout_masks():
    """The bench's epoch of cnn18k: each side alone drawing its own dropout masks (the torch
    side through ``MaskedDropout.draw_own_mask``), and the alternating mode handing each
    batch's masks across, the short last batch included."""
    from nnparity.reporting.bench import bench_network

    recipe = cnn18k.RECIPE.replace(train_size=100, test_size=100)  # 6 batches of 16 + a last batch of 4
    r = bench_network("cnn18k", repeats=1, recipe=recipe, gemm_n=128)
    assert r["samples"] == 100 and r["window_steps"] == r["steps_per_epoch"] == 7
    assert all(len(v) == 1 and v[0] > 0 for v in r["rounds"].values())
    assert r["gflop_per_step"] > 0 and r["mode_sides"]["alternating"]["torch"] > 0
