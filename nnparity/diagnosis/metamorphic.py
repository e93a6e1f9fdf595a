"""Metamorphic checks: relations every correct scratch network satisfies, checked on
the scratch side alone (no reference needed), generic over the registry.

* **Batch split.** A mean-reduced loss's gradients over a batch equal the average
  of its gradients over the two halves of the batch (a sum-reduced loss's: their
  sum), and so does the loss itself. A missing or doubled 1/N, or a per-batch
  quantity that should be per-sample, breaks it.
* **Linearity.** Backward is linear in the upstream gradient:
  ``backward(a g1 + b g2) = a backward(g1) + b backward(g2)`` for every parameter
  gradient and the input gradient. A backward that depends on its upstream
  gradient other than linearly (a clipped, normalised or cached-and-reused
  gradient) breaks it.

Layers that couple the samples of a batch (BatchNorm's batch statistics) or draw
random masks (dropout) break both relations in training mode for reasons that are
not bugs, so networks that contain them are checked in evaluation mode.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from nnparity.core.parity import Comparison, Tolerance, compare, draws_random_mask

A, B = 0.7, -1.3   # the linear combination of two upstream gradients


def couples_batch(model) -> bool:
    """Whether a module couples the samples of a batch or draws random masks in training mode."""
    return any(draws_random_mask(m) or "BatchNorm" in type(m).__name__ or getattr(m, "couples_batch", False)
               for _, m in model.named_modules())


def _mode(model) -> str:
    mode = "eval" if couples_batch(model) else "train"
    model.train(mode == "train")
    return mode


def _grads(model) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, p.grad.copy()) for k, p in model.named_parameters())


def _loss_and_grads(model, loss_fn, x, y):
    model.zero_grad()
    value = loss_fn.forward(model.forward(x), y)
    model.backward(loss_fn.backward())
    return np.asarray(value, dtype=np.float64), _grads(model)


def batch_split(model, loss_fn, x, y, tol: Tolerance) -> list[Comparison]:
    """Gradients (and loss) of the whole batch against those of its two halves combined
    (mean: averaged, sum: summed). ``len(y)`` must be even."""
    n = len(y)
    if n < 2 or n % 2:
        raise ValueError(f"batch split needs an even batch of at least 2 samples, got {n}")
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"batch split needs a mean- or sum-reduced loss, got reduction {reduction!r}")
    _mode(model)
    h = n // 2
    full_loss, full = _loss_and_grads(model, loss_fn, x, y)
    l1, g1 = _loss_and_grads(model, loss_fn, x[:h], y[:h])
    l2, g2 = _loss_and_grads(model, loss_fn, x[h:], y[h:])
    combine = (lambda a, b: (a + b) / 2) if reduction == "mean" else (lambda a, b: a + b)
    out = [compare("loss", combine(l1, l2), full_loss, tol)]
    out += [compare(f"grad/{k}", combine(g1[k], g2[k]), full[k], tol) for k in full]
    return out


def linearity(model, x, tol: Tolerance, seed: int = 0) -> list[Comparison]:
    """``backward(A g1 + B g2)`` against ``A backward(g1) + B backward(g2)``, with the
    input gradient switched on; random non-uniform ``g1``, ``g2``."""
    _mode(model)
    rng = np.random.default_rng(seed)
    out_shape = np.shape(model.forward(x))
    dtype = np.asarray(x).dtype
    g1, g2 = (rng.standard_normal(out_shape).astype(dtype) for _ in range(2))
    has_switch = hasattr(model, "set_input_grad")
    if has_switch:
        model.set_input_grad(True)
    try:
        results = []
        for g in (g1, g2, A * g1 + B * g2):
            model.zero_grad()
            dx = model.backward(g.copy())
            grads = _grads(model)
            if dx is not None:
                grads["din"] = np.array(dx, copy=True)
            results.append(grads)
    finally:
        if has_switch:
            model.set_input_grad(False)
    r1, r2, r3 = results
    return [compare(k if k == "din" else f"grad/{k}", A * r1[k] + B * r2[k], r3[k], tol) for k in r3]


def even_batch(x, y):
    """The batch with an even number (>= 2) of samples: a single sample is repeated, an odd
    batch loses its last sample."""
    n = len(y)
    if n < 2:
        return np.concatenate([x, x]), np.concatenate([y, y])
    return (x[:n - 1], y[:n - 1]) if n % 2 else (x, y)


def untied(x, seed: int = 0, scale: float = 1e-3):
    """``x`` plus seeded noise of ``scale`` times its spread: no two values of a pooling window
    and no ReLU input stay exactly equal or exactly 0 (MNIST's blank borders hold thousands
    of such ties). The split's invariance holds for any input, but which of two *tied*
    values a whole batch and its halves pick is up to how the BLAS rounds rows of different
    batch sizes, a property of the machine; values 1e-3 apart are decided the same way by
    every BLAS."""
    x = np.asarray(x)
    rng = np.random.default_rng(seed)
    spread = float(x.std()) or 1.0
    return (x + scale * spread * rng.standard_normal(x.shape)).astype(x.dtype)


def worst(comparisons) -> float:
    return max((c.margin for c in comparisons), default=0.0)
