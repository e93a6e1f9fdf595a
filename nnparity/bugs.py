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
        """Whether the target exists in this checkout (conv/BN/pool/dropout land later)."""
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
)


def catalogue(available_only: bool = True) -> tuple:
    """The bugs whose target exists in this checkout (all of them with ``available_only=False``)."""
    return tuple(b for b in CATALOGUE if b.available() or not available_only)


def get_bug(name: str) -> Bug:
    for b in CATALOGUE:
        if b.name == name:
            return b
    raise KeyError(f"unknown bug {name!r}; known: {', '.join(b.name for b in CATALOGUE)}")
