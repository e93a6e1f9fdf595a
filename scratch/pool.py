"""Pooling: MaxPool2d (non-overlapping windows) and global average pooling.

Both accept (N, C, H, W) arrays of any memory layout. MaxPool2d returns its output
as the (N, C, H', W') view of a channels-last array, like ``scratch.conv.Conv2d``,
so the next convolution's im2col reads contiguous channel vectors.
"""

from __future__ import annotations

import numpy as np

from .conv import check_images
from .module import Module


class MaxPool2d(Module):
    """Max over non-overlapping k x k windows (mirrors ``torch.nn.MaxPool2d(k)``: stride = k,
    no padding, floor mode, so trailing rows/columns that do not fill a window are dropped).

    ``y[n, c, i, j] = max_{0 <= u, v < k} x[n, c, i*k + u, j*k + v]``

    The gradient of a window goes to ONE element, its argmax. When several elements
    tie for the maximum, PyTorch (CPU, float32 and float64) gives the gradient to the
    first of them in row-major order of the window (top-left first, then along the
    row); verified against torch in ``parity_tests/test_cnn_layers.py``, and done here
    the same way: the first window offset, in row-major (u, v) order, that holds the
    maximum. A NaN in a window is its maximum (NaN propagates), as in torch.

    Vectorised over samples, channels and pixels: one strided view per window offset
    (k*k of them), elementwise maxima and comparisons on whole arrays.

    Parity contract (``draws_mask = True``, like ``Dropout``): ``mask`` is the element
    each window chose, as torch's ``return_indices`` gives it (flat index ``h * W + w``
    into the input plane), shape (N, C, H', W'). Which of two *equal* maxima gets the
    gradient is a rounding accident in a real network: MNIST's blank borders give many
    windows mathematically equal values, and scratch and torch round them differently
    by an ulp. The reference (``reference.layers.AlignedMaxPool2d``) therefore adopts
    this choice during step parity, but only among the elements that torch itself
    cannot tell apart from its maximum at the parity tolerance; any other window keeps
    torch's own choice, so a wrong argmax is still caught.

    Args:
        kernel_size: k (window and stride); only square, non-overlapping windows.
        stride: must be ``None`` or equal to ``kernel_size``.

    Shape:
        input (N, C, H, W) -> output (N, C, H // k, W // k).
    """

    draws_mask = True
    kink_attrs = ("mask",)  # the chosen element per window: a finite-difference step that moves it is a kink

    def __init__(self, kernel_size: int = 2, stride: int | None = None):
        super().__init__()
        if not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1:
            raise ValueError(f"MaxPool2d: kernel_size must be a positive int, got {kernel_size!r}")
        if stride is not None and stride != kernel_size:
            raise ValueError(f"MaxPool2d: only non-overlapping windows (stride == kernel_size) are "
                             f"implemented; got kernel_size {kernel_size}, stride {stride}")
        self.kernel_size = int(kernel_size)
        self.in_shape = self.out_shape = self.argmax = None

    @property
    def mask(self):
        """The element each window chose in the last forward pass: (N, C, H', W') int64 flat
        indices ``h * W + w`` into the input plane (torch's ``return_indices``); None before any."""
        if self.argmax is None:
            return None
        k, w = self.kernel_size, self.in_shape[3]
        _, _, ho, wo = self.out_shape
        a = self.argmax.transpose(0, 3, 1, 2)  # (N, H', W', C) -> (N, C, H', W'): index u*k + v in the window
        rows = np.arange(ho)[:, None] * k + a // k  # (N, C, H', W') input row of the chosen element
        cols = np.arange(wo) * k + a % k
        return np.ascontiguousarray(rows * w + cols, dtype=np.int64)

    @property
    def has_mask(self) -> bool:
        """Whether ``mask`` is there to read (without building it)."""
        return self.argmax is not None

    def _windows(self, x_nhwc):
        """The k*k strided views (N, H', W', C) of a channels-last array, one per window
        offset (u, v), in row-major (u, v) order."""
        k = self.kernel_size
        _, _, ho, wo = self.out_shape
        return [x_nhwc[:, u:u + k * ho:k, v:v + k * wo:k] for u in range(k) for v in range(k)]

    def forward(self, x):
        check_images(x, "MaxPool2d")
        n, c, h, w = x.shape
        k = self.kernel_size
        ho, wo = h // k, w // k
        if ho < 1 or wo < 1:
            raise ValueError(f"MaxPool2d: input {h}x{w} is smaller than the {k}x{k} window")
        self.in_shape, self.out_shape = (n, c, h, w), (n, c, ho, wo)
        # (N, C, H, W) -> view (N, H, W, C) -> one strided view (N, H', W', C) per window offset
        views = self._windows(x.transpose(0, 2, 3, 1))
        y = views[0].copy()
        for v in views[1:]:
            np.maximum(y, v, out=y)  # NaN propagates, as in torch
        # argmax = the FIRST offset (row-major) holding the maximum: assign from the last offset back
        argmax = np.full(y.shape, k * k - 1, dtype=np.uint8 if k * k <= 256 else np.int64)
        has_nan = np.issubdtype(y.dtype, np.floating) and np.isnan(y).any()
        for i in range(k * k - 2, -1, -1):
            hit = views[i] == y if not has_nan else (views[i] == y) | np.isnan(views[i])
            argmax -= hit * (argmax - argmax.dtype.type(i))  # argmax = i where hit (branch-free; argmax > i)
        self.argmax = argmax  # (N, H', W', C): window offset u*k + v of the element chosen
        return y.transpose(0, 3, 1, 2)  # view (N, C, H', W') of channels-last memory

    def backward(self, dy):
        # y = x[argmax of the window]  =>  dx = dy at that one element, 0 elsewhere in the window
        n, c, h, w = self.in_shape
        dy_t = dy.transpose(0, 2, 3, 1)  # (N, C, H', W') -> (N, H', W', C)
        dx = np.zeros((n, h, w, c), dtype=dy.dtype)  # rows/columns cropped by floor mode stay 0
        finite = np.isfinite(dy).all()
        for i, view in enumerate(self._windows(dx)):
            self._route(view, dy_t, self._chosen(i), finite)
        return dx.transpose(0, 3, 1, 2)  # view (N, C, H, W)

    def _route(self, view, dy_t, chosen, finite):
        """dy into the chosen elements of one window offset, 0 elsewhere; a selftest slip may override it."""
        if finite:  # a product with the 0/1 mask: branch-free, several times faster than np.where
            np.multiply(dy_t, chosen, out=view)
        else:  # 0 * inf = NaN must not reach the window's other elements
            view[...] = np.where(chosen, dy_t, dy_t.dtype.type(0))

    def _chosen(self, i):
        """Where dy goes: the windows that chose offset i (u*k + v), (N, H', W', C); a selftest slip may override it."""
        return self.argmax == i

    def flops_per_sample(self) -> int:
        """Comparisons: k*k - 1 per output in forward, k*k per output to route the gradient."""
        if self.out_shape is None:
            raise RuntimeError("MaxPool2d.flops_per_sample() needs one forward pass")
        _, c, ho, wo = self.out_shape
        return c * ho * wo * (2 * self.kernel_size ** 2 - 1)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}"


class GlobalAvgPool2d(Module):
    """Average over the whole spatial map (mirrors ``torch.nn.AdaptiveAvgPool2d(1)``).

    ``y[n, c, 0, 0] = (1 / (H W)) sum_{i, j} x[n, c, i, j]``

    The ``cnn18k`` document's "GAP layer" of size 3x3 on a 3x3 map is this. The
    output keeps its two unit axes, as torch's does; a ``Flatten`` removes them
    (the document's ``squeeze()``).

    Shape:
        input (N, C, H, W) -> output (N, C, 1, 1).
    """

    def forward(self, x):
        check_images(x, "GlobalAvgPool2d")
        self.in_shape = x.shape
        # accumulated in float64 whatever the dtype (a float32 sum over a large map drifts; torch's does not)
        return x.mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(x.dtype, copy=False)

    def backward(self, dy):
        # y = mean_{i,j} x  =>  dx[i, j] = dy / (H W) at every position
        n, c, h, w = self.in_shape
        dx = np.empty(self.in_shape, dtype=dy.dtype)
        dx[...] = dy / (h * w)
        return dx

    def flops_per_sample(self) -> int:
        """One add per input element forward, one scaled copy per element backward."""
        if getattr(self, "in_shape", None) is None:
            raise RuntimeError("GlobalAvgPool2d.flops_per_sample() needs one forward pass")
        return 2 * int(np.prod(self.in_shape[1:]))
