"""nnparity.sweep_layer: the configuration-only slips (learner-style CS231n layers in
examples/cs231n_configs.py, written here) are found, the message names the smallest failing
configuration, correct layers pass every configuration, and the misuses are one line."""

import numpy as np
import pytest
import torch

import nnparity
from examples.cs231n_configs import (conv_backward_naive, conv_backward_naive_crops, conv_forward_naive,
                                     max_pool_backward_assigns, max_pool_backward_naive, max_pool_forward_naive)
from nnparity.training.adapters import ArgumentError, ProtocolError
from nnparity.core.parity import ParityError
from nnparity.api.sweep import GRIDS


def _fails(report):
    return {(r.cfg.get("padding"), r.cfg.get("stride"), str(r.cfg["kernel_size"]), r.input_shape)
            for r in report.failures}


def test_the_pad_zero_crop_is_found_only_at_pad_zero_and_named_at_the_smallest_configuration():
    report = nnparity.sweep_layer((conv_forward_naive, conv_backward_naive_crops), grid="conv2d",
                                  raise_on_failure=False)
    assert {r.cfg["padding"] for r in report.failures} == {0}
    assert {r.cfg["padding"] for r in report.rows if r.status == "pass"} == {1, 2}
    assert len(report.failures) == len([r for r in report.rows if r.cfg["padding"] == 0])
    s = report.smallest_failure
    assert (s.cfg["kernel_size"], s.cfg["stride"], s.cfg["padding"], s.input_shape) == ((2, 3), 1, 0, (1, 2, 5, 5))
    with pytest.raises(ParityError) as e:
        report.raise_if_failed()
    text = str(e.value)
    first = text.splitlines()[:3]
    assert first[0].startswith("conv_forward_naive over the conv2d grid: 8 of 24 configurations fail")
    assert first[1] == "  in_channels=2, out_channels=3, kernel_size=(2, 3), stride=1, padding=0, input (1, 2, 5, 5)"
    assert "din" in first[2] and "PATTERN: scratch is empty along axis 2, 3" in first[2]
    assert "a crop x[p:-p] with p = 0 is empty" in first[2]


def test_a_max_pool_that_assigns_is_found_only_where_windows_overlap():
    report = nnparity.sweep_layer((max_pool_forward_naive, max_pool_backward_assigns), grid="maxpool2d",
                                  raise_on_failure=False)
    checked = [r for r in report.rows if r.status != "n/a"]
    assert checked and all(r.cfg["padding"] == 0 for r in checked)   # a pool_param has no padding: n/a

    def overlap(r):   # two windows share an element along some axis
        ks = r.cfg["kernel_size"] if isinstance(r.cfg["kernel_size"], tuple) else (r.cfg["kernel_size"],) * 2
        return any(r.cfg["stride"] < k and (n - k) // r.cfg["stride"] >= 1 for k, n in zip(ks, r.input_shape[2:]))

    assert {r.config for r in checked if r.status == "FAIL"} == {r.config for r in checked if overlap(r)}
    assert any(r.status == "pass" for r in checked)
    s = report.smallest_failure
    assert (s.cfg["kernel_size"], s.cfg["stride"], s.input_shape) == (2, 1, (1, 2, 4, 4))
    assert "the smallest failing configuration is\n  kernel_size=2, stride=1, padding=0, input (1, 2, 4, 4)\n" \
           in report.message()
    assert "12 more not applicable: pool_param (pool_height, pool_width, stride) has no padding" in report.message()


def test_the_correct_layers_pass_every_configuration():
    conv = nnparity.sweep_layer((conv_forward_naive, conv_backward_naive), grid="conv2d")
    pool = nnparity.sweep_layer((max_pool_forward_naive, max_pool_backward_naive), grid="maxpool2d",
                                axes={"padding": [0]})
    assert conv.ok and len(conv.rows) == 24
    assert pool.ok and len(pool.rows) == 12 and not pool.not_applicable
    assert "all 24 configurations pass" in conv.message()


def test_the_scratch_layers_pass_their_grids():
    from scratch.conv import Conv2d
    from scratch.layers import Linear
    from scratch.norm import BatchNorm2d

    for factory, grid in ((lambda c: Conv2d(**c), "conv2d"), (lambda c: Linear(**c), "linear"),
                          (lambda c: BatchNorm2d(**c), "batchnorm2d")):
        report = nnparity.sweep_layer(factory, grid=grid, dtypes=("float64", "float32"))
        assert report.ok and len(report.rows) == len(GRIDS[grid].cases())


def test_the_grids_hold_the_configurations_the_issue_names():
    conv = GRIDS["conv2d"].cases()
    assert {c["padding"] for c, _ in conv} == {0, 1, 2} and {c["stride"] for c, _ in conv} == {1, 2}
    assert any(isinstance(c["kernel_size"], tuple) for c, _ in conv)
    assert any(s[2] != s[3] for _, s in conv) and any(s[0] == 1 for _, s in conv)
    pool = GRIDS["maxpool2d"].cases()
    assert any(c["stride"] < (c["kernel_size"] if isinstance(c["kernel_size"], int) else min(c["kernel_size"]))
               for c, _ in pool)
    lin = GRIDS["linear"].cases()
    assert any(s[0] == 1 for _, s in lin) and any(s[0] == c["in_features"] for c, s in lin)
    assert any(s[0] == c["out_features"] == c["in_features"] for c, s in lin) and any(s[0] % 2 for _, s in lin)


class WrongAxisBiasLinear:
    """A learner's Linear whose bias gradient sums over the features: a shape error unless N == out."""

    def __init__(self, in_features, out_features):
        self.params = {"weight": np.zeros((out_features, in_features)), "bias": np.zeros(out_features)}
        self.grads = {}

    def forward(self, x):
        self.x = x
        return x @ self.params["weight"].T + self.params["bias"]

    def backward(self, g):
        self.grads["weight"] = g.T @ self.x
        self.grads["bias"] = g.sum(axis=1) if g.shape[0] == g.shape[1] else g.sum(axis=0)
        return g @ self.params["weight"]


def test_a_slip_seen_only_at_batch_equal_to_the_features_is_found_with_its_pattern():
    report = nnparity.sweep_layer(lambda c: WrongAxisBiasLinear(**c), grid="linear", raise_on_failure=False)
    assert report.failures and all(r.input_shape[0] == r.cfg["out_features"] for r in report.failures)
    assert "summed over axis 1, the reference over axis 0" in report.message().splitlines()[2]


def test_a_crash_in_one_configuration_is_an_error_row():
    def fragile(dout, cache):
        if cache[3]["stride"] == 2:
            raise IndexError("index 5 is out of bounds")
        return conv_backward_naive(dout, cache)

    report = nnparity.sweep_layer((conv_forward_naive, fragile), grid="conv2d", axes={"padding": [1]},
                                  raise_on_failure=False)
    assert {r.status for r in report.rows if r.cfg["stride"] == 2} == {"error"}
    assert {r.status for r in report.rows if r.cfg["stride"] == 1} == {"pass"}
    assert "raised IndexError: index 5 is out of bounds" in report.message()


def test_the_plot_of_the_smallest_failure_is_a_png(tmp_path):
    path = tmp_path / "crop.png"
    with pytest.raises(ParityError, match=r"heatmap of scratch - reference: .*crop.png"):
        nnparity.sweep_layer((max_pool_forward_naive, max_pool_backward_assigns), grid="maxpool2d",
                             axes={"padding": [0]}, plot=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_layer_plot_writes_a_png_only_on_failure(tmp_path):
    bad, good = tmp_path / "bad.png", tmp_path / "good.png"
    mod = torch.nn.Conv2d(2, 3, 3, padding=0)
    with pytest.raises(ParityError):
        nnparity.check_layer((conv_forward_naive, conv_backward_naive_crops), mod, input_shape=(2, 2, 5, 5),
                             plot=str(bad))
    assert bad.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and bad.stat().st_size > 5000
    report = nnparity.check_layer((conv_forward_naive, conv_backward_naive), mod, input_shape=(2, 2, 5, 5),
                                  plot=str(good))
    assert report.ok and report.plot_path is None and not good.exists()


@pytest.mark.parametrize("plot, words", [
    ("/nonexistent_folder_nnparity/x.png", "the folder /nonexistent_folder_nnparity does not exist"),
    ("heatmap.jpg", "give a path ending in .png"),
    (3, "plot must be a path to a .png file, got int")])
def test_an_unwritable_plot_path_is_one_line(plot, words):
    for call in (lambda: nnparity.check_layer((conv_forward_naive, conv_backward_naive), torch.nn.Conv2d(2, 3, 3),
                                              input_shape=(2, 2, 5, 5), plot=plot),
                 lambda: nnparity.sweep_layer((conv_forward_naive, conv_backward_naive), plot=plot)):
        with pytest.raises(ArgumentError) as e:
            call()
        assert words in str(e.value) and "\n" not in str(e.value) and e.value.__cause__ is None


def test_a_folder_as_the_plot_path_is_one_line(tmp_path):
    folder = tmp_path / "x.png"
    folder.mkdir()
    with pytest.raises(ArgumentError, match=r"is a folder: give a file path ending in .png$"):
        nnparity.check_layer((conv_forward_naive, conv_backward_naive), torch.nn.Conv2d(2, 3, 3),
                             input_shape=(2, 2, 5, 5), plot=str(folder))


def test_a_write_error_is_one_line(tmp_path, monkeypatch):
    import matplotlib.figure

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", refuse)
    with pytest.raises(ArgumentError) as e:
        nnparity.check_layer((conv_forward_naive, conv_backward_naive_crops), torch.nn.Conv2d(2, 3, 3),
                             input_shape=(2, 2, 5, 5), plot=str(tmp_path / "x.png"))
    assert "cannot write the heatmap (Permission denied): give a writable path" in str(e.value)
    assert "\n" not in str(e.value) and e.value.__cause__ is None


@pytest.mark.parametrize("kwargs, words", [
    (dict(grid="conv3d"), "unknown grid 'conv3d': use one of"),
    (dict(axes={"dilation": [2]}), "axes ['dilation'] are not axes of the conv2d grid"),
    (dict(axes={"padding": []}), "axes values must be non-empty lists"),
    (dict(input_shape=(2, 2, 5, 5)), "input_shape= is set per configuration by the grid"),
    (dict(grid=[({"kernel_size": 3}, (1, 2, 5, 5))]), "with a grid of your own, give torch_equivalent"),
])
def test_sweep_misuse_is_one_line(kwargs, words):
    with pytest.raises(ArgumentError) as e:
        nnparity.sweep_layer((conv_forward_naive, conv_backward_naive), **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_layer_instead_of_a_factory_is_refused():
    from scratch.conv import Conv2d

    with pytest.raises(ArgumentError, match=r"mine must be a factory, a function of the configuration dict"):
        nnparity.sweep_layer(Conv2d(2, 3, 3), grid="conv2d")
    with pytest.raises(ArgumentError, match=r"torch_equivalent must be a factory"):
        nnparity.sweep_layer(lambda c: Conv2d(**c), torch.nn.Conv2d(2, 3, 3), grid="conv2d")


def test_a_grid_no_configuration_of_which_fits_the_layer_is_refused():
    with pytest.raises(ProtocolError, match=r"no configuration of the grid could be checked: pool_param"):
        nnparity.sweep_layer((max_pool_forward_naive, max_pool_backward_naive), grid="maxpool2d",
                             axes={"padding": [1]})


def test_a_grid_of_your_own_and_the_fixture(nnparity):
    cases = [({"kernel_size": 3, "stride": 1, "padding": 0, "in_channels": 2, "out_channels": 1}, (1, 2, 4, 4)),
             ({"kernel_size": 3, "stride": 1, "padding": 1, "in_channels": 2, "out_channels": 1}, (1, 2, 4, 4))]
    with pytest.raises(AssertionError, match=r"1 of 2 configurations fail; the smallest failing configuration is\n"
                                             r"  kernel_size=3, stride=1, padding=0"):
        nnparity.sweep((conv_forward_naive, conv_backward_naive_crops), lambda c: torch.nn.Conv2d(**c), cases)
