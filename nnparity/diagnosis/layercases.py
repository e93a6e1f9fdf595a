"""The one layer-case table: every scratch layer, loss and optimizer kind described once.

Each ``LayerCase`` says how to build the scratch object from a configuration (the torch
module's keyword arguments), its torch equivalent, the sweep of configurations around
the documented networks' (``Grid``: padding 0/1/2, stride 1/2, non-square kernels and
inputs, overlapping pooling windows, batch 1, odd sizes), its modes (train/eval), the
``torch.nn.init`` schemes its weights must match, and which battery checks apply
(``nnparity.diagnosis.battery``). The configurations the documented networks use are not
listed here: they are read off the built networks (``network_configs``), so the table
cannot drift from them.

Everything that checks a layer reads this table: the pytest battery
(``parity_tests/test_battery.py``), the selftest's unit column, ``nnparity check NET``'s
battery section, ``nnparity.sweep_layer`` (``GRIDS``) and ``nnparity.check_battery``.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

WINDOW_SETTINGS = ("kernel_size", "stride", "padding", "dilation")


def _out(n, k, s, p) -> int:
    return (n + 2 * p - k) // s + 1


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv_ok(cfg, shape) -> bool:
    k, s, p = _pair(cfg["kernel_size"]), _pair(cfg.get("stride", 1)), _pair(cfg.get("padding", 0))
    return all(_out(n, kk, ss, pp) >= 1 for n, kk, ss, pp in zip(shape[2:], k, s, p))


def _pool_ok(cfg, shape) -> bool:
    k = _pair(cfg["kernel_size"])
    p = _pair(cfg.get("padding", 0))
    return all(pp <= kk / 2 for kk, pp in zip(k, p)) and _conv_ok(cfg, shape)


@dataclass(frozen=True)
class Grid:
    """One layer kind's default configurations: every combination of ``axes`` (the torch
    module's keyword arguments, with ``fixed``) with every input shape of ``inputs(cfg)``,
    kept where ``valid(cfg, shape)``; ``torch`` names the ``torch.nn`` class built from a config."""

    torch: str
    fixed: dict
    axes: dict
    inputs: object                 # cfg -> list of input shapes
    valid: object = None           # (cfg, shape) -> bool
    exposes: str = ""              # what the grid is for, in words

    def cases(self, axes=None) -> list:
        axes = dict(self.axes, **(axes or {}))
        out = []
        for values in itertools.product(*axes.values()):
            cfg = dict(self.fixed, **dict(zip(axes, values)))
            for shape in self.inputs(cfg):
                if self.valid is None or self.valid(cfg, shape):
                    out.append((cfg, tuple(shape)))
        return out


def _shapes(*shapes):
    return lambda c: list(shapes)


# The sweep of each layer kind (public as ``nnparity.GRIDS``, the grids of ``sweep_layer``).
GRIDS = {
    "conv2d": Grid("Conv2d", {"in_channels": 2, "out_channels": 3},
                   {"kernel_size": [3, (2, 3)], "stride": [1, 2], "padding": [0, 1, 2]},
                   _shapes((1, 2, 5, 5), (2, 2, 6, 7)), _conv_ok,
                   "padding 0/1/2 (a pad:-pad crop is empty at 0), stride 1/2, a non-square kernel and input, "
                   "batch 1"),
    "maxpool2d": Grid("MaxPool2d", {},
                      {"kernel_size": [2, 3, (2, 3)], "stride": [1, 2], "padding": [0, 1]},
                      _shapes((1, 2, 4, 4), (2, 3, 5, 7)), _pool_ok,
                      "overlapping windows (stride < kernel: an = where += is due), non-overlapping ones, "
                      "padding, a non-square kernel and input, batch 1"),
    "avgpool2d": Grid("AvgPool2d", {},
                      {"kernel_size": [2, 3, (2, 3)], "stride": [1, 2], "padding": [0, 1]},
                      _shapes((1, 2, 4, 4), (2, 3, 5, 7)), _pool_ok,
                      "overlapping windows, padding (counted in the average, as torch's default), non-square"),
    "linear": Grid("Linear", {},
                   {"in_features": [3, 5], "out_features": [5, 4]},
                   lambda c: [(1, c["in_features"]), (c["in_features"], c["in_features"]),
                              (c["out_features"], c["in_features"]), (7, c["in_features"])],
                   lambda c, s: True,
                   "batch 1, batch equal to the in and the out features (a transpose or a wrong-axis sum that "
                   "a square shape lets through), square and non-square weights, an odd batch"),
    "batchnorm1d": Grid("BatchNorm1d", {},
                        {"num_features": [4, 5]},
                        lambda c: [(2, c["num_features"]), (c["num_features"], c["num_features"]),
                                   (7, c["num_features"])],
                        None, "batch 2 (N - 1 = 1), batch equal to the feature count, an odd batch"),
    "batchnorm2d": Grid("BatchNorm2d", {},
                        {"num_features": [3]},
                        lambda c: [(1, 3, 2, 3), (2, 3, 4, 5), (3, 3, 3, 3)],
                        None, "batch 1 (statistics over H*W only), batch equal to the channel count, non-square"),
}

# The sweeps of the kinds without a torch.nn class to sweep by name: GRIDS plus these, the table's
SWEEPS = {
    **GRIDS,
    "elementwise": Grid("", {}, {}, _shapes((1, 5), (3, 7), (2, 3, 4, 5)), None,
                        "batch 1, an odd batch, images (any shape goes through an elementwise layer)"),
    "images": Grid("", {}, {}, _shapes((1, 2, 3, 5), (3, 4, 5, 2)), None, "batch 1, odd and non-square maps"),
    "rows": Grid("", {}, {}, _shapes((1, 5), (7, 10)), None, "batch 1, an odd batch"),
    "dropout": Grid("", {}, {"p": [0.3]}, _shapes((1, 6), (16, 6, 5, 5)), None, "batch 1, images"),
}


def _fmt_value(v) -> str:
    return f"({', '.join(map(str, v))})" if isinstance(v, (tuple, list)) else str(v)


def describe_config(cfg: dict, shape: tuple) -> str:
    return ", ".join([f"{k}={_fmt_value(v)}" for k, v in cfg.items()] + [f"input {shape}"])


def config_size(cfg: dict, shape: tuple) -> tuple:
    """How small a configuration is: input elements first, then the settings' sum, a window
    setting counted over every spatial axis (kernel_size 3 on an image is 3 x 3 = 9, (2, 3) is 6)."""
    spatial = max(len(shape) - 2, 1)

    def num(k, v):
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, tuple, list)):
            return 0
        if not isinstance(v, (tuple, list)):
            v = (v,) * spatial if k in WINDOW_SETTINGS else (v,)
        return math.prod(v)
    return math.prod(shape), sum(num(k, v) for k, v in cfg.items())


# --- torch.nn.init counterparts of the scratch initialisations ---------------------------

@dataclass(frozen=True)
class Init:
    """A scratch initialisation and the ``torch.nn.init`` draw it must match in distribution."""

    name: str
    scratch: str                   # the function's name in ``scratch.init``
    torch: Callable                # (weight tensor, bias tensor or None, torch.Generator) -> None, in place
    bias: bool = False             # the bias is drawn too (else set to zero: compared with zero)

    def apply(self, layer, rng) -> None:
        from scratch import init

        fn = getattr(init, self.scratch)
        if self.scratch == "uniform_fan_in":
            fn(layer, rng, layer_types=(type(layer),))
        else:
            fn(layer, rng)


def _torch_default(w, b, gen):
    import torch

    # torch.nn.Linear / Conv2d reset_parameters: kaiming_uniform_(a=sqrt(5)), bias U(+-1/sqrt(fan_in))
    torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(w)
    if b is not None:
        torch.nn.init.uniform_(b, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=gen)


def _relu(fn):
    return lambda w, b, gen: fn(w, nonlinearity="relu", generator=gen)


def _plain(fn):
    return lambda w, b, gen: fn(w, generator=gen)


def _inits():
    import torch.nn.init as ti

    return (Init("uniform_fan_in", "uniform_fan_in", _torch_default, bias=True),
            Init("kaiming_normal", "kaiming_normal", _relu(ti.kaiming_normal_)),
            Init("kaiming_uniform", "kaiming_uniform", _relu(ti.kaiming_uniform_)),
            Init("xavier_normal", "xavier_normal", _plain(ti.xavier_normal_)),
            Init("xavier_uniform", "xavier_uniform", _plain(ti.xavier_uniform_)))


# --- the table ------------------------------------------------------------------------------

def _randn(rng, shape):
    return rng.standard_normal(shape)


@dataclass(frozen=True)
class LayerCase:
    """One scratch kind, described once.

    Attributes:
        kind: the table key (``"conv2d"``).
        role: ``"layer"``, ``"loss"`` or ``"optimizer"``.
        cls: ``"module.Class"`` of the scratch class (what a network's module is matched by, exactly).
        build: ``(cfg, dtype) -> scratch object``.
        torch: ``(cfg, scratch object) -> torch equivalent`` (a module, or a function for the mask protocol).
        grid: the sweep (a key of ``SWEEPS``: ``GRIDS``, the public grids of ``sweep_layer``, and the table's own).
        config_of: ``scratch module -> cfg``, to read a documented network's configuration.
        modes: the modes checked (``("train", "eval")`` where they differ).
        inputs: extra named inputs ``{name: (rng, shape) -> x}`` checked in float64 beside the
            random one (ties for a max-pool, exact zeros for a ReLU, offsets for a BatchNorm).
        routes: which element gets the gradient is a decision (max-pool, ReLU, dropout): non-finite
            inputs and upstream gradients are compared with torch position by position.
        accumulation: ``cfg -> (input shape, offset)`` of a long reduction: float32 against a
            float64 reference, tolerance from the measured noise floor (None: no reduction).
        inits: names of the ``Init``s the kind's weights are drawn with.
        prepare: ``(scratch object, rng)``: set its buffers (running statistics) away from 0 and 1.
        target: ``(rng, logits shape) -> target`` of a loss.
    """

    kind: str
    role: str
    cls: str
    build: Callable
    torch: Callable
    grid: str
    config_of: Callable = lambda m: {}
    modes: tuple = ("train",)
    inputs: dict = field(default_factory=dict)
    routes: bool = False
    accumulation: Callable | None = None
    inits: tuple = ()
    prepare: Callable | None = None
    target: Callable | None = None

    @property
    def scratch_class(self) -> type:
        import importlib

        mod, _, name = self.cls.rpartition(".")
        return getattr(importlib.import_module(mod), name)

    def sweep(self) -> list:
        return SWEEPS[self.grid].cases()

    def make_input(self, rng, shape, name: str | None = None):
        return (self.inputs[name] if name else _randn)(rng, shape)


def _scratch(path):
    def build(cfg, dtype):
        import importlib

        mod, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(mod), name)
        return cls(**cfg, dtype=dtype) if "dtype" in cls.__init__.__code__.co_varnames else cls(**cfg)
    return build


def _torch_nn(name, **fixed):
    def make(cfg, layer):
        import torch

        return getattr(torch.nn, name)(**cfg, **fixed)
    return make


def _dropout_torch(cfg, layer):
    """torch's dropout arithmetic on the scratch layer's own mask (the parity harness's protocol)."""
    import torch

    from reference.layers import MaskedDropout

    class WithScratchMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ref = MaskedDropout(layer.p)

        def forward(self, x):
            if layer.mask is not None:
                self.ref.mask = torch.from_numpy(layer.mask)
            self.ref.train(self.training)
            return self.ref(x)
    return WithScratchMask()


def _maxpool(cfg, dtype):
    """The scratch MaxPool2d has no padding (0 is what it does) and refuses a stride other than its kernel."""
    from scratch.pool import MaxPool2d

    if cfg.get("padding", 0):
        raise ValueError(f"MaxPool2d has no padding, got padding={cfg['padding']}")
    return MaxPool2d(cfg["kernel_size"], cfg.get("stride"))


def _bn_buffers(layer, rng):
    c = layer.num_features
    layer.running_mean[...] = rng.standard_normal(c)
    layer.running_var[...] = rng.uniform(0.5, 2.0, c)


def _ties(rng, shape):
    return rng.integers(0, 3, shape).astype(np.float64)   # most windows hold tied maxima, zeros included


def _zeros_and_signs(rng, shape):
    return rng.integers(-1, 2, shape).astype(np.float64)  # exact zeros: the kink, where torch's slope is 0


def _offset(rng, shape):
    return rng.standard_normal(shape) * 3 + 1.5           # mean and scale far from 0 and 1


def _attrs(*names):
    def read(m):
        cfg = {}
        for n in names:
            v = getattr(m, n)
            cfg[n] = v if not isinstance(v, tuple) or len(set(v)) > 1 else v[0]
        return cfg
    return read


def _linear_cfg(m):
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _conv_cfg(m):
    return {**_attrs("in_channels", "out_channels", "kernel_size", "stride", "padding")(m), "bias": m.bias is not None}


def _labels(rng, shape):
    return rng.integers(0, shape[1], shape[0]).astype(np.int64)


def _regression(rng, shape):
    return rng.random(shape)


def _case_list():
    from reference import mlp16 as ref_mlp16
    from reference import toy221 as ref_toy

    ALL_INITS = ("uniform_fan_in", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform")
    return (
        LayerCase("linear", "layer", "scratch.layers.Linear", _scratch("scratch.layers.Linear"), _torch_nn("Linear"),
                  "linear", _linear_cfg, accumulation=lambda c: ((2 ** 18, c["in_features"]), 50.0), inits=ALL_INITS),
        LayerCase("relu", "layer", "scratch.layers.ReLU", _scratch("scratch.layers.ReLU"), _torch_nn("ReLU"),
                  "elementwise", inputs={"zeros": _zeros_and_signs}, routes=True),
        LayerCase("sigmoid", "layer", "scratch.layers.Sigmoid", _scratch("scratch.layers.Sigmoid"),
                  _torch_nn("Sigmoid"), "elementwise"),
        LayerCase("flatten", "layer", "scratch.layers.Flatten", _scratch("scratch.layers.Flatten"),
                  _torch_nn("Flatten"), "images", routes=True),
        LayerCase("conv2d", "layer", "scratch.conv.Conv2d", _scratch("scratch.conv.Conv2d"), _torch_nn("Conv2d"),
                  "conv2d", _conv_cfg, modes=("train", "eval"),
                  accumulation=lambda c: ((16, c["in_channels"], 20, 20), 20.0), inits=ALL_INITS),
        LayerCase("batchnorm2d", "layer", "scratch.norm.BatchNorm2d", _scratch("scratch.norm.BatchNorm2d"),
                  _torch_nn("BatchNorm2d"), "batchnorm2d", _attrs("num_features", "eps", "momentum"),
                  modes=("train", "eval"), inputs={"offset": _offset},
                  accumulation=lambda c: ((64, c["num_features"], 25, 25), 40.0), prepare=_bn_buffers),
        LayerCase("maxpool2d", "layer", "scratch.pool.MaxPool2d", _maxpool,
                  _torch_nn("MaxPool2d"), "maxpool2d", _attrs("kernel_size"), inputs={"ties": _ties}, routes=True),
        LayerCase("globalavgpool2d", "layer", "scratch.pool.GlobalAvgPool2d", _scratch("scratch.pool.GlobalAvgPool2d"),
                  lambda c, layer: _torch_nn("AdaptiveAvgPool2d")({"output_size": 1}, layer), "images",
                  routes=True, accumulation=lambda c: ((4, 3, 64, 64), 50.0)),
        LayerCase("dropout", "layer", "scratch.dropout.Dropout",
                  lambda cfg, dtype: __import__("scratch.dropout", fromlist=["Dropout"]).Dropout(
                      cfg.get("p", 0.5), np.random.default_rng(8)),
                  _dropout_torch, "dropout", _attrs("p"), modes=("train", "eval"), routes=True),
        LayerCase("logsoftmax", "layer", "scratch.losses.LogSoftmax", _scratch("scratch.losses.LogSoftmax"),
                  lambda c, layer: _torch_nn("LogSoftmax")({"dim": 1}, layer), "rows",
                  accumulation=lambda c: ((8, 4096), 50.0)),
        # losses: cfg = the loss's arguments; the "input shape" is the logits'
        LayerCase("cross_entropy", "loss", "scratch.losses.CrossEntropyLoss", _scratch("scratch.losses.CrossEntropyLoss"),
                  _torch_nn("CrossEntropyLoss"), "loss_rows", _attrs("reduction"), target=_labels),
        LayerCase("nll", "loss", "scratch.losses.NLLLoss", _scratch("scratch.losses.NLLLoss"),
                  _torch_nn("NLLLoss"), "loss_rows", _attrs("reduction"), target=_labels),
        LayerCase("one_hot_mse", "loss", "scratch.losses.OneHotMSELoss",
                  lambda c, dtype: __import__("scratch.losses", fromlist=["x"]).OneHotMSELoss(
                      c.get("num_classes", 10), c["reduction"]),
                  lambda c, loss: ref_mlp16.OneHotMSELoss(c.get("num_classes", 10), c["reduction"]), "loss_rows",
                  _attrs("num_classes", "reduction"), target=_labels),
        LayerCase("mse", "loss", "scratch.losses.MSELoss", _scratch("scratch.losses.MSELoss"),
                  _torch_nn("MSELoss"), "loss_rows", _attrs("reduction"), target=_regression),
        LayerCase("half_squared_error", "loss", "scratch.losses.HalfSquaredError",
                  lambda cfg, dtype: __import__("scratch.losses", fromlist=["x"]).HalfSquaredError(),
                  lambda c, loss: ref_toy.HalfSquaredError(), "loss_sum", target=_regression),
        LayerCase("sgd", "optimizer", "scratch.optim.SGD", None, None, "sgd", _attrs("lr", "momentum")),
    )


# the sweeps of losses and of the optimizer: the reductions, batch 1, an odd batch
SWEEPS["loss_rows"] = Grid("", {}, {"reduction": ["mean", "sum"]}, _shapes((1, 10), (7, 10)), None,
                          "both reductions, batch 1, an odd batch")
SWEEPS["loss_sum"] = Grid("", {}, {}, _shapes((1, 2), (7, 2)), None, "batch 1, an odd batch")
SWEEPS["sgd"] = Grid("", {}, {"lr": [0.1], "momentum": [0.0, 0.9]}, _shapes((3, 4)), None,
                    "plain SGD and momentum (lr 0.1: lr applied twice is invisible at lr 1)")

_CASES = None


def cases() -> "dict[str, LayerCase]":
    """The table, ``{kind: LayerCase}`` (built on first use: it imports scratch and reference)."""
    global _CASES
    if _CASES is None:
        _CASES = {c.kind: c for c in _case_list()}
    return _CASES


def get_case(kind: str) -> LayerCase:
    table = cases()
    if kind not in table:
        raise KeyError(f"unknown layer kind {kind!r}; known: {', '.join(table)}")
    return table[kind]


def inits() -> "dict[str, Init]":
    return {i.name: i for i in _inits()}


def case_of(obj) -> LayerCase | None:
    """The table entry of a scratch object, matched by its exact class (a subclass such as linear10's
    DocumentedReLU is a different layer, with its own backward)."""
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    return next((c for c in cases().values() if c.cls == name), None)


def cases_of_class(cls) -> list:
    """The kinds whose scratch class is ``cls`` or inherits the method from it."""
    return [c for c in cases().values() if issubclass(c.scratch_class, cls)]


# --- the documented networks' configurations --------------------------------------------

BATCH = 3   # the batch of a documented configuration (odd; the sweeps have batch 1)


@functools.lru_cache(maxsize=None)
def network_configs(name: str) -> "dict[str, list]":
    """``{kind: [(cfg, input shape), ...]}`` of every table kind a documented network uses (its
    layers as built, their input shapes from one forward pass of a batch of ``BATCH``; its loss;
    its optimizer with the recipe's lr and momentum), distinct configurations in network order.
    Built once per network and process (do not change the lists)."""
    from nnparity.training.networks import get, stream

    net = get(name)
    recipe = net.recipe
    model = net.scratch.build(recipe, stream(0, "init"), np.float64)
    loss = net.scratch.loss(recipe)
    rng = np.random.default_rng(0)
    if net.data.mnist:
        x = rng.standard_normal((BATCH, 784) if net.flat else (BATCH, 1, 28, 28))
    else:
        x = np.asarray(net.data.first_batches(net, recipe, None, "float64", 0, 1).__next__()[0])
    out = {}

    def add(kind, cfg, shape):
        entry = (cfg, tuple(shape))
        if entry not in out.setdefault(kind, []):
            out[kind].append(entry)

    mods = list(getattr(model, "_modules", {}).items())
    model.eval()   # shapes only: no running statistics move, no mask is drawn
    h = x
    for _, m in (mods or [("", model)]):
        case = case_of(m)
        if case is not None:
            add(case.kind, case.config_of(m), h.shape)
        h = m.forward(h)
    case = case_of(loss)
    if case is not None:
        add(case.kind, case.config_of(loss), h.shape if h.ndim == 2 else (BATCH, 10))
    add("sgd", {"lr": recipe.lr, "momentum": recipe.momentum}, (3, 4))
    return out


def documented_configs() -> "dict[str, list]":
    """Every documented network's configurations, kind by kind (``network_configs`` merged)."""
    from nnparity.training.networks import NETWORKS

    merged = {}
    for name in NETWORKS:
        for kind, entries in network_configs(name).items():
            for e in entries:
                if e not in merged.setdefault(kind, []):
                    merged[kind].append(e)
    return merged


__all__ = ["GRIDS", "SWEEPS", "Grid", "Init", "LayerCase", "cases", "case_of", "describe_config", "config_size",
           "documented_configs", "get_case", "inits", "network_configs"]
