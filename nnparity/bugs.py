"""A catalogue of canonical derivation bugs, as data, for ``nnparity selftest``.

Each ``Bug`` names one scratch function (``target = "module.Class.method"``) and a
``patch``: given the correct function, it returns the same function with one
classic slip. ``bug.applied()`` swaps it in for the duration of a ``with`` block
and always restores the original: no source file is ever edited.

A bug applies to a check when the checked network uses the target's class (and
any ``applies`` condition holds, e.g. "some Linear has a bias") and the check's
recipe reaches the code path (``requires``: momentum, a mean-reduced loss).

Adding a bug = one ``Bug(...)`` entry in ``CATALOGUE`` with its patch function.
The target class needs a unit check in ``nnparity.selftest.UNIT_CHECKS``.

A slip that needs something the correct layer never keeps (the classic max-pool
backward ``x == max`` needs the forward's input, which ``MaxPool2d`` does not
cache) names the extra, slip-free patch in ``also``: it is applied and undone
together with the target's.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Requirement:
    """A recipe condition a bug needs to be reachable, and the variant that meets it."""

    name: str
    met: Callable            # recipe -> bool
    variant: tuple           # (field, value) pairs for Recipe.replace
    label: str               # how the variant column is named

    def apply(self, recipe):
        return recipe.replace(**dict(self.variant))


MOMENTUM = Requirement("momentum", lambda r: r.momentum > 0, (("momentum", 0.9),), "momentum 0.9")
MEAN = Requirement("mean", lambda r: r.reduction == "mean", (("reduction", "mean"),), "mean loss")
# lr * lr = lr at lr 1 (mlp16's recipe): "lr applied twice" is then invisible, not missed
LR_NOT_ONE = Requirement("lr", lambda r: r.lr != 1.0, (("lr", 0.5),), "lr 0.5")
REQUIREMENTS = (MOMENTUM, MEAN, LR_NOT_ONE)


@dataclass(frozen=True)
class Bug:
    """One canonical derivation slip, applied by patching one scratch function.

    Attributes:
        name: short id (``linear-dW-not-transposed``).
        description: the slip in words, as a learner would make it.
        target: ``"module.Class.method"`` (or ``"module.function"``) to patch.
        patch: ``patch(original) -> replacement`` (the replacement has the original's signature).
        requires: the recipe condition that makes the bug reachable, if any.
        applies: extra condition on the built scratch model (``model -> bool``).
        issue_item: which item of the issue's list it implements.
        also: extra ``(target, patch)`` pairs applied with the main one, for what the
            slip needs and the correct code does not keep (``keep_input``); never a second slip.
    """

    name: str
    description: str
    target: str
    patch: Callable
    requires: Requirement | None = None
    applies: Callable | None = None
    issue_item: str = ""
    also: tuple = ()

    def resolve(self, target: str | None = None):
        """(owner, attribute name): the class or module holding the target (or ``target``)."""
        parts = (target or self.target).split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                owner = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for name in parts[cut:-1]:
                owner = getattr(owner, name)
            return owner, parts[-1]
        raise ImportError(f"cannot resolve bug target {self.target!r}")

    @property
    def target_class(self):
        owner, _ = self.resolve()
        return owner if isinstance(owner, type) else None

    def available(self) -> bool:
        """Whether the target (and every ``also`` target) exists in this checkout."""
        try:
            owners = [self.resolve(t) for t in (self.target, *(t for t, _ in self.also))]
        except (ImportError, AttributeError):
            return False
        return all(hasattr(owner, attr) for owner, attr in owners)

    def uses_target(self, *objects) -> bool:
        """Whether any of ``objects`` (a model's modules, its loss, its optimizer) runs the target."""
        cls = self.target_class
        return cls is not None and any(isinstance(o, cls) for o in objects)

    @contextlib.contextmanager
    def counted(self):
        """Count the calls of the (correct) target: yields a list that grows by one per call.
        A target a network never calls (toy221 writes its sigmoid backward out by hand)
        makes the bug unreachable there, whatever classes the model holds."""
        calls = []

        def counting(original):
            def wrapper(*args, **kwargs):
                calls.append(1)
                return original(*args, **kwargs)
            return wrapper

        with self.applied(counting):
            yield calls

    def originals(self) -> dict:
        """``{target: the function there now}`` for the target and every ``also`` target."""
        return {t: getattr(*self.resolve(t)) for t in (self.target, *(t for t, _ in self.also))}

    @contextlib.contextmanager
    def applied(self, patch=None):
        """Swap the buggy function (or ``patch(original)``) in, with the ``also`` patches;
        the originals are restored on exit, whatever happens."""
        with contextlib.ExitStack() as stack:
            for target, fn in self.also:
                stack.enter_context(_swapped(*self.resolve(target), fn))
            stack.enter_context(_swapped(*self.resolve(), patch or self.patch))
            yield self


@contextlib.contextmanager
def _swapped(owner, attr, patch):
    """``owner.attr = patch(owner.attr)`` for the block; the class's own entry (or its absence)
    comes back on exit."""
    missing = object()
    own = owner.__dict__.get(attr, missing)
    setattr(owner, attr, patch(getattr(owner, attr)))
    try:
        yield
    finally:
        if own is missing:
            delattr(owner, attr)
        else:
            setattr(owner, attr, own)


# --- the slips ----------------------------------------------------------------------
# Each patch reproduces the correct function with exactly one slip, marked BUG.

def _linear_dw_not_transposed(original):
    def backward(self, dy):
        # BUG: x^T dy has shape (in, out); reshaped to W's (out, in) instead of transposed
        self.weight.grad += (self.x.T @ dy).reshape(self.weight.grad.shape)
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0)
        return dy @ self.weight.data if self.needs_input_grad else None
    return backward


def _linear_db_averaged(original):
    def backward(self, dy):
        self.weight.grad += dy.T @ self.x
        if self.bias is not None:
            self.bias.grad += dy.mean(axis=0)  # BUG: averaged over the batch instead of summed
        return dy @ self.weight.data if self.needs_input_grad else None
    return backward


def _onehot_grad(self):
    dz = self.p.copy()
    dz[np.arange(len(self.target)), self.target] -= 1
    return dz


def _ce_wrong_sign(original):
    def backward(self):
        dz = -_onehot_grad(self)  # BUG: onehot(y) - softmax(z), the sign flipped
        if self.reduction == "mean":
            dz /= len(self.target)
        return dz
    return backward


def _ce_missing_1_over_n(original):
    def backward(self):
        return _onehot_grad(self)  # BUG: mean reduction, but the 1/N is missing
    return backward


def _ce_factor_two(original):
    def backward(self):
        dz = 2 * _onehot_grad(self)  # BUG: 2 (softmax - onehot), the squared error's factor 2 carried over
        if self.reduction == "mean":
            dz /= len(self.target)
        return dz
    return backward


def _ce_softmax_twice(original):
    def backward(self):
        g = _onehot_grad(self)
        # BUG: softmax - onehot already contains the softmax's Jacobian; applying it again
        # (dz = J^T g, J = diag(p) - p p^T) double-counts the softmax
        dz = self.p * (g - (self.p * g).sum(axis=1, keepdims=True))
        if self.reduction == "mean":
            dz /= len(self.target)
        return dz
    return backward


def _relu_straight_through(original):
    def backward(self, dy):
        # BUG (the linear10 document's slip): the mask is set to 0 below zero and then to
        # 1 at or above zero, i.e. everywhere: the gradient passes straight through
        return dy * np.ones_like(self.mask)
    return backward


def _sigmoid_at_preactivation(original):
    def backward(self, dy):
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            x = np.log(self.y) - np.log1p(-self.y)  # the pre-activation (the cache holds y = s(x))
            return dy * x * (1 - x)  # BUG: y (1 - y) evaluated at the pre-activation x instead of at y
    return backward


def _sgd_momentum_order(original):
    def step(self):
        for name, p in self.params.items():
            g = p.grad
            if self.momentum:
                buf = self.buffers.get(name)
                if buf is None:
                    buf = self.buffers[name] = g.copy()
                else:
                    buf += g  # BUG: the two in-place updates swapped: buf = momentum * (buf + g)
                    buf *= self.momentum
                g = buf
            p.data -= self.lr * g
    return step


def _sgd_lr_twice(original):
    def step(self):
        for name, p in self.params.items():
            g = p.grad
            if self.momentum:
                buf = self.buffers.get(name)
                if buf is None:
                    buf = self.buffers[name] = g.copy()
                else:
                    buf *= self.momentum
                    buf += g
                g = buf
            p.data -= self.lr * (self.lr * g)  # BUG: the learning rate applied twice
    return step


def _sgd_ascent(original):
    def step(self):
        for name, p in self.params.items():
            g = p.grad
            if self.momentum:
                buf = self.buffers.get(name)
                if buf is None:
                    buf = self.buffers[name] = g.copy()
                else:
                    buf *= self.momentum
                    buf += g
                g = buf
            p.data += self.lr * g  # BUG: wrong sign, a step up the gradient
    return step


# BatchNorm2d (scratch.norm): the forward's two variances, and the backward's mean term

def _bn_forward_unbiased(original):
    from scratch.conv import check_images
    from scratch.norm import _AXES, _per_channel

    def forward(self, x):
        check_images(x, "BatchNorm2d", self.num_features)
        self.in_shape = x.shape
        if self.training:
            m = x.shape[0] * x.shape[2] * x.shape[3]
            if m < 2:
                raise ValueError(f"BatchNorm2d: expected more than 1 value per channel in training, "
                                 f"got input shape {x.shape}")
            mu = x.mean(axis=_AXES, dtype=np.float64).astype(x.dtype)
            xc = x - _per_channel(mu)
            sq_sum = np.einsum("nchw,nchw->c", xc, xc, dtype=np.float64)
            # BUG: normalised with the unbiased variance (divided by M - 1), the one torch keeps for
            # running_var only; the batch is normalised with the biased one (divided by M)
            var = x.var(axis=_AXES, ddof=1, dtype=np.float64).astype(x.dtype)
            mom = self.momentum
            self.running_mean[...] = (1 - mom) * self.running_mean + mom * mu
            self.running_var[...] = (1 - mom) * self.running_var + mom * (sq_sum / (m - 1)).astype(x.dtype)
            self.num_batches_tracked[...] += 1
        else:
            xc = x - _per_channel(self.running_mean)
            var = self.running_var
        self.batch_stats = self.training
        self.xc = xc
        self.inv_std = 1 / np.sqrt(var + self.eps)
        y = xc * _per_channel(self.inv_std * self.weight.data)
        y += _per_channel(self.bias.data)
        return y
    return forward


def _bn_running_var_biased(original):
    from scratch.conv import check_images
    from scratch.norm import _AXES, _per_channel

    def forward(self, x):
        check_images(x, "BatchNorm2d", self.num_features)
        self.in_shape = x.shape
        if self.training:
            m = x.shape[0] * x.shape[2] * x.shape[3]
            if m < 2:
                raise ValueError(f"BatchNorm2d: expected more than 1 value per channel in training, "
                                 f"got input shape {x.shape}")
            mu = x.mean(axis=_AXES, dtype=np.float64).astype(x.dtype)
            xc = x - _per_channel(mu)
            sq_sum = np.einsum("nchw,nchw->c", xc, xc, dtype=np.float64)
            var = (sq_sum / m).astype(x.dtype)
            mom = self.momentum
            self.running_mean[...] = (1 - mom) * self.running_mean + mom * mu
            # BUG: the batch's (biased) var reused for the running estimate; torch keeps the unbiased
            # var * M / (M - 1) there
            self.running_var[...] = (1 - mom) * self.running_var + mom * var
            self.num_batches_tracked[...] += 1
        else:
            xc = x - _per_channel(self.running_mean)
            var = self.running_var
        self.batch_stats = self.training
        self.xc = xc
        self.inv_std = 1 / np.sqrt(var + self.eps)
        y = xc * _per_channel(self.inv_std * self.weight.data)
        y += _per_channel(self.bias.data)
        return y
    return forward


def _bn_backward_no_mean_term(original):
    from scratch.norm import _AXES, _per_channel

    def backward(self, dy):
        dbeta = dy.sum(axis=_AXES, dtype=np.float64)
        dot = np.einsum("nchw,nchw->c", dy, self.xc, dtype=np.float64)
        self.weight.grad += (dot * self.inv_std).astype(dy.dtype)
        self.bias.grad += dbeta.astype(dy.dtype)
        scale = _per_channel(self.weight.data * self.inv_std)
        if not self.batch_stats:
            return dy * scale
        m = dy.shape[0] * dy.shape[2] * dy.shape[3]
        k = (dot * self.inv_std.astype(np.float64) ** 2 / m).astype(dy.dtype)
        dx = self.xc * _per_channel(k)
        np.subtract(dy, dx, out=dx)
        # BUG: dx = gamma/sigma (dy - xhat mean(dy xhat)): the - mean(dy) term, the path through the
        # batch mean mu, is dropped (the line "dx -= mean(dy)" forgotten)
        dx *= scale
        return dx
    return backward


# Dropout (scratch.dropout)

def _dropout_no_inverse_scale(original):
    def forward(self, x):
        self.in_shape = x.shape
        if not self.training or self.p == 0:
            self.mask, self.noise = None, None
            return x
        size = int(np.prod(x.shape))
        bits = self.rng.bit_generator.random_raw((size + 1) // 2).view(np.uint32)[:size]
        self.mask = (bits >= self._threshold).reshape(x.shape)
        self.noise = self.mask.astype(x.dtype)  # BUG: y = x * mask; the survivors' 1 / (1 - p) forgotten
        return x * self.noise  # (backward's dy * noise inherits the slip, as a learner's dy * mask would)
    return forward


# MaxPool2d (scratch.pool): where the window's gradient goes

def _upsample(a, k):
    """(N, C, H', W') -> (N, C, k H', k W'): every value repeated over its k x k window."""
    return a.repeat(k, axis=2).repeat(k, axis=3)


def _maxpool_grad_everywhere(original):
    def backward(self, dy):
        n, c, h, w = self.in_shape
        k, (_, _, ho, wo) = self.kernel_size, self.out_shape
        dx = np.zeros((n, c, h, w), dtype=dy.dtype)
        dx[:, :, :k * ho, :k * wo] = _upsample(dy, k)  # BUG: dy copied to every element of the window, no mask
        return dx
    return backward


def keep_input(original):
    """Not a slip: the forward also keeps its input, as the learner's max-pool does (the
    correct ``MaxPool2d`` keeps only the chosen offsets)."""
    def forward(self, x):
        self.x = x
        return original(self, x)
    return forward


def _maxpool_grad_every_tie(original):
    def backward(self, dy):
        n, c, h, w = self.in_shape
        k, (_, _, ho, wo) = self.kernel_size, self.out_shape
        x = self.x[:, :, :k * ho, :k * wo]
        y = x.reshape(n, c, ho, k, wo, k).max(axis=(3, 5))
        dx = np.zeros((n, c, h, w), dtype=dy.dtype)
        # BUG: the classic mask x == max: every element that ties the maximum gets the whole dy
        # (torch, and the correct layer, give it to the first one only)
        dx[:, :, :k * ho, :k * wo] = (x == _upsample(y, k)) * _upsample(dy, k)
        return dx
    return backward


# Conv2d (scratch.conv): the weight gradient's layout

def _conv_backward(weight_grad):
    """Conv2d.backward with the weight gradient laid out by ``weight_grad(dw2, (o, kh, kw, c))``,
    dw2 = dy^T cols of shape (C_out, kH*kW*C_in); everything else as in the correct layer."""
    def backward(self, dy):
        n, c, h, w = self.in_shape
        _, o, ho, wo = self.out_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        dy2 = dy.transpose(0, 2, 3, 1).reshape(n * ho * wo, o)
        cols = self.cols if self.cols is not None else self._im2col(self.x)
        self.weight.grad += weight_grad(dy2.T @ cols, (o, kh, kw, c))
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0, dtype=np.float64).astype(dy2.dtype)
        if not self.needs_input_grad:
            return None
        dxp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dy2.dtype)
        for u in range(kh):
            for v in range(kw):
                block = (dy2 @ self.weight.data[:, :, u, v]).reshape(n, ho, wo, c)
                dxp[:, u:u + sh * (ho - 1) + 1:sh, v:v + sw * (wo - 1) + 1:sw, :] += block
        return dxp[:, ph:ph + h, pw:pw + w, :].transpose(0, 3, 1, 2)
    return backward


def _conv_dw_flipped(original):
    def weight_grad(dw2, okkc):
        dw = dw2.reshape(okkc).transpose(0, 3, 1, 2)  # (C_out, C_in, kH, kW), correct so far
        return dw[:, :, ::-1, ::-1]  # BUG: flipped (rotated 180 degrees), as if the forward were a true convolution
    return _conv_backward(weight_grad)


def _conv_dw_swapped_axes(original):
    def weight_grad(dw2, okkc):
        o, kh, kw, c = okkc
        # BUG: permuted to (C_in, C_out, kH, kW), the in/out channel axes swapped, then reshaped to
        # W's (C_out, C_in, kH, kW) to make the shapes agree
        return dw2.reshape(okkc).transpose(3, 0, 1, 2).reshape(o, c, kh, kw)
    return _conv_backward(weight_grad)


def _has_bias(model) -> bool:
    from scratch.layers import Linear

    return any(isinstance(m, Linear) and m.bias is not None for _, m in model.named_modules())


CATALOGUE = (
    Bug("linear-dW-not-transposed", "Linear weight gradient: x^T dy reshaped to W's shape instead of transposed "
        "(dy^T x)", "scratch.layers.Linear.backward", _linear_dw_not_transposed, issue_item="missing transpose"),
    Bug("linear-db-averaged", "Linear bias gradient averaged over the batch instead of summed",
        "scratch.layers.Linear.backward", _linear_db_averaged, applies=_has_bias,
        issue_item="bias gradient not summed over the batch"),
    Bug("ce-grad-wrong-sign", "softmax-cross-entropy gradient onehot - softmax instead of softmax - onehot",
        "scratch.losses.CrossEntropyLoss.backward", _ce_wrong_sign, issue_item="wrong sign"),
    Bug("ce-missing-1/N", "mean-reduced cross-entropy gradient without the 1/N",
        "scratch.losses.CrossEntropyLoss.backward", _ce_missing_1_over_n, requires=MEAN,
        issue_item="missing 1/N"),
    Bug("ce-grad-factor-2", "softmax-cross-entropy gradient off by a factor 2 (2 (softmax - onehot))",
        "scratch.losses.CrossEntropyLoss.backward", _ce_factor_two,
        issue_item="softmax-CE gradient off by a factor"),
    Bug("ce-softmax-double-counted", "the softmax Jacobian applied again to softmax - onehot",
        "scratch.losses.CrossEntropyLoss.backward", _ce_softmax_twice,
        issue_item="softmax-CE gradient double-counted"),
    Bug("relu-straight-through", "ReLU slope 1 at and below 0: the gradient passes straight through "
        "(the linear10 document's slip)", "scratch.layers.ReLU.backward", _relu_straight_through,
        issue_item="ReLU slope 1 at or below 0"),
    Bug("sigmoid-at-preactivation", "sigmoid derivative s(1 - s) evaluated at the pre-activation x instead of at "
        "s(x)", "scratch.layers.Sigmoid.backward", _sigmoid_at_preactivation,
        issue_item="sigmoid derivative taken at the pre-activation"),
    Bug("sgd-momentum-order", "momentum buffer updated in the wrong order: momentum * (buf + g) instead of "
        "momentum * buf + g", "scratch.optim.SGD.step", _sgd_momentum_order, requires=MOMENTUM,
        issue_item="momentum buffer update in the wrong order"),
    Bug("sgd-lr-twice", "the learning rate applied twice: p -= lr * (lr * g)", "scratch.optim.SGD.step",
        _sgd_lr_twice, requires=LR_NOT_ONE, issue_item="lr applied twice"),
    Bug("sgd-wrong-sign", "the update adds the gradient: p += lr * g (gradient ascent)", "scratch.optim.SGD.step",
        _sgd_ascent, issue_item="wrong sign"),
    Bug("bn-forward-unbiased-variance", "BatchNorm training forward normalises with the unbiased batch variance "
        "x.var(ddof=1) instead of the biased one", "scratch.norm.BatchNorm2d.forward", _bn_forward_unbiased,
        issue_item="BatchNorm forward using the unbiased variance"),
    Bug("bn-backward-missing-mean-term", "BatchNorm backward without the -mean(dy) term (the gradient through the "
        "batch mean dropped)", "scratch.norm.BatchNorm2d.backward", _bn_backward_no_mean_term,
        issue_item="BatchNorm backward missing the mean term"),
    Bug("bn-running-var-biased", "BatchNorm running_var updated with the biased batch variance instead of the "
        "unbiased one", "scratch.norm.BatchNorm2d.forward", _bn_running_var_biased,
        issue_item="running_var updated with the biased variance"),
    Bug("dropout-no-inverse-scale", "dropout keeps x * mask without the 1/(1-p) scale of inverted dropout",
        "scratch.dropout.Dropout.forward", _dropout_no_inverse_scale,
        issue_item="dropout without the 1/(1-p) scale"),
    Bug("maxpool-grad-to-every-element", "max-pool gradient copied to every element of the window, not only the "
        "maximum", "scratch.pool.MaxPool2d.backward", _maxpool_grad_everywhere,
        issue_item="max-pool gradient sent to every element"),
    Bug("maxpool-grad-to-every-tied-element", "max-pool gradient sent to every element equal to the window's max "
        "(mask x == max) instead of the first one", "scratch.pool.MaxPool2d.backward", _maxpool_grad_every_tie,
        also=(("scratch.pool.MaxPool2d.forward", keep_input),),
        issue_item="max-pool gradient sent to every tied element"),
    Bug("conv-dW-flipped-kernel", "Conv2d weight gradient flipped (rotated 180 degrees), as for a true "
        "convolution", "scratch.conv.Conv2d.backward", _conv_dw_flipped,
        issue_item="conv weight gradient with flipped kernel"),
    Bug("conv-dW-swapped-axes", "Conv2d weight gradient with the in/out channel axes swapped (reshaped to W's "
        "shape)", "scratch.conv.Conv2d.backward", _conv_dw_swapped_axes,
        issue_item="conv weight gradient with swapped axes"),
)


def catalogue(available_only: bool = True) -> tuple:
    """The bugs whose target exists in this checkout (all of them with ``available_only=False``)."""
    return tuple(b for b in CATALOGUE if b.available() or not available_only)


def get_bug(name: str) -> Bug:
    for b in CATALOGUE:
        if b.name == name:
            return b
    raise KeyError(f"unknown bug {name!r}; known: {', '.join(b.name for b in CATALOGUE)}")
