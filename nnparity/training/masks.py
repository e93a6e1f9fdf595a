"""Random layers (dropout): the mask protocol and a statistical check of the masks.

**The mask protocol.** A dropout layer draws a random mask in its forward, so torch
cannot recompute its output unless it is given the same mask. After your forward,
nn-parity reads your mask from the first of these that holds an array of the input's
shape (any dtype; nonzero = kept, so a mask that already carries the 1/(1-p) scale
works too):

- an attribute ``mask``, ``_mask``, ``dropout_mask``, ``keep_mask``, ``binary_mask``
  (``self.mask = rng.random(x.shape) > p``: the usual class layer);
- a ``cache`` attribute (a tuple, list or dict holding the mask, e.g. numpy-ml's
  ``self._cache``, or the scratch book's), and for a CS231n function pair
  ``dropout_forward(x, dropout_param) -> (out, cache)`` the cache it returned
  (``cache = (dropout_param, mask)``);
- a dict of derived variables (numpy-ml's ``_wrapper_derived_variables["dropout_mask"]``, a list
  with one mask per forward: the last is used).

``torch_mask_dropout(layer, p)`` is then the torch equivalent ``x * keep / (1 - p)``
with your mask's kept positions: ``check_layer(mine, torch.nn.Dropout(p), ...)`` uses it
by itself in training mode, so output, input gradient and the scale are compared with
autograd on the same mask.

**The statistical check.** Parity on one shared mask cannot see *how* the mask is drawn:
a mask shared by the whole batch, or drawn with the keep and drop probabilities
swapped (CS231n's ``mask = rand < p`` with ``p`` the drop probability), agrees with
torch given that very mask. ``check_mask_statistics`` runs your forward many times on
an input without zeros and reads the multiplier ``out / x`` (so it needs no mask
attribute), then tests, each against its exact distribution under a correct layer:

- scale: every multiplier is 0 or 1/(1-p) (inverted dropout);
- keep rate: the kept count over n positions is Binomial(n, 1-p);
- independence across samples, across features and across draws: on disjoint pairs
  (sample 0 with 1, 2 with 3, ...), each pair agrees (both kept or both dropped) with
  probability a = q^2 + (1-q)^2, q = 1-p, independently: the agreement count is
  Binomial(n_pairs, a). One mask for the whole batch agrees everywhere.

Each binomial test rejects when n * KL(k/n || r) > ln(2 / alpha), with KL the Bernoulli
relative entropy: by the Chernoff bound P(k/n >= r + t) <= exp(-n KL(r + t || r)) (and
the same below), so a correct layer is rejected with probability at most alpha per test,
whatever n; four tests at alpha = 1e-9 make at most 4e-9. The draws are seeded (your
layer's generators, then NumPy's global one), so the outcome is the same on every
machine.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from nnparity.training.adapters import ArgumentError, ProtocolError, as_layer, call_user, describe_array

MASK_NAMES = ("mask", "_mask", "dropout_mask", "keep_mask", "binary_mask")
CACHE_NAMES = ("cache", "_cache")
DERIVED_NAMES = ("derived_variables", "_derived_variables", "_wrapper_derived_variables")
ALPHA = 1e-9          # false-alarm probability of each binomial test
DRAWS = 40            # forward passes of the statistical check


def _arrays_in(v, depth: int = 0):
    """Arrays held by ``v`` (an array, or a tuple / list / dict of them, one level deep or two)."""
    if isinstance(v, np.ndarray):
        yield v
    elif depth < 2 and isinstance(v, (tuple, list)):
        for e in v:
            yield from _arrays_in(e, depth + 1)
    elif depth < 2 and isinstance(v, dict):
        for e in v.values():
            yield from _arrays_in(e, depth + 1)


def find_mask(obj, shape, x=None):
    """``(mask, where)``: the mask of ``obj``'s last forward (see the module docstring), or
    ``(None, names looked at)``. ``x``, when given, is excluded (a cache also holds the input)."""
    shape = tuple(shape)
    for name in MASK_NAMES:
        v = getattr(obj, name, None)
        if isinstance(v, np.ndarray) and v.shape == shape:
            return v, name
    for name in CACHE_NAMES + DERIVED_NAMES:
        v = getattr(obj, name, None)
        if isinstance(v, dict):   # by name first: {"dropout_mask": ...}
            for k in ("dropout_mask",) + MASK_NAMES:
                hits = [a for a in _arrays_in(v.get(k)) if a.shape == shape]
                if hits:   # numpy-ml appends a mask per forward: the last one is this forward's
                    return hits[-1], f"{name}[{k!r}]"
        if isinstance(v, dict) and name in DERIVED_NAMES:
            continue
        for a in _arrays_in(v):
            if a.shape == shape and not (x is not None and np.array_equal(a, x)) and _looks_binary(a):
                return a, name
    looked = ", ".join(MASK_NAMES + CACHE_NAMES + DERIVED_NAMES)
    return None, looked


def _looks_binary(a) -> bool:
    """A mask has at most two values (0 and the kept value), a cached input has many."""
    return np.unique(a[:64] if a.ndim else a).size <= 2


def layer_mask(lay, shape, x=None):
    """The user's mask through the adapter (a CS231n pair keeps its cache in ``lay.obj.cache``)."""
    return find_mask(lay.obj, shape, x)


def torch_mask_dropout(lay, p: float):
    """The torch equivalent of ``lay`` (a dropout layer with drop probability ``p``): inverted
    dropout ``x * keep / (1 - p)`` with the kept positions of ``lay``'s last mask."""
    import torch

    def dropout_with_your_mask(xt):
        mask, where = layer_mask(lay, tuple(xt.shape))
        other = next(((n, getattr(lay.obj, n)) for n in MASK_NAMES
                      if isinstance(getattr(lay.obj, n, None), np.ndarray)), None)
        if mask is None and other is not None:
            raise ProtocolError(f"{lay.name}.{other[0]} has shape {other[1].shape}, the input {tuple(xt.shape)}: a "
                                "dropout mask draws one value per element (a mask of the features' shape is one "
                                "mask for the whole batch): draw it with the input's shape")
        if mask is None:
            raise ProtocolError(no_mask_message(lay.name, tuple(xt.shape), where, "train=False"))
        keep = torch.from_numpy(np.asarray(mask) != 0).to(xt.dtype)
        return xt * keep / (1.0 - p) if p < 1 else xt * 0.0

    return dropout_with_your_mask


def no_mask_message(name: str, shape, looked: str, eval_argument: str) -> str:
    """The one line for a dropout layer whose mask the protocol cannot find."""
    return (f"{name}: no dropout mask of the input's shape {tuple(shape)} after its forward (looked at {looked}): "
            "store it as self.mask = ... (nonzero = kept) so torch can apply the same one, or check with "
            f"{eval_argument}")


# --- a user's network: its dropout layers' masks handed to the torch mirror's torch.nn.Dropout -----

def step_mask(name: str, obj, x):
    """The mask of your dropout layer ``obj``'s forward on ``x``, read right after it (before your
    backward runs, which might draw or overwrite), or one ``ProtocolError`` line naming the protocol."""
    mask, where = find_mask(obj, np.shape(x), x)
    if mask is None:
        raise ProtocolError(no_mask_message(f"your dropout layer {name}", np.shape(x), where, "mode='eval'"))
    return np.asarray(mask) != 0


def _dropouts(torch_net):
    """(path, module) of every torch dropout module of ``torch_net`` that draws (p > 0)."""
    import torch

    return [(path, m) for path, m in torch_net.named_modules()
            if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]


def handed_dropouts(torch_net, layers, mode: str) -> "OrderedDict":
    """``{name: your layer}`` whose masks ``torch_net``'s top-level ``torch.nn.Dropout`` children
    apply in a training run (``check_steps``); ``layers`` is ``find_layers``' match (None: none).
    A torch dropout that cannot receive a mask is one ``ProtocolError`` line: it would draw its
    own mask, and the run would diverge at step 1 for no fault of yours."""
    import torch

    handed = OrderedDict()
    if mode != "train":   # eval: dropout is the identity on both sides
        return handed
    top = dict(torch_net.named_children())
    for path, m in _dropouts(torch_net):
        kind = f"torch.nn.{type(m).__name__}"
        if type(m) is not torch.nn.Dropout:
            raise ProtocolError(f"torch_net's {path} is a {kind}(p={m.p}): it draws its own masks, and only a "
                                "torch.nn.Dropout applies your layer's (elementwise, the mask protocol): use "
                                "torch.nn.Dropout, or check with mode='eval'")
        if layers is None:
            raise ProtocolError(f"torch_net's {path} is a torch.nn.Dropout(p={m.p}): it cannot receive your "
                                "dropout's mask, because your network's layers could not be matched with "
                                f"torch_net's top-level children {list(top)}: keep your layers as objects in a "
                                "self.layers list (in order) or dict, or as attributes named like those children, "
                                "each with forward/backward, or check with mode='eval'")
        if path not in layers:
            parent = path.split(".")[0]
            raise ProtocolError(f"torch_net's {path} is a torch.nn.Dropout(p={m.p}) inside its top-level child "
                                f"{parent}: only a top-level torch.nn.Dropout child receives your dropout layer's "
                                f"mask: make it a child of torch_net of its own (and your dropout a layer of its "
                                "own), or check with mode='eval'")
        handed[path] = layers[path]
    return handed


@contextmanager
def masks_handed_to(torch_net, names):
    """For the duration of the block, each top-level ``torch.nn.Dropout`` child ``names`` of
    ``torch_net`` is a ``reference.layers.MaskedDropout`` of the same ``p``: torch's own dropout
    arithmetic on the mask handed over as ``.mask`` before each forward (``TorchSide``'s draws,
    as for the documented networks). The user's modules are put back afterwards, whatever happens."""
    from reference.layers import MaskedDropout

    saved = [(n, getattr(torch_net, n)) for n in names]
    try:
        for n, m in saved:
            setattr(torch_net, n, MaskedDropout(m.p).train(m.training))
        yield
    finally:
        for n, m in saved:
            setattr(torch_net, n, m)


def binomial_rejects(k: int, n: int, r: float, alpha: float = ALPHA) -> bool:
    """True when k successes in n Bernoulli(r) trials are too far from n r: n KL(k/n || r) > ln(2/alpha)."""
    return n * _kl(k / n, r) > math.log(2 / alpha)


def _kl(a: float, r: float) -> float:
    """Bernoulli relative entropy KL(a || r), with 0 log 0 = 0 (inf when r is 0 or 1 and a differs)."""
    def term(u, v):
        if u == 0:
            return 0.0
        return math.inf if v == 0 else u * math.log(u / v)
    return term(a, r) + term(1 - a, 1 - r)


def binomial_interval(n: int, r: float, alpha: float = ALPHA) -> tuple:
    """The accepted range of k/n (inverse of ``binomial_rejects``), for messages."""
    c = math.log(2 / alpha) / n

    def edge(inside, outside):   # KL(. || r) grows from r outwards: bisect for KL = c
        if _kl(outside, r) <= c:
            return outside
        for _ in range(60):
            mid = (inside + outside) / 2
            if _kl(mid, r) > c:
                outside = mid
            else:
                inside = mid
        return inside
    return edge(r, 0.0), edge(r, 1.0)


@dataclass
class MaskReport:
    """The statistical check of a dropout layer's masks: each test with its verdict."""

    name: str
    p: float
    shape: tuple
    draws: int
    tests: list = field(default_factory=list)   # (test name, passed, text)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.tests)

    def message(self) -> str:
        bad = [t for t in self.tests if not t[1]]
        head = (f"{self.name}'s dropout masks (p = {self.p}, input {self.shape}, {self.draws} draws): "
                + ("every test passes" if not bad else f"{len(bad)} of {len(self.tests)} tests fail"))
        return "\n".join([head] + [f"  {'ok  ' if ok else 'FAIL'} {n}: {text}" for n, ok, text in self.tests])

    def raise_if_failed(self) -> "MaskReport":
        if not self.ok:
            raise AssertionError(self.message())
        return self


def _pair_agreement(m, axis: int):
    """(agreements, pairs) of disjoint neighbours along ``axis`` (0 with 1, 2 with 3, ...)."""
    n = m.shape[axis] // 2 * 2
    a = np.take(m, range(0, n, 2), axis=axis)
    b = np.take(m, range(1, n, 2), axis=axis)
    return int(np.sum(a == b)), int(a.size)


def check_mask_statistics(mine, p: float, input_shape=(64, 32), *, draws: int = DRAWS, seed: int = 0,
                          alpha: float = ALPHA, name: str | None = None, forward_kwargs=None,
                          raise_on_failure: bool = True) -> MaskReport:
    """Test how your dropout layer draws its masks (keep rate, independence, scale) over ``draws``
    forward passes in training mode; see the module docstring for the tests and their bound.

    Args:
        mine: your dropout layer (any layer convention; a CS231n pair via ``nnparity.pair``).
        p: its drop probability (torch's ``p``), 0 < p < 1. At p = 0.5 a keep/drop confusion
            cannot be seen: check at another p too.
        input_shape: (N, features...) of the input; N >= 2 and at least 2 features.
        draws: forward passes; seed: seeds NumPy's global generator and the input.
        alpha: false-alarm probability of each test (default 1e-9).
        forward_kwargs: extra keyword arguments of your forward (a ``training`` argument is
            given True by itself).
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
        raise ArgumentError(f"p must be the drop probability, a number with 0 < p < 1, got {p!r}")
    shape = tuple(input_shape)
    if len(shape) < 2 or shape[0] < 2 or int(np.prod(shape[1:])) < 2:
        raise ArgumentError(f"input_shape must be (N, features...) with N >= 2 and at least 2 features, got {shape}")
    if not isinstance(draws, int) or draws < 2:
        raise ArgumentError(f"draws must be an int >= 2, got {draws!r}")
    lay = as_layer(mine, name)
    lay.set_forward_kwargs(forward_kwargs)
    lay.train(True)
    q = 1.0 - p
    scale = 1.0 / q
    rng = np.random.default_rng([seed, 11])
    x = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)   # no zeros: out / x is the multiplier
    np.random.seed(seed)
    for i, g in enumerate(lay.generators()):
        if isinstance(g, np.random.RandomState):
            g.seed(seed + i)
    masks, bad_scale = [], None
    for d in range(draws):
        y = call_user(f"{lay.name}.forward", lay.forward, x.copy(), given=f" on an input of {describe_array(x)}")
        y = np.asarray(y, dtype=np.float64)
        if y.shape != shape:
            raise ProtocolError(f"{lay.name}.forward returned shape {y.shape} for an input of shape {shape}: a "
                                "dropout layer keeps the shape")
        mult = y / x
        kept = ~np.isclose(mult, 0.0, atol=1e-6)
        if bad_scale is None and not np.allclose(mult[kept], scale, rtol=1e-5):
            vals = np.unique(np.round(mult[kept], 6))[:4]
            bad_scale = f"kept values are x times {', '.join(f'{v:g}' for v in vals)}, not 1/(1-p) = {scale:.6g}"
        masks.append(kept.reshape(shape[0], -1))
    m = np.stack(masks)                                      # (draws, N, features)
    report = MaskReport(lay.name, p, shape, draws)
    report.tests.append(("scale", bad_scale is None, bad_scale or f"kept values are x / (1-p) = x * {scale:.6g}"))

    k, n = int(m.sum()), m.size
    lo, hi = binomial_interval(n, q, alpha)
    ok = not binomial_rejects(k, n, q, alpha)
    text = f"kept {k / n:.4f} of {n} positions; 1-p = {q:.4f} (accepted {lo:.4f} .. {hi:.4f})"
    if not ok and abs(k / n - p) < abs(k / n - q):
        text += f": that is p, not 1-p: the mask keeps with the drop probability (mask = rand < p?)"
    report.tests.append(("keep rate", ok, text))

    agree = q * q + p * p
    for what, axis, slip in (("across samples", 1, "one mask shared by the whole batch"),
                             ("across features", 2, "one draw per sample, shared by its features"),
                             ("across draws", 0, "the same mask on every forward (a generator re-seeded?)")):
        k, n = _pair_agreement(m, axis)
        lo, hi = binomial_interval(n, agree, alpha)
        ok = not binomial_rejects(k, n, agree, alpha)
        text = (f"disjoint pairs agree {k / n:.4f} of {n}; independent: q^2 + p^2 = {agree:.4f} "
                f"(accepted {lo:.4f} .. {hi:.4f})")
        if not ok and k / n > hi:
            text += f": {'the same everywhere' if k == n else 'too alike'}: {slip}"
        report.tests.append((f"independence {what}", ok, text))
    if raise_on_failure:
        report.raise_if_failed()
    return report
