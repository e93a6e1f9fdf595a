"""Named conventions for the known disagreements between from-scratch code and torch.

Some differences from torch are not slips but documented choices: CS231n's
BatchNorm keeps the *biased* batch variance in ``running_var``, many LayerNorms
divide by ``sqrt(var) + eps``, a learner's cross-entropy takes ``log(p + eps)``,
CS231n's layers add the L2 term ``reg * W`` to their own weight gradient. Naming
the choice, ``conventions=("biased_running_var",)`` or
``conventions={"l2_in_grad": 1e-3}`` on ``check_layer`` / ``check_loss`` /
``check_steps`` and the fixture, makes the *reference* follow it, for the check's
duration (hooks on your torch module, removed after; a wrapped torch loss): the
tensor is still compared, against torch doing what you documented, so a slip in
it still fails. ``skip=`` is for leaving a comparison out; a convention leaves
nothing out.

=======================  ===========================================  =====================  =================
name (value)             your code                                    torch's default        torch side changed
=======================  ===========================================  =====================  =================
``biased_running_var``   ``running_var`` moves towards the batch's    the unbiased variance  every BatchNorm
                         biased variance (divided by N)               (divided by N - 1)
``eps_outside_sqrt``     normalises by ``sqrt(var) + eps``            ``sqrt(var + eps)``    every BatchNorm,
                                                                                             LayerNorm
``eps_in_log`` (eps)     cross-entropy of ``log(p + eps)``            ``log_softmax``        the loss (CE, BCE,
                                                                                             BCE with logits)
``l2_in_grad`` (lambda)  the weight gradient has ``+ lambda * W``     no such term           every Linear,
                         (the layer's own L2 term)                                           Conv, Bilinear
=======================  ===========================================  =====================  =================

A convention that changes nothing in the torch side you passed (``biased_running_var``
with no BatchNorm) is an error, not a silent no-op.
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass

from nnparity.training.adapters import ArgumentError


@dataclass(frozen=True)
class Convention:
    name: str
    yours: str          # what your code does, in words
    value: str | None   # what the value is ("eps", "lambda"), or None for a plain name
    changes: str        # what it changes on the torch side, in words


CONVENTIONS = (
    Convention("biased_running_var", "running_var updated with the biased batch variance (divided by N)", None,
               "a torch BatchNorm"),
    Convention("eps_outside_sqrt", "normalised by sqrt(var) + eps instead of sqrt(var + eps)", None,
               "a torch BatchNorm or LayerNorm"),
    Convention("eps_in_log", "cross-entropy of log(p + eps)", "eps",
               "a torch CrossEntropyLoss, BCELoss or BCEWithLogitsLoss"),
    Convention("l2_in_grad", "the weight gradient includes the L2 term lambda * W", "lambda",
               "a torch Linear, Conv or Bilinear weight"),
)
KNOWN = {c.name: c for c in CONVENTIONS}


def parse(conventions) -> dict:
    """``{name: value}`` from a name, a tuple of names, or a dict ``{name: value}``; one
    ``ArgumentError`` line for an unknown name or a missing value."""
    if conventions is None or conventions == () or conventions == []:
        return {}
    if isinstance(conventions, str):
        conventions = (conventions,)
    if isinstance(conventions, dict):
        items = list(conventions.items())
    elif isinstance(conventions, (tuple, list)):
        items = [(c, None) for c in conventions]
    else:
        raise ArgumentError(f"conventions must be a name, a tuple of names or a dict {{name: value}}, e.g. "
                            f"conventions=('biased_running_var',), got {type(conventions).__name__}")
    out = {}
    for name, value in items:
        if name not in KNOWN:
            raise ArgumentError(f"unknown convention {name!r}: the known ones are "
                                + ", ".join(f"{c.name}" + (f" (with its {c.value})" if c.value else "")
                                            for c in CONVENTIONS))
        c = KNOWN[name]
        if c.value is None:
            if value not in (None, True):
                raise ArgumentError(f"convention {name!r} takes no value ({value!r} given): name it alone, "
                                    f"conventions=({name!r},)")
        elif not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0:
            raise ArgumentError(f"convention {name!r} needs its {c.value}, a number >= 0: "
                                f"conventions={{{name!r}: 1e-07}}" + (f" (got {value!r})" if value is not None else ""))
        out[name] = None if c.value is None else float(value)
    return out


def _modules_of(obj, kinds):
    import torch

    if not isinstance(obj, torch.nn.Module):
        return []
    return [m for m in obj.modules() if isinstance(m, kinds)]


def _reduce_dims(module, x):
    """The axes a norm layer takes its statistics over, and its parameters' broadcast shape."""
    import torch

    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
    else:   # LayerNorm: the last len(normalized_shape) axes
        k = len(module.normalized_shape)
        dims = list(range(x.dim() - k, x.dim()))
        shape = list(module.normalized_shape)
    return dims, shape


def _biased_running_var(module, undo):
    """BatchNorm's running_var recomputed after each training forward from the biased batch variance."""
    saved = {}

    def before(mod, inputs):
        if mod.training and mod.track_running_stats and mod.running_var is not None:
            saved["rv"] = mod.running_var.detach().clone()

    def after(mod, inputs, output):
        import torch

        rv = saved.pop("rv", None)
        if rv is None:
            return
        if mod.momentum is None:
            raise ArgumentError("biased_running_var follows a BatchNorm with a momentum; this one has momentum=None "
                                "(a cumulative average): give it a momentum")
        x = inputs[0].detach()
        dims, _ = _reduce_dims(mod, x)
        with torch.no_grad():   # through .data: autograd saved running_var (unused by a training backward)
            mod.running_var.data.copy_((1 - mod.momentum) * rv + mod.momentum * x.var(dim=dims, unbiased=False))

    undo += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


def _eps_outside_sqrt(module, undo):
    """A norm layer's output recomputed as (x - mean) / (sqrt(var) + eps) * weight + bias (autograd flows)."""
    import torch

    def after(mod, inputs, output):
        x = inputs[0]
        dims, shape = _reduce_dims(mod, x)
        batch = isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and (mod.training or
                                                                               not mod.track_running_stats)
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and not batch:
            mean, var = mod.running_mean.view(shape), mod.running_var.view(shape)
        else:
            mean, var = x.mean(dim=dims, keepdim=True), x.var(dim=dims, unbiased=False, keepdim=True)
        y = (x - mean) / (torch.sqrt(var) + mod.eps)
        if getattr(mod, "weight", None) is not None:
            y = y * mod.weight.view(shape)
        if getattr(mod, "bias", None) is not None:
            y = y + mod.bias.view(shape)
        return y

    undo.append(module.register_forward_hook(after))


def _l2_in_grad(module, lam, undo):
    """``lambda * W`` added to the weight's gradient as autograd computes it."""
    w = module.weight
    undo.append(w.register_hook(lambda g: g + lam * w.detach()))


def _eps_in_log(loss, eps):
    """The torch loss with eps inside the log: -log(softmax(z) + eps) at the target (or the BCE pair)."""
    import torch

    reduction = getattr(loss, "reduction", "mean")

    def reduce(v):
        return v.mean() if reduction == "mean" else v.sum() if reduction == "sum" else v

    if isinstance(loss, torch.nn.CrossEntropyLoss):
        def ce(z, y):
            p = torch.softmax(z, dim=1)
            logp = torch.log(p + eps)
            if y.dtype.is_floating_point:   # probabilities as the target
                return reduce(-(y * logp).sum(dim=1))
            return reduce(-logp.gather(1, y.view(-1, 1)).squeeze(1))
        ce.__name__ = f"CrossEntropyLoss with log(p + {eps:g})"
        return ce
    if isinstance(loss, (torch.nn.BCELoss, torch.nn.BCEWithLogitsLoss)):
        logits = isinstance(loss, torch.nn.BCEWithLogitsLoss)

        def bce(z, y):
            p = torch.sigmoid(z) if logits else z
            return reduce(-(y * torch.log(p + eps) + (1 - y) * torch.log(1 - p + eps)))
        bce.__name__ = f"{type(loss).__name__} with log(p + {eps:g})"
        return bce
    return None


@contextlib.contextmanager
def follow(conventions: dict, module=None, loss=None):
    """The torch side following ``conventions`` (from ``parse``) inside the block: yields the
    torch loss to use (wrapped for ``eps_in_log``); hooks on ``module`` are removed after.
    A convention that changes nothing in what was passed is one ``ArgumentError`` line."""
    import torch

    undo = []
    try:
        for name, value in conventions.items():
            if name == "eps_in_log":
                wrapped = _eps_in_log(loss, value) if loss is not None else None
                if wrapped is None:
                    raise ArgumentError(_nothing(name, loss if loss is not None else module))
                loss = wrapped
                continue
            kinds = {"biased_running_var": (torch.nn.modules.batchnorm._BatchNorm,),
                     "eps_outside_sqrt": (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm),
                     "l2_in_grad": (torch.nn.Linear, torch.nn.modules.conv._ConvNd, torch.nn.Bilinear)}[name]
            mods = [m for m in _modules_of(module, kinds) if name != "l2_in_grad" or m.weight is not None]
            if not mods:
                raise ArgumentError(_nothing(name, module))
            for m in mods:
                if name == "biased_running_var":
                    _biased_running_var(m, undo)
                elif name == "eps_outside_sqrt":
                    _eps_outside_sqrt(m, undo)
                else:
                    _l2_in_grad(m, value, undo)
        yield loss
    finally:
        for h in undo:
            h.remove()


def _nothing(name: str, obj) -> str:
    what = "nothing" if obj is None else type(obj).__name__ if not callable(obj) or hasattr(obj, "forward") \
        else getattr(obj, "__name__", type(obj).__name__)
    return (f"convention {name!r} changes {KNOWN[name].changes}, and the torch side here ({what}) has none: "
            "drop it, or pass the torch module it is about")
