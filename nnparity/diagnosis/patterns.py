"""Name the slip: when a scratch tensor differs from its reference by an exact pattern, say which.

A pattern is a transformation ``f`` of the reference under which the comparison would
pass, elementwise, with the comparison's own tolerance (``|a - f(b)| <= atol + rtol |f(b)|``):
so "exactly" means "to rounding", never "roughly". ``detect`` tries, in this order:

    shape differs   empty along an axis (a crop ``x[p:-p]`` with p = 0), a window of the
                    reference (cropped) or the reference inside a border (padding kept),
                    an axis permutation (a transpose, or a reshape where a transpose is
                    due), the upstream gradient summed over
                    other axes than the reference's
    same shape      all zero; a named factor (N, 1/N, N/(N-1), (N-1)/N, 2, 1/2, -1, for
                    each count the caller names: the batch size N, N*H*W, ...), with a
                    constant offset or a multiple of the value before allowed (a
                    running average's update); an axis
                    permutation (a transpose of a square matrix, swapped channel axes, or
                    the reference transposed and reshaped: a reshape for a transpose); a
                    flip of the last axes (a kernel rotated 180 degrees); a shift by 1 or 2
                    along one axis; a caller's alternative reference (``alternatives``:
                    "only the last sample", the reference recomputed with the last
                    sample's upstream gradient alone); the upstream gradient summed over
                    the wrong axes; equal except on a border (a crop or a padding slip);
                    an unnamed exact factor

Used by the user API's messages (``layercheck``) and by ``nnparity check``'s first
divergence (``localize``). NumPy only.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np

from nnparity.core.parity import Tolerance

__all__ = ["detect", "factor_names"]


def _close(a, b, tol: Tolerance) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.size == 0:
        return False
    return bool(np.all(np.abs(a - b) <= tol.atol + tol.rtol * np.abs(b)))


def _frac(x: float) -> str:
    f = Fraction(x).limit_denominator(64)
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def factor_names(counts: dict | None) -> list:
    """``[(factor, name, what it usually means)]`` for the counts given (``{"N": 8}``)."""
    out = []
    for label, n in (counts or {}).items():
        n = int(n)
        if n < 2:
            continue
        d = f"({label})" if "*" in label else label   # 1/(N*H*W), not 1/N*H*W
        out += [(float(n), f"{label} = {n}",
                 f"a sum where the reference averages over {label} (or a missing 1/{d})"),
                (1.0 / n, f"1/{d} = 1/{n}",
                 f"a mean over {label} where the reference sums (or 1/{d} applied twice)"),
                (n / (n - 1), f"{d}/({label}-1) = {n}/{n - 1}",
                 "the unbiased variance where the reference uses the biased one (or the other way round)"),
                ((n - 1) / n, f"({label}-1)/{d} = {n - 1}/{n}",
                 "the biased variance where the reference uses the unbiased one (or the other way round)"),
                # x / sqrt(var): a normalisation by the other variance scales by the root of the ratio
                (math.sqrt(n / (n - 1)), f"sqrt({d}/({label}-1)) = sqrt({n}/{n - 1})",
                 "divided by the root of the biased variance where the reference uses the unbiased one "
                 "(or the other way round)"),
                (math.sqrt((n - 1) / n), f"sqrt(({label}-1)/{d}) = sqrt({n - 1}/{n})",
                 "divided by the root of the unbiased variance where the reference uses the biased one "
                 "(or the other way round)")]
    out += [(2.0, "2", "a term counted twice (or a derivative's 2 that should not be there)"),
            (0.5, "1/2", "half the gradient (a missing one of two equal terms, or a 0.5 x^2 whose 2 was dropped)"),
            (-1.0, "-1", "the sign is flipped"),
            (-2.0, "-2", "the sign is flipped and a term counted twice"),
            (-0.5, "-1/2", "the sign is flipped and half the gradient")]
    seen, uniq = set(), []
    for f, name, why in out:   # N = 2 gives 2 and N/(N-1) = 2 twice: the count's name wins
        if round(f, 12) not in seen:
            seen.add(round(f, 12))
            uniq.append((f, name, why))
    return uniq


def _fit(a, b):
    """The least-squares ``a ~ k b + d`` (k, d scalars) and ``a ~ k b``."""
    a, b = a.reshape(-1), b.reshape(-1)
    bb = float(b @ b)
    k0 = float(a @ b) / bb if bb else 0.0
    if b.size > 1 and np.ptp(b) > 0:
        k1, d1 = np.polyfit(b, a, 1)
    else:
        k1, d1 = k0, 0.0
    return k0, float(k1), float(d1)


def _factor(a, b, tol, counts, before=None):
    if not np.any(np.abs(b) > tol.atol):
        return None
    if before is not None and before.shape == b.shape and np.ptp(before) > 0:
        # a running average: a = m before + (1 - m) k v, b = m before + (1 - m) v: a = k b + c before
        (k, c), *_ = np.linalg.lstsq(np.stack([b.reshape(-1), before.reshape(-1)], 1), a.reshape(-1), rcond=None)
        for f, name, why in factor_names(counts):
            if abs(k - f) <= 1e-6 * abs(f) and _close(a, f * b + c * before, tol):
                return (f"scratch = {name} x reference {'+' if c >= 0 else '-'} {abs(c):.6g} x the value before "
                        f"exactly (a running average's kept part): {why}")
    k0, k1, d1 = _fit(a, b)
    for f, name, why in factor_names(counts):
        if _close(a, f * b, tol):
            return f"scratch = {name} x reference exactly: {why}"
    exact = k0 and _close(a, k0 * b, tol)
    for f, name, why in factor_names(counts) if exact else ():
        # a constant factor within 1e-6 of a named one: (var_b + eps) / (var_u + eps) is (N-1)/N but for eps
        if abs(k0 - f) <= 1e-6 * abs(f):
            return (f"scratch = {k0:.6g} x reference exactly, {name} to {abs(k0 / f - 1):.1g} (a small constant "
                    f"such as an eps beside it shifts the factor): {why}")
    for f, name, why in factor_names(counts):
        if abs(k1 - f) <= 1e-6 * abs(f) and abs(d1) > tol.atol and _close(a, f * b + d1, tol):
            return (f"scratch = {name} x reference {'+' if d1 >= 0 else '-'} {abs(d1):.6g} exactly (a constant offset, as in a running "
                    f"average's kept part): {why}")
    if exact and abs(k0 - 1) > 1e-6:
        return f"scratch = {_frac(k0) if abs(Fraction(k0).limit_denominator(64) - k0) < 1e-9 else f'{k0:.6g}'} " \
               "x reference exactly (a constant factor)"
    return None


def _perms(b):
    if b.ndim < 2 or b.ndim > 4:
        return
    for perm in itertools.permutations(range(b.ndim)):
        if perm != tuple(range(b.ndim)):
            yield perm, np.transpose(b, perm)


def _transpose(a, b, tol, same_shape):
    for perm, t in _perms(b):
        if t.shape == a.shape and not (same_shape and np.array_equal(t, b)) and _close(a, t, tol):
            what = "the reference transposed" if b.ndim == 2 else f"the reference with its axes permuted {perm}"
            why = ("a missing or extra transpose (x^T dy vs dy^T x)" if b.ndim == 2 else
                   "axes swapped (e.g. the in and out channels of a conv weight gradient)")
            return f"scratch = {what}: {why}"
    for perm, t in _perms(b):   # the right numbers in the wrong layout: reshaped where a transpose was due
        if t.size == a.size and t.shape != a.shape and _close(a, t.reshape(a.shape), tol):
            what = "transposed" if b.ndim == 2 else f"with its axes permuted {perm}"
            return (f"scratch = the reference {what}, then reshaped to {a.shape}: a reshape where a transpose is "
                    "needed (the right numbers in the wrong layout)")
    return None


def _flip(a, b, tol):
    if a.ndim < 2:
        return None
    for axes in ((a.ndim - 2, a.ndim - 1), (a.ndim - 1,), (a.ndim - 2,)):
        if any(a.shape[ax] < 2 for ax in axes):
            continue
        t = np.flip(b, axes)
        if not np.array_equal(t, b) and _close(a, t, tol):
            what = "rotated 180 degrees over its last two axes" if len(axes) == 2 else f"flipped along axis {axes[0]}"
            return (f"scratch = the reference {what}: a kernel flipped (a true convolution's gradient where the "
                    "layer computes a cross-correlation, or the other way round)")
    return None


def _shift(a, b, tol):
    for ax in range(a.ndim):
        n = a.shape[ax]
        for s in (1, -1, 2, -2):
            if n <= abs(s) + 1:
                continue
            src = [slice(None)] * a.ndim
            dst = [slice(None)] * a.ndim
            if s > 0:
                dst[ax], src[ax] = slice(s, None), slice(None, -s)
            else:
                dst[ax], src[ax] = slice(None, s), slice(-s, None)
            if np.any(np.abs(b[tuple(src)]) > tol.atol) and _close(a[tuple(dst)], b[tuple(src)], tol):
                return (f"scratch = the reference shifted by {s:+d} along axis {ax} (scratch[{_sl(ax, a.ndim, dst[ax])}]"
                        f" = reference[{_sl(ax, a.ndim, src[ax])}]): an index off by {abs(s)} (a window's start, "
                        "a padding offset)")
    return None


def _sl(ax, ndim, s) -> str:
    one = f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}"
    return ", ".join(one if i == ax else ":" for i in range(ndim))


# The fewest elements inside a border for "equal inside" to name a crop: a slip off on a random half
# of the elements agrees on all 8 of them by chance 1 time in 256 (a (1, 5) input, a border 2 wide
# along it, has 1 element inside: half the time).
MIN_INSIDE = 8


def _border(a, b, tol):
    """Equal inside, different on a border of width w along some axes (w = 1, 2)."""
    if a.ndim < 1:
        return None
    for w in (1, 2):
        for axes in ((a.ndim - 2, a.ndim - 1), (a.ndim - 1,), (0,)) if a.ndim >= 2 else ((0,),):
            if any(a.shape[ax] <= 2 * w for ax in axes):
                continue
            inner = [slice(None)] * a.ndim
            for ax in axes:
                inner[ax] = slice(w, -w)
            if a[tuple(inner)].size < MIN_INSIDE:   # agreement on a few elements proves nothing: a slip that
                continue                           # is off on half the elements leaves 1 of 1 right half the time
            if _close(a[tuple(inner)], b[tuple(inner)], tol) and _every_side_off(a, b, tol, axes, w):
                zero = not np.any(np.abs(np.where(_mask(a.shape, inner), 0, a)) > tol.atol)
                return (f"scratch = the reference inside, wrong on a border {w} wide along axis "
                        f"{', '.join(map(str, axes))}{' (zero there)' if zero else ''}: a crop or padding slip "
                        "(the edge windows handled apart, a padded gradient cropped at the wrong offset)")
    return None


def _every_side_off(a, b, tol, axes, w) -> bool:
    """Each side of the border has a mismatch (a frame, not mismatches that happen to lie outside)."""
    off = np.abs(a - b) > tol.atol + tol.rtol * np.abs(b)
    for ax in axes:
        for sl in (slice(0, w), slice(-w, None)):
            side = [slice(None)] * a.ndim
            side[ax] = sl
            if not off[tuple(side)].any():
                return False
    return True


def _mask(shape, inner):
    m = np.zeros(shape, bool)
    m[tuple(inner)] = True
    return m


def _window(small, big, tol):
    """The offset at which ``small`` equals a window of ``big`` (same ndim, every axis <=)."""
    ranges = [range(B - S + 1) for S, B in zip(small.shape, big.shape)]
    for off in itertools.product(*ranges):
        sl = tuple(slice(o, o + S) for o, S in zip(off, small.shape))
        if _close(small, big[sl], tol):
            return sl
    return None


def _fmt_window(sl, shape) -> str:
    return ", ".join(":" if (s.start == 0 and s.stop == n) else f"{s.start}:{s.stop}" for s, n in zip(sl, shape))


def _sums(g, shape):
    """``{axes: g.sum(axes)}`` for every set of axes whose sum has ``shape``."""
    out = {}
    for r in range(1, g.ndim):
        for axes in itertools.combinations(range(g.ndim), r):
            kept = tuple(n for i, n in enumerate(g.shape) if i not in axes)
            if kept == tuple(shape):
                out[axes] = g.sum(axis=axes)
    return out


def _axis_sum(a, b, tol, upstream):
    if upstream is None or upstream.ndim < 2:
        return None
    mine = next((ax for ax, s in _sums(upstream, a.shape).items() if _close(a, s, tol)), None)
    if mine is None:
        return None
    theirs = next((ax for ax, s in _sums(upstream, b.shape).items() if _close(b, s, tol)), None)
    ref = f", the reference over axis {', '.join(map(str, theirs))}" if theirs is not None else ""
    return (f"scratch = the upstream gradient summed over axis {', '.join(map(str, mine))}{ref}: a sum over the "
            "wrong axis")


def _shape_patterns(a, b, tol, upstream):
    if a.ndim == b.ndim and any(n == 0 for n in a.shape) and b.size:
        axes = [i for i, n in enumerate(a.shape) if n == 0 and b.shape[i]]
        return (f"scratch is empty along axis {', '.join(map(str, axes))} (shape {a.shape}, reference {b.shape}): "
                "a crop x[p:-p] with p = 0 is empty (x[p:-0] is x[p:0]); crop with x[p:p + H] instead")
    if a.ndim == b.ndim and a.size and all(s <= n for s, n in zip(a.shape, b.shape)):
        sl = _window(a, b, tol)
        if sl is not None:
            return (f"scratch = the reference cropped to [{_fmt_window(sl, b.shape)}] (shape {a.shape}, reference "
                    f"{b.shape}): cropped too much (a padding removed twice, or a window too small)")
    if a.ndim == b.ndim and b.size and all(s >= n for s, n in zip(a.shape, b.shape)):
        sl = _window(b, a, tol)
        if sl is not None:
            return (f"scratch[{_fmt_window(sl, a.shape)}] = the reference (shape {a.shape}, reference {b.shape}): "
                    "the padding is not cropped off")
    t = _transpose(a, b, tol, same_shape=False)
    if t:
        return t
    return _axis_sum(a, b, tol, upstream)


def detect(scratch, reference, tol: Tolerance, *, counts: dict | None = None, upstream=None,
           alternatives: dict | None = None, before=None) -> str | None:
    """The exact pattern relating ``scratch`` to ``reference``, in words, or None.

    Args:
        tol: the comparison's tolerance; a pattern holds when the transformed reference
            passes it elementwise.
        counts: named counts for the factors, ``{"N": batch size, "N*H*W": ...}``.
        upstream: the upstream gradient the tensor was computed from (for a sum over the
            wrong axis).
        alternatives: ``{description: array}``: references of the slips the caller can
            compute (the reference with only the last sample's upstream gradient).
        before: the tensor's value before the step (a running statistic's), so that a
            factor on the update alone is found whatever the value kept.
    """
    a = np.asarray(scratch)
    b = np.asarray(reference)
    if not (np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number)):
        return None
    a, b = a.astype(np.float64), b.astype(np.float64)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    up = None if upstream is None else np.asarray(upstream, np.float64)
    if a.shape != b.shape:
        return _shape_patterns(a, b, tol, up)
    if a.size == 0 or _close(a, b, tol):
        return None
    if not np.any(np.abs(a) > tol.atol) and np.any(np.abs(b) > tol.atol):
        return "scratch is all zero where the reference is not: a gradient never written (or overwritten by 0)"
    bef = None if before is None else np.asarray(before, np.float64)
    for check in (lambda: _factor_named(a, b, tol, counts, bef), lambda: _transpose(a, b, tol, True),
                  lambda: _flip(a, b, tol), lambda: _shift(a, b, tol)):
        found = check()
        if found:
            return found
    for what, alt in (alternatives or {}).items():
        if _close(a, np.asarray(alt, np.float64), tol):
            return f"scratch = {what}"
    for check in (lambda: _axis_sum(a, b, tol, up), lambda: _border(a, b, tol), lambda: _factor(a, b, tol, counts)):
        found = check()
        if found:
            return found
    return None


def _factor_named(a, b, tol, counts, before=None):
    """A named factor only (the unnamed fit comes last, after the structural patterns)."""
    found = _factor(a, b, tol, counts, before)
    return found if found and "(a constant factor)" not in found else None
