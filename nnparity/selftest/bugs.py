"""A catalogue of canonical derivation bugs, as data, for ``nnparity selftest``.

Each ``Bug`` names one small helper of a scratch layer (``target = "module.Class._helper"``:
the few lines a slip changes, such as ``Linear._weight_grad`` or ``SGD._update``, never a
whole ``forward``/``backward``/``step``) and a ``patch``: given the correct helper, it
returns the helper with one classic slip, writing out only what the slip changes (calling
the correct helper for the rest). ``bug.applied()`` swaps it in for the duration of a
``with`` block and always restores the original: no source file is ever edited, and a
refactor of a layer's forward or backward is tested as it stands.

A bug applies to a check when the checked network uses the target's class (and
any ``applies`` condition holds, e.g. "some Linear has a bias") and the check's
recipe reaches the code path (``requires``: momentum, a mean-reduced loss).

Adding a bug = one ``Bug(...)`` entry in ``CATALOGUE`` with its patch function; when
the slip's lines are not yet a helper of their own, factor them out of the layer first
(a one-line docstring saying what the helper computes). The target class needs an entry in
the layer-case table (``nnparity.diagnosis.layercases``): the selftest's unit column runs
the battery (``nnparity.diagnosis.battery``) on it.

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
        target: ``"module.Class._helper"`` to patch: a small helper of the layer, not a whole method.
        patch: ``patch(original) -> replacement`` (the replacement has the original's signature).
        requires: the recipe condition that makes the bug reachable, if any.
        applies: extra condition on the built scratch model (``model -> bool``).
        issue_item: which item of the issue's list it implements.
        also: extra ``(target, patch)`` pairs applied with the main one, for what the
            slip needs and the correct code does not keep (``keep_input``); never a second slip.
        kinds: the layer kinds of the table (``nnparity.diagnosis.layercases``) the slip is in, for a
            target that is no layer's method (an initialisation); default: the target class's kinds.
        unseen_by_parity: why step parity cannot see the slip by construction (every step zeroes the
            gradients before one backward; the torch side receives a copy of the initialisation; the
            data are finite; the selftest's float64 sums in float64 either way): its parity columns
            are then not applicable, and the battery (the unit column, ``nnparity check``'s battery
            section) is what must kill it.
    """

    name: str
    description: str
    target: str
    patch: Callable
    requires: Requirement | None = None
    applies: Callable | None = None
    issue_item: str = ""
    also: tuple = ()
    kinds: tuple = ()
    unseen_by_parity: str = ""

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
        """The class whose method the slip replaces (None for a module function: an initialisation)."""
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
# Each patch overrides one small helper of a scratch layer (its target) with exactly one slip,
# marked BUG; ``original`` is the correct helper, for a slip that changes only part of it.

def _linear_dw_not_transposed(original):
    def weight_grad(self, dy):
        # BUG: x^T dy has shape (in, out); reshaped to W's (out, in) instead of transposed
        return (self.x.T @ dy).reshape(self.weight.grad.shape)
    return weight_grad


def _linear_db_averaged(original):
    def bias_grad(self, dy):
        return dy.mean(axis=0)  # BUG: averaged over the batch instead of summed
    return bias_grad


def _ce_wrong_sign(original):
    def logit_grad(self):
        return -original(self)  # BUG: onehot(y) - softmax(z), the sign flipped
    return logit_grad


def _ce_missing_1_over_n(original):
    def reduced(self, dz):
        return dz  # BUG: mean reduction, but the 1/N is missing
    return reduced


def _ce_factor_two(original):
    def logit_grad(self):
        return 2 * original(self)  # BUG: 2 (softmax - onehot), the squared error's factor 2 carried over
    return logit_grad


def _ce_softmax_twice(original):
    def logit_grad(self):
        g = original(self)
        # BUG: softmax - onehot already contains the softmax's Jacobian; applying it again
        # (dz = J^T g, J = diag(p) - p p^T) double-counts the softmax
        return self.p * (g - (self.p * g).sum(axis=1, keepdims=True))
    return logit_grad


def _relu_straight_through(original):
    def slope(self):
        # BUG (the linear10 document's slip): the mask is set to 0 below zero and then to
        # 1 at or above zero, i.e. everywhere: the gradient passes straight through
        return np.ones_like(self.mask)
    return slope


def _sigmoid_at_preactivation(original):
    def s(self):
        # BUG: s (1 - s) evaluated at the pre-activation x instead of at s(x) (x recovered from the cache y)
        with np.errstate(divide="ignore"):
            return np.log(self.y) - np.log1p(-self.y)
    return s


def _sgd_momentum_order(original):
    def momentum_buffer(self, buf, g):
        if buf is None:
            return original(self, buf, g)
        buf += g  # BUG: the two in-place updates swapped: buf = momentum * (buf + g)
        buf *= self.momentum
        return buf
    return momentum_buffer


def _sgd_lr_twice(original):
    def update(self, g):
        return self.lr * (self.lr * g)  # BUG: the learning rate applied twice
    return update


def _sgd_ascent(original):
    def update(self, g):
        return -(self.lr * g)  # BUG: wrong sign, p += lr * g: a step up the gradient
    return update


# BatchNorm2d (scratch.norm): the forward's two variances, and the backward's mean term

def _bn_forward_unbiased(original):
    def batch_var(self, sq_sum, m, dtype):
        # BUG: normalised with the unbiased variance (divided by M - 1), the one torch keeps for
        # running_var only; the batch is normalised with the biased one (divided by M)
        return (sq_sum / (m - 1)).astype(dtype)
    return batch_var


def _bn_running_var_biased(original):
    def running_var_sample(self, sq_sum, m, dtype):
        # BUG: the batch's (biased) var reused for the running estimate; torch keeps the unbiased
        # var * M / (M - 1) there
        return self._batch_var(sq_sum, m, dtype)
    return running_var_sample


def _bn_backward_no_mean_term(original):
    def mean_term(self, dbeta, m, dtype):
        # BUG: dx = gamma/sigma (dy - xhat mean(dy xhat)): the - mean(dy) term, the path through the
        # batch mean mu, is dropped (the line "dx -= mean(dy)" forgotten)
        return dtype.type(0)
    return mean_term


# Dropout (scratch.dropout)

def _dropout_no_inverse_scale(original):
    def keep_scale(self, dtype):
        # BUG: y = x * mask; the survivors' 1 / (1 - p) forgotten (backward's dy * noise inherits
        # the slip, as a learner's dy * mask would)
        return dtype.type(1)
    return keep_scale


# MaxPool2d (scratch.pool): where the window's gradient goes

def _maxpool_grad_everywhere(original):
    def chosen(self, i):
        return np.ones(self.argmax.shape, dtype=bool)  # BUG: dy copied to every element of the window, no mask
    return chosen


def keep_input(original):
    """Not a slip: the forward also keeps its input, as the learner's max-pool does (the
    correct ``MaxPool2d`` keeps only the chosen offsets)."""
    def forward(self, x):
        self.x = x
        return original(self, x)
    return forward


def _maxpool_grad_every_tie(original):
    def chosen(self, i):
        views = self._windows(self.x.transpose(0, 2, 3, 1))  # the input's windows, as forward takes them
        # BUG: the classic mask x == max: every element that ties the maximum gets the whole dy
        # (torch, and the correct layer, give it to the first one only)
        return views[i] == np.max(views, axis=0)
    return chosen


# Conv2d (scratch.conv): the weight gradient's layout

def _conv_dw_flipped(original):
    def weight_grad_layout(self, dw2):
        # BUG: (C_out, C_in, kH, kW) correct so far, then flipped (rotated 180 degrees), as if the
        # forward were a true convolution
        return original(self, dw2)[:, :, ::-1, ::-1]
    return weight_grad_layout


def _conv_dw_swapped_axes(original):
    def weight_grad_layout(self, dw2):
        o, c, kh, kw = self.weight.data.shape
        # BUG: permuted to (C_in, C_out, kH, kW), the in/out channel axes swapped, then reshaped to
        # W's (C_out, C_in, kH, kW) to make the shapes agree
        return dw2.reshape(o, kh, kw, c).transpose(3, 0, 1, 2).reshape(o, c, kh, kw)
    return weight_grad_layout


# The four classes step parity cannot see (issue 14): accumulation, non-finite routing, float32
# accumulation, initialisation of a conv shape

def _conv_grad_assigned(original):
    def accumulate(self, param: Parameter, grad) -> None:  # noqa: F821 (the annotation is a string)
        param.grad[...] = grad  # BUG: = where += is due: a second backward overwrites the first's gradient
    return accumulate


def _maxpool_product_for_nonfinite(original):
    def route(self, view, dy_t, chosen, finite):
        # BUG: the 0/1-mask product even for an inf or NaN dy: 0 * inf = NaN lands on the window's other elements
        np.multiply(dy_t, chosen, out=view)
    return route


def _linear_db_float32_sum(original):
    def bias_grad(self, dy):
        return dy.sum(axis=0)  # BUG: accumulated in the gradient's dtype: float32 rounding grows down the batch
    return bias_grad


def _fans_without_receptive_field(original):
    def fans(weight) -> tuple[int, int]:
        return weight.shape[1], weight.shape[0]  # BUG: fan_in = C_in, the kernel's kH * kW forgotten
    return fans


def _has_bias(model) -> bool:
    from scratch.layers import Linear

    return any(isinstance(m, Linear) and m.bias is not None for _, m in model.named_modules())


CATALOGUE = (
    Bug("linear-dW-not-transposed", "Linear weight gradient: x^T dy reshaped to W's shape instead of transposed "
        "(dy^T x)", "scratch.layers.Linear._weight_grad", _linear_dw_not_transposed, issue_item="missing transpose"),
    Bug("linear-db-averaged", "Linear bias gradient averaged over the batch instead of summed",
        "scratch.layers.Linear._bias_grad", _linear_db_averaged, applies=_has_bias,
        issue_item="bias gradient not summed over the batch"),
    Bug("ce-grad-wrong-sign", "softmax-cross-entropy gradient onehot - softmax instead of softmax - onehot",
        "scratch.losses.CrossEntropyLoss._logit_grad", _ce_wrong_sign, issue_item="wrong sign"),
    Bug("ce-missing-1/N", "mean-reduced cross-entropy gradient without the 1/N",
        "scratch.losses.CrossEntropyLoss._reduced", _ce_missing_1_over_n, requires=MEAN,
        issue_item="missing 1/N"),
    Bug("ce-grad-factor-2", "softmax-cross-entropy gradient off by a factor 2 (2 (softmax - onehot))",
        "scratch.losses.CrossEntropyLoss._logit_grad", _ce_factor_two,
        issue_item="softmax-CE gradient off by a factor"),
    Bug("ce-softmax-double-counted", "the softmax Jacobian applied again to softmax - onehot",
        "scratch.losses.CrossEntropyLoss._logit_grad", _ce_softmax_twice,
        issue_item="softmax-CE gradient double-counted"),
    Bug("relu-straight-through", "ReLU slope 1 at and below 0: the gradient passes straight through "
        "(the linear10 document's slip)", "scratch.layers.ReLU._slope", _relu_straight_through,
        issue_item="ReLU slope 1 at or below 0"),
    Bug("sigmoid-at-preactivation", "sigmoid derivative s(1 - s) evaluated at the pre-activation x instead of at "
        "s(x)", "scratch.layers.Sigmoid._s", _sigmoid_at_preactivation,
        issue_item="sigmoid derivative taken at the pre-activation"),
    Bug("sgd-momentum-order", "momentum buffer updated in the wrong order: momentum * (buf + g) instead of "
        "momentum * buf + g", "scratch.optim.SGD._momentum_buffer", _sgd_momentum_order, requires=MOMENTUM,
        issue_item="momentum buffer update in the wrong order"),
    Bug("sgd-lr-twice", "the learning rate applied twice: p -= lr * (lr * g)", "scratch.optim.SGD._update",
        _sgd_lr_twice, requires=LR_NOT_ONE, issue_item="lr applied twice"),
    Bug("sgd-wrong-sign", "the update adds the gradient: p += lr * g (gradient ascent)", "scratch.optim.SGD._update",
        _sgd_ascent, issue_item="wrong sign"),
    Bug("bn-forward-unbiased-variance", "BatchNorm training forward normalises with the unbiased batch variance "
        "x.var(ddof=1) instead of the biased one", "scratch.norm.BatchNorm2d._batch_var", _bn_forward_unbiased,
        issue_item="BatchNorm forward using the unbiased variance"),
    Bug("bn-backward-missing-mean-term", "BatchNorm backward without the -mean(dy) term (the gradient through the "
        "batch mean dropped)", "scratch.norm.BatchNorm2d._mean_term", _bn_backward_no_mean_term,
        issue_item="BatchNorm backward missing the mean term"),
    Bug("bn-running-var-biased", "BatchNorm running_var updated with the biased batch variance instead of the "
        "unbiased one", "scratch.norm.BatchNorm2d._running_var_sample", _bn_running_var_biased,
        issue_item="running_var updated with the biased variance"),
    Bug("dropout-no-inverse-scale", "dropout keeps x * mask without the 1/(1-p) scale of inverted dropout",
        "scratch.dropout.Dropout._keep_scale", _dropout_no_inverse_scale,
        issue_item="dropout without the 1/(1-p) scale"),
    Bug("maxpool-grad-to-every-element", "max-pool gradient copied to every element of the window, not only the "
        "maximum", "scratch.pool.MaxPool2d._chosen", _maxpool_grad_everywhere,
        issue_item="max-pool gradient sent to every element"),
    Bug("maxpool-grad-to-every-tied-element", "max-pool gradient sent to every element equal to the window's max "
        "(mask x == max) instead of the first one", "scratch.pool.MaxPool2d._chosen", _maxpool_grad_every_tie,
        also=(("scratch.pool.MaxPool2d.forward", keep_input),),
        issue_item="max-pool gradient sent to every tied element"),
    Bug("conv-dW-flipped-kernel", "Conv2d weight gradient flipped (rotated 180 degrees), as for a true "
        "convolution", "scratch.conv.Conv2d._weight_grad_layout", _conv_dw_flipped,
        issue_item="conv weight gradient with flipped kernel"),
    Bug("conv-dW-swapped-axes", "Conv2d weight gradient with the in/out channel axes swapped (reshaped to W's "
        "shape)", "scratch.conv.Conv2d._weight_grad_layout", _conv_dw_swapped_axes,
        issue_item="conv weight gradient with swapped axes"),
    Bug("conv-grad-assigned", "Conv2d parameter gradients assigned (=) instead of accumulated (+=)",
        "scratch.conv.Conv2d._accumulate", _conv_grad_assigned, issue_item="= instead of += in a conv gradient",
        unseen_by_parity="every step zeroes the gradients before its one backward, where = and += agree"),
    Bug("maxpool-nan-routing", "max-pool backward multiplies dy by the 0/1 mask even when dy holds inf or NaN "
        "(0 * inf = NaN reaches the other elements of the window)", "scratch.pool.MaxPool2d._route",
        _maxpool_product_for_nonfinite, issue_item="NaN routing in max-pool backward",
        unseen_by_parity="the training data and gradients are finite"),
    Bug("linear-db-float32-sum", "Linear bias gradient summed in the gradient's dtype (float32) instead of "
        "accumulated in float64", "scratch.layers.Linear._bias_grad", _linear_db_float32_sum,
        issue_item="float32 accumulation of a reduction",
        unseen_by_parity="the selftest's float64 step parity sums in float64 either way, and float32's "
                         "tolerance is far above a float32 sum's drift"),
    Bug("init-fan-without-receptive-field", "weight initialisation with fan_in = C_in for a conv, the kernel's "
        "kH * kW left out (right for Linear shapes only)", "scratch.init._fans", _fans_without_receptive_field,
        kinds=("conv2d",), issue_item="conv init with the wrong fan",
        unseen_by_parity="the torch side receives a copy of the scratch initialisation"),
)


def catalogue(available_only: bool = True) -> tuple:
    """The bugs whose target exists in this checkout (all of them with ``available_only=False``)."""
    return tuple(b for b in CATALOGUE if b.available() or not available_only)


def get_bug(name: str) -> Bug:
    for b in CATALOGUE:
        if b.name == name:
            return b
    raise KeyError(f"unknown bug {name!r}; known: {', '.join(b.name for b in CATALOGUE)}")
