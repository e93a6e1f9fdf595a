"""The cnn18k layers against torch autograd: Conv2d (kernel, stride, padding, bias
variants), BatchNorm2d (training and eval, running statistics, num_batches_tracked),
MaxPool2d (ties on purpose), Dropout (masks handed to the reference), global average
pooling, log-softmax and NLL. Random inputs and random non-uniform upstream
gradients, float64 and float32 (the ``dtype`` fixture)."""

import numpy as np
import pytest
import torch

from nnparity.diagnosis.layercheck import check_layer
from nnparity.core.parity import ParityError, assert_close
from reference.layers import AlignedMaxPool2d, AlignedReLU, MaskedDropout
from scratch.conv import Conv2d, channelwise
from scratch.dropout import Dropout
from scratch.losses import LogSoftmax, NLLLoss
from scratch.norm import BatchNorm2d
from scratch.pool import GlobalAvgPool2d, MaxPool2d


def _randomise(layer, seed=0):
    rng = np.random.default_rng(seed)
    for _, p in layer.named_parameters():
        p.data[...] = rng.standard_normal(p.shape)
    return layer


# --- Conv2d ----------------------------------------------------------------------------
CONV_CASES = [  # (C_in, C_out, kernel, stride, padding, bias, input H x W): beyond the battery's sweep
    (10, 20, 3, 1, 0, True, (12, 9)),     # non-square image, many channels
    (2, 3, 3, (2, 1), (1, 2), True, (8, 7)),  # different stride and padding per axis
    (4, 6, 5, 1, 2, False, (6, 6)),       # 'same' padding, no bias
    (2, 2, 1, 1, 0, True, (5, 4)),        # 1x1 kernel
    (3, 2, 4, 3, 1, True, (10, 13)),      # kernel larger than stride, padding 1
]


@pytest.mark.parametrize("cin,cout,k,stride,pad,bias,hw", CONV_CASES)
def test_conv2d(dtype, cin, cout, k, stride, pad, bias, hw):
    layer = _randomise(Conv2d(cin, cout, k, stride=stride, padding=pad, bias=bias, dtype=dtype))
    module = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=bias)
    comps = check_layer(layer, module, (3, cin, *hw), dtype=dtype)
    assert [c.name for c in comps] == ["out", "din", "grad/weight"] + (["grad/bias"] if bias else [])


def test_conv2d_in_eval_mode_rebuilds_its_columns_for_backward(dtype):
    layer = _randomise(Conv2d(3, 4, 3, stride=2, padding=1, dtype=dtype))
    check_layer(layer, torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 8), dtype=dtype, train=False)
    assert layer.cols is None  # evaluation keeps the input, not the kH*kW times larger columns


def test_conv2d_is_cross_correlation_not_convolution():
    """A kernel with a single 1 at the top-left picks x[i, j], not x[i+2, j+2] (no flip)."""
    layer = Conv2d(1, 1, 3, bias=False)
    layer.weight.data[0, 0, 0, 0] = 1
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    np.testing.assert_array_equal(layer.forward(x)[0, 0], x[0, 0, :3, :3])


def test_conv2d_accepts_channels_last_memory(dtype):
    """Outputs are channels-last views; a plain NCHW array and a channels-last one give the same."""
    layer = _randomise(Conv2d(4, 3, 3, dtype=dtype))
    x = np.random.default_rng(1).standard_normal((2, 4, 6, 5)).astype(dtype)
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(layer.forward(x), layer.forward(x_cl))
    check_layer(layer, torch.nn.Conv2d(4, 3, 3), x=x_cl, dtype=dtype)


@pytest.mark.parametrize("layout", ["channels-last", "nchw", "strided"])
def test_channelwise_is_the_broadcast_to_the_bit(dtype, layout):
    # the row-at-a-time path of channels-last memory must give the very numbers, and the very layout,
    # of the (1, C, 1, 1) broadcast; other layouts and a scalar take the broadcast itself
    rng = np.random.default_rng(0)
    mem = rng.standard_normal((3, 5, 7, 4)).astype(dtype)  # (N, H, W, C)
    x = {"channels-last": mem.transpose(0, 3, 1, 2), "nchw": np.ascontiguousarray(mem.transpose(0, 3, 1, 2)),
         "strided": mem.transpose(0, 3, 1, 2)[:, :, ::2]}[layout]
    v = rng.standard_normal(4).astype(dtype)
    for ufunc in (np.add, np.subtract, np.multiply):
        want = ufunc(x, v.reshape(1, -1, 1, 1))
        got = channelwise(ufunc, x, v)
        assert got.tobytes() == want.tobytes() and got.strides == want.strides
        inplace = x.copy(order="K")
        assert channelwise(ufunc, inplace, v.reshape(1, -1, 1, 1), out=inplace) is inplace
        assert inplace.tobytes() == want.tobytes()
    half = np.dtype(dtype).type(0.5)
    assert channelwise(np.subtract, x, half).tobytes() == (x - half).tobytes()
    assert channelwise(np.subtract, x, 0.5).dtype == (x - 0.5).dtype == dtype  # a Python scalar stays weak
    empty = x[:0]
    assert channelwise(np.add, empty, v).shape == empty.shape  # an empty batch


def test_relu_backward_across_layouts_is_the_plain_product(dtype):
    # cnn18k's ReLU keeps a channels-last mask and gets a C-ordered gradient back: the mask is first
    # copied into the gradient's layout, which must change neither a value nor the result's layout
    from scratch.layers import ReLU

    rng = np.random.default_rng(0)
    relu = ReLU()
    relu.forward(rng.standard_normal((3, 5, 7, 4)).astype(dtype).transpose(0, 3, 1, 2))  # channels-last
    for dy in (rng.standard_normal((3, 4, 5, 7)).astype(dtype),  # C-ordered
               rng.standard_normal((3, 5, 7, 4)).astype(dtype).transpose(0, 3, 1, 2)):  # like the mask
        want = dy * relu.mask
        got = relu.backward(dy)
        assert got.tobytes() == want.tobytes() and got.strides == want.strides

    class Leaky(ReLU):  # a subclass whose slopes are not bools keeps working across layouts
        def _slope(self):
            return np.where(self.mask, 1.0, 0.01).astype(dtype)

    leaky = Leaky()
    leaky.forward(rng.standard_normal((3, 5, 7, 4)).astype(dtype).transpose(0, 3, 1, 2))
    dy = rng.standard_normal((3, 4, 5, 7)).astype(dtype)
    assert leaky.backward(dy).tobytes() == (dy * leaky._slope()).tobytes()


def test_conv2d_first_layer_skips_input_gradient(dtype):
    layer = _randomise(Conv2d(2, 3, 3, dtype=dtype))
    layer.needs_input_grad = False
    x = np.ones((2, 2, 5, 5), dtype)
    y = layer.forward(x)
    assert layer.backward(np.ones_like(y)) is None
    assert np.abs(layer.weight.grad).sum() > 0
    assert layer.flops_per_sample() == 2 * (3 * 2 * 9 * 3 * 3) * 2


def test_conv2d_flops_need_a_forward_pass():
    layer = Conv2d(1, 10, 3)
    with pytest.raises(RuntimeError, match="forward"):
        layer.flops_per_sample()
    layer.forward(np.zeros((1, 1, 28, 28)))
    assert layer.flops_per_sample() == 2 * 10 * 9 * 26 * 26 * 3


@pytest.mark.parametrize("shape,match", [((4, 28, 28), r"expected images of shape \(N, C, H, W\)"),
                                         ((4, 3, 28, 28), "expected 1 input channels, got 3"),
                                         ((4, 1, 2, 2), "smaller than the kernel")])
def test_conv2d_bad_input_is_named(shape, match):
    with pytest.raises(ValueError, match=match):
        Conv2d(1, 10, 3).forward(np.zeros(shape))


def test_conv2d_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        Conv2d(1, 2, (3, 3, 3))
    with pytest.raises(ValueError, match="stride >= 1"):
        Conv2d(1, 2, 3, stride=0)


# --- BatchNorm2d -------------------------------------------------------------------------
def _bn_pair(dtype, c=5, seed=0):
    layer = _randomise(BatchNorm2d(c, dtype=dtype), seed)
    rng = np.random.default_rng(seed + 1)
    layer.running_mean[...] = rng.standard_normal(c)
    layer.running_var[...] = rng.uniform(0.5, 2.0, c)
    layer.num_batches_tracked[...] = 7
    return layer, torch.nn.BatchNorm2d(c)


def _assert_buffers_match(layer, module, step=None):
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(layer, name), getattr(module, name).numpy()
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if name == "num_batches_tracked":
            assert int(a) == int(b), (int(a), int(b))
        else:
            assert_close(f"buffer/{name}", a, b, step=step)
    assert layer.num_batches_tracked.dtype == np.int64 and layer.num_batches_tracked.shape == ()


def test_batchnorm_training(dtype):
    layer, module = _bn_pair(dtype)
    x = np.random.default_rng(2).standard_normal((4, 5, 6, 7)) * 3 + 1.5  # mean and scale far from 0, 1
    comps = check_layer(layer, module, x=x, dtype=dtype, train=True)
    assert [c.name for c in comps] == ["out", "din", "grad/weight", "grad/bias", "buffer/running_mean",
                                       "buffer/running_var", "buffer/num_batches_tracked"]
    _assert_buffers_match(layer, module)
    assert int(layer.num_batches_tracked) == 8


def test_batchnorm_running_statistics_over_steps(dtype):
    """Momentum 0.1, UNbiased variance in running_var, num_batches_tracked counted: three batches."""
    layer, module = _bn_pair(dtype, c=3, seed=4)
    from reference import bridge
    bridge.mirror(layer, module)
    rng = np.random.default_rng(5)
    for step in range(1, 4):
        x = (rng.standard_normal((2, 3, 4, 4)) * (step + 1) + step).astype(dtype)  # M = 32 per channel
        layer.forward(x)
        module(torch.from_numpy(x))
        _assert_buffers_match(layer, module, step)
    # the unbiased variance, not the biased one, went into running_var: the two differ by M/(M-1) ~ 3%
    m = 32
    biased = x.var(axis=(0, 2, 3))
    expected = 0.9 * module.running_var.numpy()  # next update, computed from torch's buffer
    layer.forward(x)
    np.testing.assert_allclose(layer.running_var, expected + 0.1 * biased * m / (m - 1), rtol=1e-5)


def test_batchnorm_eval_uses_running_statistics(dtype):
    layer, module = _bn_pair(dtype, seed=7)
    x = np.random.default_rng(8).standard_normal((3, 5, 4, 6)) * 2 - 1
    check_layer(layer, module, x=x, dtype=dtype, train=False)
    assert int(layer.num_batches_tracked) == 7  # eval updates nothing
    _assert_buffers_match(layer, module)


def test_batchnorm_needs_two_values_per_channel_in_training():
    layer = BatchNorm2d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer.forward(np.zeros((1, 3, 1, 1)))
    layer.eval()
    assert layer.forward(np.zeros((1, 3, 1, 1))).shape == (1, 3, 1, 1)


def test_batchnorm_state_dict_matches_torch():
    s = BatchNorm2d(4, dtype=np.float32).state_dict()
    t = torch.nn.BatchNorm2d(4).state_dict()
    assert list(s) == list(t)
    for k in s:
        np.testing.assert_array_equal(s[k], t[k].numpy())
        assert s[k].dtype == t[k].numpy().dtype


def test_buffers_stay_registered_after_updates():
    layer = BatchNorm2d(2)
    layer.forward(np.random.default_rng(0).standard_normal((3, 2, 2, 2)))
    assert [k for k, _ in layer.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    assert dict(layer.named_buffers())["running_var"] is layer.running_var


# --- MaxPool2d ---------------------------------------------------------------------------
@pytest.mark.parametrize("k,hw", [(3, (9, 10)), (1, (3, 4))])   # 2 x 2: the battery's (documented and swept)
def test_maxpool(dtype, k, hw):
    check_layer(MaxPool2d(k), torch.nn.MaxPool2d(k), (3, 4, *hw), dtype=dtype)


def test_torch_gives_a_tied_window_gradient_to_its_first_element_row_major(dtype):
    """The convention itself, measured on torch (CPU): ties go to the first element in row-major order."""
    tdt = {"float32": torch.float32, "float64": torch.float64}[dtype]
    for window, expected in (([[1, 1], [1, 1]], 0), ([[0, 2], [2, 2]], 1), ([[0, 1], [3, 3]], 2)):
        x = torch.tensor([[window]], dtype=tdt, requires_grad=True)
        torch.nn.functional.max_pool2d(x, 2).backward(torch.ones(1, 1, 1, 1, dtype=tdt))
        assert x.grad.flatten().tolist() == [float(i == expected) for i in range(4)]
        pool = MaxPool2d(2)
        pool.forward(np.array([[window]], dtype=dtype))
        assert pool.backward(np.ones((1, 1, 1, 1), dtype)).flatten().tolist() == x.grad.flatten().tolist()


def test_maxpool_ties_on_purpose(dtype):
    """Integer-valued inputs: most windows hold two or more equal maxima, zeros (as after a ReLU)
    and ones included; the gradient must land where torch puts it."""
    rng = np.random.default_rng(11)
    for k, values in ((2, 2), (2, 3), (3, 2)):
        x = rng.integers(0, values, (4, 6, 12, 12)).astype(dtype)
        check_layer(MaxPool2d(k), torch.nn.MaxPool2d(k), x=x, dtype=dtype)


def test_maxpool_wrong_tie_rule_is_caught():
    """Giving a tied window's gradient to its LAST maximum instead of the first fails the check."""
    class LastTie(MaxPool2d):
        def forward(self, x):
            y = super().forward(x)
            views = self._windows(x.transpose(0, 2, 3, 1))
            for i, v in enumerate(views):
                self.argmax[v == y.transpose(0, 2, 3, 1)] = i  # the last offset holding the max wins
            return y

    x = np.random.default_rng(12).integers(0, 2, (2, 3, 8, 8)).astype(np.float64)
    with pytest.raises(ParityError, match=r"din \(input gradient\)"):
        check_layer(LastTie(2), torch.nn.MaxPool2d(2), x=x)


def test_maxpool_mask_is_torchs_return_indices(dtype):
    rng = np.random.default_rng(13)
    x = rng.integers(0, 3, (2, 3, 11, 10)).astype(dtype)  # ties included: same rule, same indices
    pool = MaxPool2d(2)
    pool.forward(x)
    _, idx = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    np.testing.assert_array_equal(pool.mask, idx.numpy())
    assert pool.mask.dtype == np.int64


def test_maxpool_nan_propagates_like_torch():
    x = np.array([[[[1.0, np.nan, 5.0, 2.0], [3.0, 2.0, 1.0, 0.0]]]])
    y = MaxPool2d(2).forward(x)
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2).numpy()
    np.testing.assert_array_equal(y, ref)  # NaN == NaN for assert_array_equal


def test_maxpool_refuses_overlapping_windows():
    with pytest.raises(ValueError, match="stride == kernel_size"):
        MaxPool2d(3, stride=2)
    with pytest.raises(ValueError, match="smaller than the 2x2 window"):
        MaxPool2d(2).forward(np.zeros((1, 1, 1, 5)))


def test_aligned_maxpool_is_torchs_maxpool_without_a_tolerance(dtype):
    x = np.random.default_rng(14).integers(0, 2, (2, 3, 6, 6)).astype(dtype)
    pool = AlignedMaxPool2d(2)
    pool.mask = torch.full((2, 3, 3, 3), 7, dtype=torch.int64)  # ignored: tie_tol is None
    check_layer(MaxPool2d(2), pool, x=x, dtype=dtype)
    assert pool.mask is None


def test_aligned_maxpool_adopts_only_ties():
    """Within the tolerance the scratch choice is taken; a clearly smaller element is not."""
    x = torch.tensor([[[[1.0, 1.0 + 1e-12, 0.0, 3.0],
                        [0.5, 0.2, 2.0, 1.0]]]], dtype=torch.float64, requires_grad=True)
    pool = AlignedMaxPool2d(2)
    pool.tie_tol = (1e-10, 1e-9)
    pool.mask = torch.tensor([[[[0, 6]]]])  # window 1: element 0 (a tie with 1); window 2: element 6 (2.0 < 3.0)
    y = pool(x)
    y.backward(torch.tensor([[[[10.0, 20.0]]]], dtype=torch.float64))
    assert pool.adopted == 1
    np.testing.assert_array_equal(x.grad.numpy()[0, 0], [[10, 0, 0, 20], [0, 0, 0, 0]])
    np.testing.assert_array_equal(y.detach().numpy(), [[[[1.0, 3.0]]]])


def test_aligned_relu_adopts_only_inputs_at_zero():
    x = torch.tensor([-1e-12, 1e-12, -0.5, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    relu = AlignedReLU()
    relu.tie_tol = (1e-10, 1e-9)
    relu.mask = torch.tensor([True, False, True, False, True])  # the scratch decisions, two of them wrong
    y = relu(x)
    y.backward(torch.ones(5, dtype=torch.float64))
    assert relu.adopted == 3  # the three inputs within 1e-10 of 0 follow the scratch side
    np.testing.assert_array_equal(x.grad.numpy(), [1, 0, 0, 1, 1])
    relu.mask = torch.tensor([True, False, True, False, True])
    relu.tie_tol = None  # outside step parity: exactly nn.ReLU
    x.grad = None
    relu(x).backward(torch.ones(5, dtype=torch.float64))
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 0, 1, 0])


# --- Dropout -----------------------------------------------------------------------------
class _TorchWithScratchMask(torch.nn.Module):
    """The reference MaskedDropout, fed the scratch layer's mask at call time (as TorchSide does)."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.ref = layer, MaskedDropout(layer.p)

    def forward(self, x):
        if self.layer.mask is not None:
            self.ref.mask = torch.from_numpy(self.layer.mask)
        self.ref.train(self.training)
        return self.ref(x)


@pytest.mark.parametrize("p", [0.01, 0.3, 0.5, 0.9])
def test_dropout_training(dtype, p):
    layer = Dropout(p, np.random.default_rng(15))
    check_layer(layer, _TorchWithScratchMask(layer), (16, 6, 5, 5), dtype=dtype)
    kept = layer.mask.mean()
    assert layer.mask.dtype == bool and layer.mask.shape == (16, 6, 5, 5)
    assert abs(kept - (1 - p)) < 4 * np.sqrt(p * (1 - p) / layer.mask.size) + 1e-9


def test_dropout_scaling_is_inverted():
    layer = Dropout(0.25, np.random.default_rng(16))
    x = np.ones((50, 40))
    y = layer.forward(x)
    assert set(np.unique(y)) == {0.0, 1 / 0.75}
    np.testing.assert_array_equal(layer.backward(np.full_like(x, 2.0)), 2 * y)


def test_dropout_eval_is_identity(dtype):
    layer = Dropout(0.5, np.random.default_rng(17)).eval()
    x = np.random.default_rng(18).standard_normal((4, 5)).astype(dtype)
    assert layer.forward(x) is x and layer.mask is None
    check_layer(layer, _TorchWithScratchMask(layer), x=x, dtype=dtype, train=False)


def test_dropout_extremes():
    x = np.random.default_rng(19).standard_normal((3, 4)) + 5
    assert Dropout(0.0).forward(x) is x
    d = Dropout(1.0)
    np.testing.assert_array_equal(d.forward(x), np.zeros_like(x))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        Dropout(1.5)


def test_dropout_masks_are_seeded_and_fresh_every_pass():
    x = np.ones((8, 100))
    a, b = Dropout(0.5, np.random.default_rng(3)), Dropout(0.5, np.random.default_rng(3))
    m1 = a.forward(x) != 0
    np.testing.assert_array_equal(m1, b.forward(x) != 0)   # same seed, same mask
    assert (m1 != (a.forward(x) != 0)).any()                # a new mask at the next pass


def test_masked_dropout_is_torchs_dropout_bit_for_bit(dtype):
    """Given the mask torch's own F.dropout drew, MaskedDropout reproduces F.dropout exactly,
    output and gradient; and the scratch Dropout equals MaskedDropout exactly for its own mask."""
    tdt = {"float32": torch.float32, "float64": torch.float64}[dtype]
    x = torch.rand(64, 20, 6, 6, dtype=tdt) + 0.5  # no zeros: the mask is readable from the output
    for p in (0.01, 0.1, 0.37):
        torch.manual_seed(0)
        xa = x.clone().requires_grad_(True)
        ref = torch.nn.functional.dropout(xa, p, training=True)
        g = torch.randn_like(ref)
        ref.backward(g)
        xb = x.clone().requires_grad_(True)
        md = MaskedDropout(p)
        md.mask = ref.detach() != 0
        out = md(xb)
        out.backward(g)
        assert torch.equal(out, ref) and torch.equal(xb.grad, xa.grad)

    layer = Dropout(0.37, np.random.default_rng(20))
    y = layer.forward(x.numpy())
    md = MaskedDropout(0.37)
    md.mask = torch.from_numpy(layer.mask)
    np.testing.assert_array_equal(y, md(x).numpy())


def test_masked_dropout_needs_a_fresh_mask():
    md = MaskedDropout(0.5)
    with pytest.raises(RuntimeError, match="needs .mask set"):
        md(torch.ones(2, 3))
    md.mask = torch.ones(2, 3, dtype=torch.bool)
    md(torch.ones(2, 3))
    assert md.mask is None  # used once: a stale mask is never applied to the next batch
    md.mask = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="does not match"):
        md(torch.ones(2, 3))


# --- global average pooling, log-softmax, NLL --------------------------------------------
def test_log_softmax_is_stable_for_huge_scores(dtype):
    x = np.array([[1000.0, 0.0, -1000.0], [0.0, 2000.0, 1.0]])
    check_layer(LogSoftmax(), torch.nn.LogSoftmax(dim=1), x=x, dtype=dtype)


def test_nll_refuses_out_of_range_labels():
    with pytest.raises(ValueError, match="label 10 is out of range for 10 classes"):
        NLLLoss().forward(np.zeros((2, 10)), np.array([1, 10]))
    with pytest.raises(ValueError, match="label -1 is out of range"):
        NLLLoss().forward(np.zeros((2, 10)), np.array([-1, 0]))


def test_every_new_layer_counts_its_flops():
    x = np.random.default_rng(21).standard_normal((2, 3, 6, 6))
    for layer in (Conv2d(3, 4, 3), BatchNorm2d(3), MaxPool2d(2), Dropout(0.1), GlobalAvgPool2d()):
        with pytest.raises(RuntimeError, match="forward"):
            layer.flops_per_sample()
        layer.forward(x)
        assert layer.flops_per_sample() > 0
    ls = LogSoftmax()
    ls.forward(np.zeros((2, 10)))
    assert ls.flops_per_sample() == 80


def test_masked_dropout_can_draw_its_own_mask_for_benchmarks():
    md = MaskedDropout(0.5)
    md.draw_own_mask = True
    torch.manual_seed(0)
    y = md(torch.ones(100, 100))
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}
