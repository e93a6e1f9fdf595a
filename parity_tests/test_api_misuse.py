"""Every misuse of the user API answered in words.

One table of misuses of ``check_layer`` / ``check_loss`` / ``check_steps``: wrong
types, shapes and values for every argument of every entry point, layers missing
methods, backwards returning the wrong thing, parameters that are not dicts,
gradients missing keys, NaN outputs, torch equivalents that are classes or NumPy
functions... Each row names the exception the user must get and a phrase its
message must contain (the problem, in words), and the error must be raised by
nn-parity itself with no chained torch/NumPy traceback (``raise ... from None``).
Rows marked ``warn`` are checks that pass but leave something unchecked: the
result's message and a ``NNParityWarning`` must say what.

Run as a script (``python parity_tests/test_api_misuse.py``) it classifies every row
against whatever code is importable, without needing the error classes to exist:
*answered* (nn-parity's own error, the row's class and phrase), *worded* (nn-parity's
own words, but not the row's answer), *raw* (an exception of torch, NumPy, Python or
the user's code reached the caller unexplained), *silent* (no error, no warning): the
before/after measurement of the issue.
"""

from __future__ import annotations

import os
import re
import traceback
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch

import nnparity
from nnparity.training import adapters

# --- a learner's layers, losses and networks (correct unless a row breaks them) -----------------


class Linear:
    """y = x W^T + b, torch's names and layout, the plain-object convention."""

    def __init__(self, n_in=4, n_out=3):
        rng = np.random.default_rng(0)
        self.params = {"weight": rng.standard_normal((n_out, n_in)), "bias": rng.standard_normal(n_out)}
        self.grads = {}

    def forward(self, x):
        self.x = x
        return x @ self.params["weight"].T + self.params["bias"]

    def backward(self, dy):
        self.grads["weight"] = dy.T @ self.x
        self.grads["bias"] = dy.sum(axis=0)
        return dy @ self.params["weight"]


class ReLU:
    def forward(self, x):
        self.x = x
        return np.maximum(x, 0)

    def backward(self, dy):
        return dy * (self.x > 0)


class BatchNorm1d:
    """Batch statistics in training, running statistics in ``buffers`` (a dict), as torch."""

    def __init__(self, n=4, eps=1e-5, momentum=0.1):
        self.params = {"weight": np.ones(n), "bias": np.zeros(n)}
        self.buffers = {"running_mean": np.zeros(n), "running_var": np.ones(n)}
        self.grads, self.eps, self.momentum, self.training = {}, eps, momentum, True

    def running(self):
        return self.buffers

    def update_running(self, mu, var, n):
        m, b = self.momentum, self.running()
        b["running_mean"] = (1 - m) * b["running_mean"] + m * mu
        b["running_var"] = (1 - m) * b["running_var"] + m * var * n / (n - 1)   # unbiased, as torch

    def forward(self, x):
        mu, var = x.mean(axis=0), x.var(axis=0)
        self.update_running(mu, var, len(x))
        self.inv = 1 / np.sqrt(var + self.eps)
        self.xhat = (x - mu) * self.inv
        return self.xhat * self.params["weight"] + self.params["bias"]

    def backward(self, dy):
        self.grads["weight"] = (dy * self.xhat).sum(axis=0)
        self.grads["bias"] = dy.sum(axis=0)
        g = dy * self.params["weight"]
        return self.inv * (g - g.mean(axis=0) - self.xhat * (g * self.xhat).mean(axis=0))


class BatchNormBuffersMethod(BatchNorm1d):
    """The tester's silent pass: buffers exposed as a method (not the dict the protocol reads),
    and the running variance updated with the *biased* variance (torch keeps the unbiased one)."""

    def __init__(self, n=4):
        super().__init__(n)
        self._running = self.__dict__.pop("buffers")

    def buffers(self):
        return self._running

    def running(self):
        return self._running

    def update_running(self, mu, var, n):
        m, b = self.momentum, self._running
        b["running_mean"] = (1 - m) * b["running_mean"] + m * mu
        b["running_var"] = (1 - m) * b["running_var"] + m * var   # BUG: biased


class BatchNormNoBuffers(BatchNorm1d):
    """Batch statistics only: the torch module's running statistics have no counterpart."""

    def __init__(self, n=4):
        super().__init__(n)
        del self.buffers

    def update_running(self, mu, var, n):
        pass


def softmax_ce(z, target):
    """Mean softmax cross-entropy: (value, dL/dz)."""
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(target)
    dz = np.exp(logp)
    dz[np.arange(n), target] -= 1
    return -logp[np.arange(n), target].mean(), dz / n


class TwoLayerNet:
    def __init__(self, dtype=np.float64):
        rng = np.random.default_rng(0)
        self.params = {"fc1.weight": rng.standard_normal((16, 12)) / 4, "fc1.bias": rng.standard_normal(16) / 10,
                       "fc2.weight": rng.standard_normal((5, 16)) / 4, "fc2.bias": np.zeros(5)}
        self.params = {k: v.astype(dtype) for k, v in self.params.items()}
        self.grads = {}

    def forward(self, x):
        p = self.params
        self.x, self.h = x, x @ p["fc1.weight"].T + p["fc1.bias"]
        self.a = np.maximum(self.h, 0)
        return self.a @ p["fc2.weight"].T + p["fc2.bias"]

    def backward(self, dout):
        p, g = self.params, self.grads
        g["fc2.weight"], g["fc2.bias"] = dout.T @ self.a, dout.sum(axis=0)
        dh = (dout @ p["fc2.weight"]) * (self.h > 0)
        g["fc1.weight"], g["fc1.bias"] = dh.T @ self.x, dh.sum(axis=0)


def sgd(params, grads):
    for k in params:
        params[k] -= 0.1 * grads[k]


def mirror():
    return torch.nn.Sequential(OrderedDict(fc1=torch.nn.Linear(12, 16), relu=torch.nn.ReLU(),
                                           fc2=torch.nn.Linear(16, 5)))


def data(n=2, rows=8, cols=12, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((rows, cols)), rng.integers(0, 5, rows)) for _ in range(n)]


def torch_sgd(p):
    return torch.optim.SGD(p, lr=0.1)


def with_(base, **methods):
    """``base`` with some methods (or attributes) replaced: a user's slip."""
    return type(f"{base.__name__}Slip", (base,), methods)


def lin_backward(dx=lambda self, dy: dy @ self.params["weight"], **grads):
    """A Linear backward with some of its results replaced."""
    def backward(self, dy):
        self.grads["weight"] = grads.get("weight", lambda s, d: d.T @ s.x)(self, dy)
        if "bias" not in grads or grads["bias"] is not ...:
            self.grads["bias"] = grads.get("bias", lambda s, d: d.sum(axis=0))(self, dy)
        return dx(self, dy)
    return backward


DEFAULT = object()   # the helpers' "not given" (None is a value a row passes on)


def _or(value, default):
    return default() if value is DEFAULT else value


def layer(mine=DEFAULT, torch_eq=DEFAULT, input_shape=(2, 4), **kw):
    """``check_layer`` of a correct Linear(4, 3) against torch.nn.Linear(4, 3) unless overridden."""
    return nnparity.check_layer(_or(mine, Linear), _or(torch_eq, lambda: torch.nn.Linear(4, 3)), input_shape, **kw)


def relu(mine=DEFAULT, torch_eq=DEFAULT, input_shape=(2, 3), **kw):
    return nnparity.check_layer(_or(mine, ReLU), _or(torch_eq, torch.nn.ReLU), input_shape, **kw)


def loss(mine=softmax_ce, torch_loss=DEFAULT, input_shape=(6, 5), target=None, **kw):
    return nnparity.check_loss(mine, _or(torch_loss, torch.nn.CrossEntropyLoss), input_shape, target, **kw)


def steps(net=DEFAULT, loss_fn=softmax_ce, update=sgd, torch_net=DEFAULT, torch_loss=DEFAULT, torch_opt=torch_sgd,
          batches=DEFAULT, **kw):
    return nnparity.check_steps(_or(net, TwoLayerNet), loss_fn, update, _or(torch_net, mirror),
                                _or(torch_loss, torch.nn.CrossEntropyLoss), torch_opt, _or(batches, data), **kw)


def _nan_at(shape, where=(0, 0)):
    a = np.random.default_rng(0).standard_normal(shape)
    a[where] = np.nan
    return a


def _other_model_optimizer(p):
    return torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)


def _buffered_mirror():
    m = mirror()
    m.fc2.register_buffer("scale", torch.ones(5))
    return m


# (id, call, expected exception class name in nnparity.training.adapters / parity / gradcheck, or "warn", phrase)
MISUSES = [
    # --- check_layer: the layer ----------------------------------------------------------------
    ("layer: mine is None", lambda: layer(mine=None), "ProtocolError", r"NoneType has no forward"),
    ("layer: mine is a torch module", lambda: relu(mine=torch.nn.ReLU()), "ProtocolError", r"has no backward method"),
    ("layer: mine is a class, not an instance", lambda: relu(mine=ReLU), "ProtocolError",
     r"the class ReLU, not an instance"),
    ("layer: no backward", lambda: relu(mine=type("Fwd", (), {"forward": lambda s, x: x})()), "ProtocolError",
     r"Fwd has no backward method"),
    ("layer: three functions", lambda: relu(mine=(np.tanh, np.tanh, np.tanh)), "ProtocolError",
     r"pair \(forward, backward\)"),
    ("layer: backward function is None", lambda: relu(mine=(np.tanh, None)), "ProtocolError",
     r"pair \(forward, backward\)"),
    ("layer: params is a list",
     lambda: layer(mine=_setattr(Linear(), lambda o: setattr(o, "params", [np.zeros((3, 4))]))), "ProtocolError",
     r"params must be a dict"),
    ("layer: a params value is None",
     lambda: layer(mine=_setattr(Linear(), lambda o: o.params.__setitem__("bias", None))), "ProtocolError",
     r"params\['bias'\] is NoneType, not an array"),
    ("layer: named_parameters yields arrays, not Parameters",
     lambda: layer(mine=with_(Linear, named_parameters=lambda s: iter(s.params.items()))()), "ProtocolError",
     r"named_parameters\(\) must yield \(name, p\) with p\.data and p\.grad arrays"),
    ("layer: buffers() is a method",
     lambda: nnparity.check_layer(BatchNormBuffersMethod(), torch.nn.BatchNorm1d(4), input_shape=(6, 4)),
     "ProtocolError", r"buffers is a method"),
    ("layer: torch buffers without a counterpart", lambda: nnparity.check_layer(
        BatchNormNoBuffers(), torch.nn.BatchNorm1d(4), input_shape=(6, 4)), "warn",
     r"buffers \['running_mean', 'running_var'\] .*not compared"),
    ("layer: a buffer torch lacks", lambda: relu(mine=with_(ReLU, buffers={"scale": np.ones(3)})()),
     "ParameterMismatch", r"buffers differ"),
    ("layer: train() takes no mode", lambda: relu(mine=with_(ReLU, train=lambda s: None)()), "CallError",
     r"ReLUSlip\.train raised TypeError: .* \(called as train\(True\)\)"),
    ("layer: training is a read-only property", lambda: relu(mine=with_(ReLU, training=property(lambda s: True))()),
     "CallError", r"setting ReLUSlip\.training raised AttributeError"),
    # --- check_layer: the gradients -----------------------------------------------------------
    ("grads: missing a key", lambda: layer(mine=with_(Linear, backward=lin_backward(bias=...))()), "ProtocolError",
     r"stored no gradient for \['bias'\]"),
    ("grads: wrong shape", lambda: layer(mine=with_(Linear, backward=lin_backward(bias=lambda s, d: d))()),
     "ProtocolError", r"gradient of parameter 'bias' has shape \(2, 3\)"),
    ("grads: None", lambda: layer(mine=with_(Linear, backward=lin_backward(bias=lambda s, d: None))()),
     "ProtocolError", r"gradient of parameter 'bias' is None"),
    ("grads: a list, not a dict", lambda: layer(mine=with_(Linear, backward=_grads_as_list)()), "ProtocolError",
     r"no grads dict"),
    ("grads: float64 in a float32 run", lambda: layer(mine=with_(Linear, backward=lin_backward(
        weight=lambda s, d: (d.T @ s.x).astype(np.float64)))()), "ParityError", r"grad/weight .*dtype mismatch"),
    ("grads: NaN", lambda: layer(mine=with_(Linear, backward=lin_backward(bias=lambda s, d: d.sum(0) * np.nan))()),
     "ParityError", r"grad/bias .*non-finite value"),
    ("grads: accumulated into entries never created", lambda: layer(mine=with_(Linear, backward=_accumulate)()),
     "CallError", r"LinearSlip\.backward raised KeyError: 'weight' at .*test_api_misuse\.py:\d+"),
    # --- check_layer: backward's return value -------------------------------------------------
    ("backward: returns None", lambda: relu(mine=with_(ReLU, backward=lambda s, dy: None)()), "ParityError",
     r"backward returned None: it must return dL/dx"),
    ("backward: wrong shape", lambda: relu(mine=with_(ReLU, backward=lambda s, dy: dy.sum(0))()), "ParityError",
     r"returned an array of shape \(3,\) for an input of shape \(2, 3\)"),
    ("backward: a list", lambda: relu(mine=with_(ReLU, backward=lambda s, dy: dy.tolist())()), "ParityError",
     r"backward returned list, not a NumPy array"),
    ("backward: a tuple (dx, grads)", lambda: relu(mine=with_(ReLU, backward=lambda s, dy: (dy, {}))()),
     "ParityError", r"backward returned tuple, not a NumPy array"),
    ("backward: float64 in a float32 run", lambda: relu(mine=with_(ReLU, backward=lambda s, dy: (
        dy * (s.x > 0)).astype(np.float64))()), "ParityError", r"din .*dtype mismatch"),
    ("backward: NaN", lambda: relu(mine=with_(ReLU, backward=lambda s, dy: dy * np.nan)()), "ParityError",
     r"din .*non-finite value"),
    ("backward: raises", lambda: relu(mine=with_(ReLU, backward=lambda s, dy: dy @ np.ones((4, 4)))()),
     "CallError", r"ReLUSlip\.backward raised ValueError: matmul.* at .*test_api_misuse\.py"),
    # --- check_layer: forward's return value --------------------------------------------------
    ("forward: returns None", lambda: relu(mine=with_(ReLU, forward=lambda s, x: None)()), "ParityError",
     r"forward returned NoneType, not a NumPy array"),
    ("forward: a list", lambda: relu(mine=with_(ReLU, forward=lambda s, x: x.tolist())()), "ParityError",
     r"forward returned list, not a NumPy array"),
    ("forward: a torch tensor", lambda: relu(mine=with_(ReLU, forward=lambda s, x: torch.from_numpy(x))()),
     "ParityError", r"forward returned Tensor, not a NumPy array"),
    ("forward: NaN", lambda: relu(mine=with_(ReLU, forward=lambda s, x: x * np.nan)()), "ParityError",
     r"forward returned nan at \(0, 0\)"),
    ("forward: wrong output shape", lambda: relu(mine=with_(ReLU, forward=lambda s, x: np.maximum(x, 0)[:, :2],
                                                          backward=lambda s, dy: np.zeros((2, 3)))()),
     "ParityError", r"out \(.*\): shape mismatch: scratch \(2, 2\), reference \(2, 3\)"),
    ("forward: a scalar", lambda: relu(mine=with_(ReLU, forward=lambda s, x: np.maximum(x, 0).sum(),
                                                  backward=lambda s, dy: np.zeros((2, 3)))()),
     "ParityError", r"shape mismatch: scratch \(\), reference \(2, 3\)"),
    ("forward: raises on the input", lambda: layer(input_shape=(2, 5)), "CallError",
     r"Linear\.forward raised ValueError: matmul.* on an input of shape \(2, 5\)"),
    ("forward: mutates its input", lambda: relu(mine=with_(ReLU, forward=_relu_in_place)()), "ParityError",
     r"modified its input x in place"),
    ("forward: float64 for a float32 input", lambda: relu(mine=with_(ReLU, forward=_promoting_forward)()),
     "ParityError", r"float32 out .*dtype mismatch"),
    # --- check_layer: the torch equivalent ----------------------------------------------------
    ("torch_equivalent: a string", lambda: relu(torch_eq="relu"), "ProtocolError",
     r"torch equivalent must be a torch\.nn\.Module or a function"),
    ("torch_equivalent: a class, not an instance", lambda: relu(torch_eq=torch.nn.ReLU), "ProtocolError",
     r"the class torch\.nn\.ReLU, not an instance"),
    ("torch_equivalent: a NumPy function", lambda: relu(torch_eq=np.tanh), "ProtocolError",
     r"tanh is a NumPy function"),
    ("torch_equivalent: returns an ndarray", lambda: relu(torch_eq=lambda t: np.maximum(t.detach().numpy(), 0)),
     "ProtocolError", r"torch equivalent <lambda> returned ndarray, not a torch tensor"),
    ("torch_equivalent: returns a tuple", lambda: relu(torch_eq=lambda t: (t.relu(), t)), "ProtocolError",
     r"returned tuple, not a torch tensor"),
    ("torch_equivalent: detached from its input", lambda: relu(torch_eq=lambda t: t.detach().relu()),
     "ProtocolError", r"output does not depend on its input through autograd"),
    ("torch_equivalent: raises", lambda: relu(torch_eq=torch.nn.MaxPool2d(2)), "CallError",
     r"the torch equivalent torch\.nn\.MaxPool2d raised RuntimeError"),
    ("torch_equivalent: float32 output for a float64 input", lambda: relu(torch_eq=lambda t: t.float().relu()),
     "ParityError", r"the torch equivalent returned another dtype than its float64 input's"),
    ("torch_equivalent: your own NumPy layer", lambda: nnparity.check_layer(ReLU(), ReLU(), (2, 3)), "ProtocolError",
     r"the torch equivalent ReLU has forward and backward: it is a NumPy layer"),
    ("torch_equivalent: parameter names differ", lambda: layer(mine=_renamed_linear()), "ParameterMismatch",
     r"only yours: \['W', 'b'\]"),
    ("torch_equivalent: parameter shapes differ", lambda: layer(torch_eq=torch.nn.Linear(3, 4), input_shape=(2, 4)),
     "ParameterMismatch", r"weight: yours \(3, 4\), torch \(4, 3\)"),
    ("torch_equivalent: a function without your parameters", lambda: layer(torch_eq=lambda x: x), "ParameterMismatch",
     r"does not accept the parameter\(s\) \['weight', 'bias'\]"),
    # --- check_layer: input_shape, x, upstream --------------------------------------------------
    ("input_shape: an int", lambda: relu(input_shape=5), "ArgumentError", r"input_shape must be a tuple of ints"),
    ("input_shape: negative", lambda: relu(input_shape=(-1, 3)), "ArgumentError",
     r"input_shape \(-1, 3\) has a size below 1"),
    ("input_shape: a string", lambda: relu(input_shape="abc"), "ArgumentError", r"input_shape must be a tuple of ints"),
    ("input_shape: a float size", lambda: relu(input_shape=(2.5, 3)), "ArgumentError",
     r"input_shape must be a tuple of ints"),
    ("input_shape: an empty batch", lambda: relu(input_shape=(0, 4)), "ArgumentError",
     r"input_shape \(0, 4\) has a size below 1"),
    ("input_shape: neither it nor x", lambda: relu(input_shape=None), "ArgumentError", r"give input_shape"),
    ("x: disagrees with input_shape", lambda: relu(input_shape=(2, 3), x=np.ones((4, 5))), "ArgumentError",
     r"input_shape \(2, 3\) and x\.shape \(4, 5\) disagree"),
    ("x: NaN", lambda: relu(input_shape=None, x=_nan_at((2, 3))), "ArgumentError",
     r"x has a non-finite value \(nan\) at \(0, 0\)"),
    ("x: strings", lambda: relu(input_shape=None, x=np.array([["a", "b"]])), "ArgumentError",
     r"x must be an array of numbers"),
    ("x: complex", lambda: relu(input_shape=None, x=np.ones((2, 3)) * 1j), "ArgumentError", r"x is complex"),
    ("x: a torch tensor that requires grad", lambda: relu(input_shape=None, x=torch.ones(2, 3, requires_grad=True)),
     "ArgumentError", r"x must be an array of numbers, got Tensor: pass a NumPy array "
                      r"\(tensor\.detach\(\)\.numpy\(\)\)"),
    ("x: empty", lambda: relu(input_shape=None, x=np.zeros((0, 4))), "ArgumentError", r"x has no elements"),
    ("upstream: wrong shape", lambda: relu(upstream=np.ones((3, 2))), "ArgumentError",
     r"upstream has shape \(3, 2\), your ReLU's output has shape \(2, 3\)"),
    ("upstream: wrong shape, finite differences", lambda: relu(torch_eq=None, upstream=np.ones((3, 2))),
     "ArgumentError", r"upstream has shape \(3, 2\), your ReLU's output has shape \(2, 3\)"),
    ("upstream: NaN", lambda: relu(upstream=_nan_at((2, 3))), "ArgumentError", r"upstream has a non-finite value"),
    ("upstream: a string", lambda: relu(upstream="ones"), "ArgumentError", r"upstream must be an array of numbers"),
    # --- check_layer: the other arguments -------------------------------------------------------
    ("dtypes: float16", lambda: relu(dtypes=("float16",)), "ArgumentError", r"no parity tolerance for dtype 'float16'"),
    ("dtypes: not a dtype", lambda: relu(dtypes="abc"), "ArgumentError", r"dtypes: 'abc' is not a dtype"),
    ("dtypes: None", lambda: relu(dtypes=None), "ArgumentError", r"dtypes must be"),
    ("dtypes: contains None", lambda: relu(dtypes=("float32", None)), "ArgumentError", r"dtypes: None is not a dtype"),
    ("dtypes: empty", lambda: relu(dtypes=()), "ArgumentError", r"dtypes is empty"),
    ("dtypes: an integer dtype", lambda: relu(dtypes=("int64",)), "ArgumentError",
     r"no parity tolerance for dtype 'int64'"),
    ("seed: negative", lambda: relu(seed=-1), "ArgumentError", r"seed must be an int >= 0, got -1"),
    ("seed: a string", lambda: relu(seed="a"), "ArgumentError", r"seed must be an int >= 0, got 'a'"),
    ("seed: a float", lambda: relu(seed=1.5), "ArgumentError", r"seed must be an int >= 0, got 1\.5"),
    ("params: misspelt", lambda: relu(params="Keep"), "ArgumentError", r"params must be one of"),
    ("train: a string", lambda: relu(train="False"), "ArgumentError", r"train must be True or False, got 'False'"),
    ("samples: zero", lambda: relu(torch_eq=None, samples=0), "ArgumentError", r"samples must be an int >= 1"),
    ("eps: zero", lambda: relu(torch_eq=None, eps=0), "ArgumentError", r"eps must be a number > 0"),
    ("eps: a string", lambda: relu(torch_eq=None, eps="a"), "ArgumentError", r"eps must be a number > 0"),
    ("name: not a string", lambda: relu(name=5), "ArgumentError", r"name must be a string"),
    ("raise_on_failure: a string", lambda: relu(raise_on_failure="no"), "ArgumentError",
     r"raise_on_failure must be True or False"),
    # --- check_loss -----------------------------------------------------------------------------
    ("loss: mine is None", lambda: loss(mine=None), "ProtocolError", r"NoneType is not a loss"),
    ("loss: mine is the torch loss (arguments swapped)", lambda: loss(mine=torch.nn.CrossEntropyLoss()),
     "ProtocolError", r"CrossEntropyLoss is a torch module: pass your NumPy loss first"),
    ("loss: returns the value only", lambda: loss(mine=lambda z, t: softmax_ce(z, t)[0]), "ProtocolError",
     r"must return \(value, dL/dinput\)"),
    ("loss: gradient None", lambda: loss(mine=lambda z, t: (softmax_ce(z, t)[0], None)), "ProtocolError",
     r"dL/dinput is None"),
    ("loss: gradient of the wrong shape", lambda: loss(mine=lambda z, t: (softmax_ce(z, t)[0], z[0])),
     "ProtocolError", r"dL/dinput has shape \(5,\), the input has shape \(6, 5\)"),
    ("loss: backward() takes an argument", lambda: loss(mine=_LossBackwardTakesArg()), "CallError",
     r"_LossBackwardTakesArg\.backward raised TypeError: .*missing 1 required positional argument: 'dout' \(input"),
    ("loss: a value per sample", lambda: loss(mine=lambda z, t: (np.ones(len(t)), softmax_ce(z, t)[1])),
     "ParityError", r"loss \(.*\): shape mismatch: scratch \(6,\), reference \(\)"),
    ("loss: NaN value", lambda: loss(mine=lambda z, t: (np.nan, softmax_ce(z, t)[1])), "ParityError",
     r"loss .*non-finite value"),
    ("loss: labels out of range", lambda: loss(target=np.full(6, 7)), "CallError",
     r"softmax_ce raised IndexError.* at .*test_api_misuse\.py.*target shape \(6,\) int64 in \[7, 7\]"),
    ("loss: float labels", lambda: loss(target=np.zeros(6)), "CallError", r"softmax_ce raised IndexError"),
    ("loss: target of another batch size", lambda: loss(target=np.zeros(4, dtype=int)), "ArgumentError",
     r"target has 4 rows, the input 6"),
    ("torch_loss: a string", lambda: loss(torch_loss="ce"), "ProtocolError",
     r"the torch loss must be a torch loss module or a function"),
    ("torch_loss: a class, not an instance", lambda: loss(torch_loss=torch.nn.CrossEntropyLoss), "ProtocolError",
     r"the class torch\.nn\.CrossEntropyLoss, not an instance"),
    ("torch_loss: a scratch (NumPy) loss", lambda: loss(torch_loss=_scratch_ce()), "ProtocolError",
     r"the torch loss CrossEntropyLoss has forward and backward: it is a NumPy layer or loss"),
    ("torch_loss: reduction none", lambda: loss(torch_loss=torch.nn.CrossEntropyLoss(reduction="none")),
     "ProtocolError", r"the torch loss torch\.nn\.CrossEntropyLoss returned shape \(6,\), not a scalar"),
    ("loss: input_shape an int", lambda: loss(input_shape=5), "ArgumentError", r"input_shape must be a tuple of ints"),
    ("loss: an empty batch", lambda: loss(input_shape=(0, 5)), "ArgumentError",
     r"input_shape \(0, 5\) has a size below 1"),
    ("loss: default target for 1-D logits", lambda: loss(input_shape=(6,)), "ArgumentError",
     r"default target needs logits of shape \(N, C\)"),
    ("loss: NaN logits", lambda: loss(input_shape=None, z=_nan_at((6, 5))), "ArgumentError",
     r"z has a non-finite value"),
    ("loss: negative seed", lambda: loss(seed=-1), "ArgumentError", r"seed must be an int >= 0"),
    ("loss: bad dtypes", lambda: loss(dtypes=("float16",)), "ArgumentError", r"no parity tolerance"),
    # --- check_steps ----------------------------------------------------------------------------
    ("steps: net is None", lambda: steps(net=None), "ProtocolError", r"NoneType has no forward"),
    ("steps: a parameter-free net", lambda: steps(net=ReLU()), "ProtocolError",
     r"ReLU has no parameters .*check a parameter-free layer with check_layer"),
    ("steps: a float16 net", lambda: steps(net=_float16_net()), "ArgumentError",
     r"no parity tolerance for dtype 'float16'"),
    ("steps: loss is None", lambda: steps(loss_fn=None), "ProtocolError", r"NoneType is not a loss"),
    ("steps: loss is the torch loss", lambda: steps(loss_fn=torch.nn.CrossEntropyLoss()), "ProtocolError",
     r"CrossEntropyLoss is a torch module"),
    ("steps: update is None", lambda: steps(update=None), "ProtocolError", r"is not an update rule"),
    ("steps: update is a torch optimizer", lambda: steps(update=torch.optim.SGD(mirror().parameters(), lr=0.1)),
     "ProtocolError", r"update is a torch optimizer"),
    ("steps: update of the wrong signature", lambda: steps(update=lambda params: None), "CallError",
     r"the update rule <lambda> raised TypeError"),
    ("steps: update returns a list", lambda: steps(update=lambda p, g: list(p.values())), "ProtocolError",
     r"the update function returned list"),
    ("steps: update returns transposed arrays", lambda: steps(update=lambda p, g: {k: v.T for k, v in p.items()}),
     "ProtocolError", r"'fc1\.weight' of shape \(12, 16\) for a parameter of shape \(16, 12\)"),
    ("steps: update object whose step takes an argument", lambda: steps(update=_StepTakesLr()), "CallError",
     r"the update rule _StepTakesLr\.step raised TypeError: .*missing 1 required positional argument: 'lr'$"),
    ("steps: torch_net is not a module", lambda: steps(torch_net=TwoLayerNet()), "ProtocolError",
     r"torch_net must be a torch\.nn\.Module"),
    ("steps: torch_net is a class", lambda: steps(torch_net=torch.nn.Linear), "ProtocolError",
     r"the class torch\.nn\.Linear, not an instance"),
    ("steps: torch_net names differ", lambda: steps(torch_net=torch.nn.Sequential(torch.nn.Linear(12, 5))),
     "ParameterMismatch", r"only torch: \['0\.weight', '0\.bias'\]"),
    ("steps: torch_net buffers without a counterpart", lambda: steps(torch_net=_buffered_mirror()), "warn",
     r"buffers \['fc2\.scale'\] .*not compared"),
    ("steps: torch_loss is None", lambda: steps(torch_loss=None), "ProtocolError",
     r"the torch loss must be a torch loss module or a function .*got NoneType"),
    ("steps: torch_loss is a class", lambda: steps(torch_loss=torch.nn.CrossEntropyLoss), "ProtocolError",
     r"the class torch\.nn\.CrossEntropyLoss, not an instance"),
    ("steps: torch_loss reduction none", lambda: steps(torch_loss=torch.nn.CrossEntropyLoss(reduction="none")),
     "CallError", r"the torch side .*raised RuntimeError: grad can be implicitly created only for scalar outputs"),
    ("steps: torch_optimizer is None", lambda: steps(torch_opt=None), "ProtocolError",
     r"torch_optimizer must be a torch\.optim\.Optimizer .*got NoneType"),
    ("steps: torch_optimizer is a class", lambda: steps(torch_opt=torch.optim.SGD), "ProtocolError",
     r"the class torch\.optim\.SGD, not an instance"),
    ("steps: torch_optimizer of another model", lambda: steps(torch_opt=_other_model_optimizer), "ProtocolError",
     r"torch_optimizer does not update torch_net's parameters"),
    ("steps: torch_optimizer function returns None", lambda: steps(torch_opt=lambda p: None), "ProtocolError",
     r"torch_optimizer\(params\) returned NoneType, not a torch\.optim\.Optimizer"),
    ("steps: batches is None", lambda: steps(batches=None), "ArgumentError",
     r"batches must be an iterable of \(x, y\) pairs, got NoneType"),
    ("steps: no batches", lambda: steps(batches=[]), "ArgumentError", r"check_steps got no batches"),
    ("steps: the batch generator raises", lambda: steps(batches=_broken_loader()), "CallError",
     r"batches \(getting batch 2\) raised ValueError: my loader broke at .*test_api_misuse\.py:\d+ in _broken_loader"),
    ("steps: batches of x only", lambda: steps(batches=[b[0] for b in data()]), "ArgumentError",
     r"batch 1 is ndarray, not a pair \(x, y\)"),
    ("steps: an empty batch", lambda: steps(batches=data(rows=0)), "ArgumentError", r"batch 1: x has no elements"),
    ("steps: a NaN batch", lambda: steps(batches=[(_nan_at((8, 12)), np.zeros(8, dtype=int))]), "ArgumentError",
     r"batch 1: x has a non-finite value"),
    ("steps: x and y of different lengths", lambda: steps(batches=[(np.ones((8, 12)), np.zeros(6, dtype=int))]),
     "ArgumentError", r"batch 1: x has 8 rows, y 6"),
    ("steps: batches of the wrong width", lambda: steps(batches=data(cols=10)), "CallError",
     r"TwoLayerNet\.forward raised ValueError: matmul.* on an input of shape \(8, 10\)"),
    ("steps: labels out of range", lambda: steps(batches=[(np.ones((8, 12)), np.full(8, 9))]), "CallError",
     r"softmax_ce raised IndexError"),
    ("steps: steps=-1", lambda: steps(steps=-1), "ArgumentError", r"steps must be an int >= 1 or None, got -1"),
    ("steps: steps=0", lambda: steps(steps=0), "ArgumentError", r"steps must be an int >= 1 or None, got 0"),
    ("steps: steps a string", lambda: steps(steps="3"), "ArgumentError", r"steps must be an int >= 1 or None"),
    ("steps: steps a float", lambda: steps(steps=2.5), "ArgumentError", r"steps must be an int >= 1 or None"),
    ("steps: name not a string", lambda: steps(name=3), "ArgumentError", r"name must be a string"),
    # --- the conventions and the controls (atol / rtol, skip, allowed_zero, params= map) ------------
    ("layer: params map entry not a torch name", lambda: layer(params={"weight": 3}), "ArgumentError",
     r"params\['weight'\] = 3: each entry maps your name to a torch parameter name"),
    ("layer: params neither a mode nor a map", lambda: layer(params=5), "ArgumentError",
     r"params must be one of \('random', 'keep'\) or a dict"),
    ("layer: params map names an array the layer lacks", lambda: layer(mine=_AttrAffine(), params={"V": "weight"}),
     "ProtocolError", r"names \['V'\], which _AttrAffine does not have as an array"),
    ("layer: params map onto a torch name that is not there", lambda: layer(mine=_AttrAffine(),
                                                                          params={"W": "kernel.T", "b": "bias"}),
     "ParameterMismatch", r"self.W is mapped to 'kernel', which the torch module has not"),
    ("layer: params map with the wrong layout", lambda: layer(mine=_AttrAffine(), params={"W": "weight", "b": "bias"}),
     "ParameterMismatch", r"W has shape \(4, 3\), torch's weight \(3, 4\): map it as 'weight.T'"),
    ("layer: attribute gradient never stored", lambda: layer(mine=_AttrAffine(store_dw=False)), "ProtocolError",
     r"stored no gradient for self.W: store dL/dW in self.dW or self.d_W"),
    ("layer: attribute gradient transposed", lambda: layer(mine=_AttrAffine(transposed_dw=True)), "ProtocolError",
     r"the gradient of self.W has shape \(3, 4\), self.W has shape \(4, 3\)"),
    ("layer: atol negative", lambda: layer(atol=-1), "ArgumentError", r"atol must be a number >= 0"),
    ("layer: rtol keyed by something not a dtype", lambda: layer(rtol={"float17": 1e-3}), "ArgumentError",
     r"rtol keys must be dtype names \('float64', 'float32'\), got \['float17'\]"),
    ("layer: skip not names", lambda: layer(skip=[1]), "ArgumentError", r"skip must be a list of names"),
    ("layer: skip a comparison that is not there", lambda: layer(skip=["grad/W"]), "ArgumentError",
     r"skip names \['grad/W'\], which are not comparisons of this check"),
    ("layer: allowed_zero not a parameter", lambda: layer(allowed_zero=["b"]), "ArgumentError",
     r"allowed_zero names \['b'\], which are not parameters of your layer: it has \['weight', 'bias'\]"),
    ("layer: CS231n pair without torch and without values", lambda: layer(mine=(_affine_fwd, _affine_bwd),
                                                                        torch_eq=None),
     "ProtocolError", r"no values for its parameters \['w', 'b'\].*nnparity.pair"),
    ("layer: pair of something not a function", lambda: nnparity.pair(1, _affine_bwd), "ArgumentError",
     r"pair: forward must be a function"),
    ("layer: CS231n config torch cannot give", lambda: layer(mine=(_conv_fwd, _affine_bwd)), "ProtocolError",
     r"argument 'conv_param' is a config dict nn-parity cannot read from Linear"),
    ("loss: skip a comparison that is not there", lambda: loss(skip=["out"]), "ArgumentError",
     r"skip names \['out'\], which are not comparisons"),
    ("loss: atol not a number", lambda: loss(atol="small"), "ArgumentError", r"atol must be a number >= 0"),
    ("steps: allowed_zero not a parameter", lambda: steps(allowed_zero=["fc3.bias"]), "ArgumentError",
     r"allowed_zero names \['fc3.bias'\]"),
    ("steps: skip a comparison that is not there", lambda: steps(skip=["grad/fc3.bias"]), "ArgumentError",
     r"skip names \['grad/fc3.bias'\], which are not comparisons"),
    ("steps: params map not a dict", lambda: steps(params="keep"), "ArgumentError",
     r"params must be a dict mapping your parameter names to torch's"),
    ("steps: rtol negative", lambda: steps(rtol=-1), "ArgumentError", r"rtol must be a number >= 0"),
]


class _LossBackwardTakesArg:
    def forward(self, z, target):
        self.z, self.target = z, target
        return softmax_ce(z, target)[0]

    def backward(self, dout):   # the scratch convention is backward() -> dL/dinput
        return softmax_ce(self.z, self.target)[1] * dout


class _StepTakesLr:
    def step(self, lr):
        pass


def _broken_loader():
    yield data()[0]
    raise ValueError("my loader broke")


def _scratch_ce():
    import scratch

    return scratch.CrossEntropyLoss("mean")


def _setattr(obj, change):
    change(obj)
    return obj


def _grads_as_list(self, dy):
    self.grads = [dy.T @ self.x, dy.sum(axis=0)]
    return dy @ self.params["weight"]


def _accumulate(self, dy):
    self.grads["weight"] += dy.T @ self.x
    self.grads["bias"] += dy.sum(axis=0)
    return dy @ self.params["weight"]


def _promoting_forward(self, x):
    self.x = x
    return np.maximum(x, 0).astype(np.float64)


def _relu_in_place(self, x):
    self.x = x.copy()
    np.maximum(x, 0, out=x)
    return x


class _AttrAffine:
    """The attribute convention, W stored (in, out); optional slips in where dW goes."""

    def __init__(self, store_dw=True, transposed_dw=False):
        rng = np.random.default_rng(0)
        self.W, self.b = rng.standard_normal((4, 3)), np.zeros(3)
        self.store_dw, self.transposed_dw = store_dw, transposed_dw

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dy):
        if self.store_dw:
            self.dW = (dy.T @ self.x) if self.transposed_dw else self.x.T @ dy
        self.db = dy.sum(axis=0)
        return dy @ self.W.T


def _affine_fwd(x, w, b):
    return x @ w + b, (x, w)


def _affine_bwd(dout, cache):
    x, w = cache
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


def _conv_fwd(x, w, b, conv_param):
    return x @ w + b, (x, w)


def _renamed_linear():
    lin = Linear()
    lin.params = {"W": lin.params["weight"], "b": lin.params["bias"]}
    return lin


def _float16_net():
    net = TwoLayerNet()
    net.params = {k: v.astype(np.float16) for k, v in net.params.items()}
    return net


def _worded_by_nnparity(exc) -> bool:
    """Raised by a ``raise`` statement of nn-parity itself (its own words, not an exception of
    torch, NumPy or Python that passed through its code)."""
    frames = traceback.extract_tb(exc.__traceback__)
    package = os.path.dirname(os.path.abspath(nnparity.__file__))
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(package + os.sep) and \
        (frames[-1].line or "").lstrip().startswith("raise")


def _raised_by_nnparity(exc) -> bool:
    """The innermost frame of the traceback is nn-parity's own code, and no other exception
    is chained to it (``raise ... from None``): the user sees nn-parity's words only."""
    frames = traceback.extract_tb(exc.__traceback__)
    package = os.path.dirname(os.path.abspath(nnparity.__file__))
    inner = os.path.abspath(frames[-1].filename) if frames else ""
    chained = exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__)
    return inner.startswith(package + os.sep) and not chained


def _error_class(name):
    from nnparity.diagnosis import gradcheck
    from nnparity.core import parity

    for module in (adapters, parity, gradcheck):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(name)


def classify(row) -> tuple[str, str]:
    """``(verdict, what happened)`` for one row: *answered* (the row's exception and phrase),
    *worded* (nn-parity's own words, but not the answer: a misleading message), *raw* (any other
    exception: torch's, NumPy's, Python's, the user's code's), *silent* (no error, no warning)."""
    _, call, expect, phrase = row
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call()
        except Exception as e:   # noqa: BLE001 - classifying whatever escapes is the point
            what = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]
            if not _worded_by_nnparity(e):
                return "raw", what
            ok = type(e).__name__ == expect and re.search(phrase, str(e)) and _raised_by_nnparity(e)
            return ("answered" if ok else "worded"), what
    said = " ".join(str(w.message) for w in caught)
    if expect == "warn" and re.search(phrase, said) and re.search(phrase, result.message()):
        return "answered", said[:160]
    return "silent", f"passed: {result.message().splitlines()[0][:140]}" if hasattr(result, "message") else "passed"


@pytest.mark.parametrize("row", MISUSES, ids=[row[0] for row in MISUSES])
def test_misuse_is_answered_in_words(row):
    name, call, expect, phrase = row
    if expect == "warn":
        with pytest.warns(adapters.NNParityWarning, match=phrase):
            result = call()
        assert re.search(phrase, result.message()), result.message()
        return
    with pytest.raises(_error_class(expect)) as e:
        call()
    assert re.search(phrase, str(e.value)), str(e.value)
    assert _raised_by_nnparity(e.value), "".join(traceback.format_exception(e.value))
    assert str(e.value).splitlines()[0].strip(), "the first line must say what is wrong"


def test_the_table_covers_every_entry_point_and_outcome():
    names = [row[0] for row in MISUSES]
    assert len(names) == len(set(names))
    kinds = {row[2] for row in MISUSES}
    assert {"ArgumentError", "ProtocolError", "ParameterMismatch", "CallError", "ParityError", "warn"} <= kinds
    assert sum(n.startswith(("loss", "torch_loss")) for n in names) >= 15
    assert sum(n.startswith("steps") for n in names) >= 25


if __name__ == "__main__":
    verdicts = OrderedDict()
    for row in MISUSES:
        verdict, what = classify(row)
        verdicts.setdefault(verdict, []).append(row[0])
        print(f"{verdict:8} {row[0]:55} {what}")
    print(f"\n{len(MISUSES)} misuses: " + ", ".join(f"{k} {len(v)}" for k, v in verdicts.items()))
