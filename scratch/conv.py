"""2-D convolution (PyTorch's cross-correlation), vectorised as im2col + one GEMM.

Layout on the outside is PyTorch's: images (N, C, H, W), weight
(out_channels, in_channels, kH, kW). On the inside the output of the GEMM is
laid out channels-last in memory, (N, H', W', C_out), and returned as the
(N, C_out, H', W') *view* of it: no copy is needed, every NumPy operation
downstream accepts any strides, and the next layer's im2col then reads whole
channel vectors contiguously. The column matrix is ordered (kH, kW, C_in) for
the same reason; the weight is permuted to match (a few kB).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .module import Module, Parameter


def _pair(v, what: str) -> tuple[int, int]:
    """``3`` or ``(3, 3)`` -> ``(3, 3)``; refuses anything else with a clear message."""
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(pair) != 2 or not all(isinstance(a, (int, np.integer)) for a in pair):
        raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")
    return int(pair[0]), int(pair[1])


def check_images(x, layer: str, channels: int | None = None) -> None:
    """Refuse anything that is not an (N, C, H, W) batch (with ``channels`` channels)."""
    if np.ndim(x) != 4:
        raise ValueError(f"{layer}: expected images of shape (N, C, H, W), got shape {np.shape(x)}; "
                         "add the channel axis with x[:, None] for single-channel images")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer}: expected {channels} input channels, got {x.shape[1]} "
                         f"(input shape {x.shape})")


def channelwise(ufunc, x, v, out=None):
    """``ufunc(x, v)`` for a value ``v`` per channel of the (N, C, H, W) array ``x``: the same
    numbers as ``ufunc(x, v.reshape(1, C, 1, 1))``, in the same layout.

    On channels-last memory (a convolution's or pool's output) a broadcast over (1, C, 1, 1)
    runs NumPy's inner loop over the C values of one pixel at a time, ten to forty: the loop's
    overhead costs more than the arithmetic. Here the same elementwise operation runs on the
    (N, H*W*C) rows of that memory against ``v`` repeated H*W times, whole rows per inner loop:
    about three times faster on cnn18k's largest maps (16 x 24 x 24 x 20), and the same bits,
    since every element still meets the same one value. Any other layout, an empty batch or a
    scalar ``v`` is the plain broadcast."""
    if np.ndim(v) == 0:  # a scalar, Python's too: NumPy's own rules for its dtype
        return ufunc(x, v, out=out)
    v = np.asarray(v)
    n, c, h, w = x.shape
    nhwc = x.transpose(0, 2, 3, 1)  # (N, C, H, W) -> view (N, H, W, C)
    rows_ok = v.size == c > 1 and x.size > 0 and nhwc.flags.c_contiguous
    if rows_ok and out is None:
        out = np.empty_like(x, dtype=np.result_type(x.dtype, v.dtype))  # keeps x's layout
    if not rows_ok or not out.transpose(0, 2, 3, 1).flags.c_contiguous:
        return ufunc(x, v.reshape(1, -1, 1, 1) if v.size > 1 else v, out=out)
    ufunc(nhwc.reshape(n, -1), np.tile(v.reshape(-1), h * w), out=out.transpose(0, 2, 3, 1).reshape(n, -1))
    return out


class Conv2d(Module):
    """2-D cross-correlation with a learned bias (mirrors ``torch.nn.Conv2d``, zero padding).

    ``y[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] * xp[n, c, i*sH + u, j*sW + v]``,
    ``xp`` = the input zero-padded by ``padding`` on each side. No kernel flip: this is
    the cross-correlation PyTorch (and every deep-learning library) calls convolution.

    Computed as im2col + GEMM: the (kH x kW x C_in) window under every output pixel
    becomes one row of a column matrix (a strided view of the input, copied once; see ``_im2col``),
    and the whole batch is one matrix product with the permuted weight. Backward is
    a GEMM for dW and a col2im that adds the window gradients back into place: one
    small GEMM and one vectorised add per kernel offset (kH * kW of them; no loop over
    samples, channels or pixels).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: kH, kW (an int for a square kernel).
        stride: sH, sW (default 1).
        padding: zero rows/columns added on each side, pH, pW (default 0).
        bias: whether to learn an additive per-channel bias.
        dtype: parameter dtype.

    Shape:
        input (N, C_in, H, W) -> output (N, C_out, H', W'),
        ``H' = (H + 2 pH - kH) // sH + 1`` (likewise W').
        weight (C_out, C_in, kH, kW), bias (C_out,): PyTorch's layout.

    Parameters start at zero: initialisation is a separate step (``scratch.init``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, dtype=np.float64):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d needs kernel_size >= 1, stride >= 1, padding >= 0; got "
                             f"{self.kernel_size}, {self.stride}, {self.padding}")
        kh, kw = self.kernel_size
        self.weight = Parameter(np.zeros((out_channels, in_channels, kh, kw), dtype=dtype))
        self.bias = Parameter(np.zeros(out_channels, dtype=dtype)) if bias else None
        self.needs_input_grad = True
        self.in_shape = self.out_shape = None

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(H', W') for an (H, W) input."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def _im2col(self, x):
        """(N, C, H, W) -> column matrix (N*H'*W', kH*kW*C): one row per output pixel.

        Row ``(n, i, j)`` holds the window under output pixel (i, j) ordered (kH, kW, C_in), a
        C-contiguous matrix: the same values and the same layout whichever way it is filled, so
        the same GEMMs. A channels-last input (the previous conv's or pool's output) is copied as
        one strided window view, whose innermost runs are kW*C contiguous values; an NCHW input is first
        made channels-last (one transposing copy of the input, kH*kW times smaller than the
        columns), except with a single channel, where the kH*kW block copies
        ``cols[..., u, v, :] = xp[:, :, i*sH + u, j*sW + v]`` are cheaper (runs of W' values).
        """
        n, c = x.shape[:2]
        _, _, ho, wo = self.out_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        x_nhwc = x.transpose(0, 2, 3, 1)  # (N, C, H, W) -> view (N, H, W, C)
        if ph or pw:  # pad channels-last, so the padded copy keeps channel vectors contiguous
            x_nhwc = np.pad(x_nhwc, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        cols = np.empty((n, ho, wo, kh, kw, c), dtype=x.dtype)
        if c == 1:  # kH*kW block copies: (N, H', W', 1) strided views, one per kernel offset (u, v)
            for u in range(kh):
                for v in range(kw):
                    cols[:, :, :, u, v, :] = x_nhwc[:, u:u + sh * (ho - 1) + 1:sh, v:v + sw * (wo - 1) + 1:sw, :]
        else:
            if not x_nhwc.flags.c_contiguous:  # NCHW memory: one channels-last copy first
                x_nhwc = np.ascontiguousarray(x_nhwc)
            # (N, Hp, Wp, C) -> windows (N, Hp-kH+1, Wp-kW+1, C, kH, kW), a strided view; keep every stride-th
            win = sliding_window_view(x_nhwc, (kh, kw), axis=(1, 2))[:, ::sh, ::sw][:, :ho, :wo]
            # (N, H', W', C, kH, kW) -> (N, H', W', kH, kW, C): the one copy of the columns
            cols[...] = win.transpose(0, 1, 2, 4, 5, 3)
        return cols.reshape(n * ho * wo, kh * kw * c)  # (N*H'*W', kH*kW*C), C-contiguous: a view

    def forward(self, x):
        check_images(x, "Conv2d", self.in_channels)
        n, c, h, w = x.shape
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        ho, wo = self.output_size(h, w)
        if ho < 1 or wo < 1:
            raise ValueError(f"Conv2d: input {h}x{w} (padding {ph},{pw}) is smaller than the kernel {kh}x{kw}")
        self.in_shape, self.out_shape = (n, c, h, w), (n, self.out_channels, ho, wo)
        cols = self._im2col(x)
        # Training keeps the column matrix for dW; evaluation keeps only the input (no copy) and
        # rebuilds the columns if a backward pass ever comes: the columns are kH*kW times the input.
        self.cols, self.x = (cols, None) if self.training else (None, x)
        # (C_out, C_in, kH, kW) -> (C_out, kH, kW, C_in) -> (C_out, kH*kW*C_in), matching the columns
        w2 = self.weight.data.transpose(0, 2, 3, 1).reshape(self.out_channels, -1)
        y = cols @ w2.T  # (N*H'*W', K) @ (K, C_out) -> (N*H'*W', C_out)
        # (N*H'*W', C_out) -> (N, H', W', C_out) -> view (N, C_out, H', W') (channels-last memory)
        y = y.reshape(n, ho, wo, self.out_channels).transpose(0, 3, 1, 2)
        if self.bias is not None:
            channelwise(np.add, y, self.bias.data, out=y)  # y += b, whole rows at a time
        return y

    def backward(self, dy):
        # y = cols W2^T + b  =>  dW2 = dy^T cols,  db = sum over (n, i, j) of dy,  dcols = dy W2,
        # and dx = col2im(dcols): each window's gradient added back where the window was read.
        n, c, h, w = self.in_shape
        _, o, ho, wo = self.out_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        dy2 = dy.transpose(0, 2, 3, 1).reshape(n * ho * wo, o)  # (N, C_out, H', W') -> (N*H'*W', C_out)
        cols = self.cols if self.cols is not None else self._im2col(self.x)
        dw2 = dy2.T @ cols  # (C_out, N*H'*W') @ (N*H'*W', K) -> (C_out, K)
        self._accumulate(self.weight, self._weight_grad_layout(dw2))  # (C_out, K) -> (C_out, C_in, kH, kW)
        if self.bias is not None:
            self._accumulate(self.bias, dy2.sum(axis=0, dtype=np.float64).astype(dy2.dtype))  # float64 accumulation
        if not self.needs_input_grad:
            return None
        # dcols = dy2 W2 is computed one kernel offset (u, v) at a time, dy2 @ W[:, :, u, v], so that
        # each block is contiguous (N, H', W', C_in) and the col2im add runs over whole rows
        dxp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dy2.dtype)  # padded, channels-last
        for u in range(kh):  # col2im: one GEMM and one strided add per kernel offset
            for v in range(kw):
                block = (dy2 @ self.weight.data[:, :, u, v]).reshape(n, ho, wo, c)  # (N*H'*W', C_in) -> NHWC
                dxp[:, u:u + sh * (ho - 1) + 1:sh, v:v + sw * (wo - 1) + 1:sw, :] += block
        # (N, Hp, Wp, C_in) -> crop the padding -> view (N, C_in, H, W)
        return dxp[:, ph:ph + h, pw:pw + w, :].transpose(0, 3, 1, 2)

    def _weight_grad_layout(self, dw2):
        """dW2 (C_out, K) -> (C_out, kH, kW, C_in) -> (C_out, C_in, kH, kW); a selftest slip may override it."""
        o, c, kh, kw = self.weight.data.shape
        return dw2.reshape(o, kh, kw, c).transpose(0, 3, 1, 2)

    def flops_per_sample(self) -> int:
        """Training FLOPs per sample: forward, dW and (unless skipped) dx GEMMs, 2 per multiply-add."""
        if self.out_shape is None:
            raise RuntimeError("Conv2d.flops_per_sample() needs one forward pass to know the image size")
        _, o, ho, wo = self.out_shape
        kh, kw = self.kernel_size
        macs = o * self.in_channels * kh * kw * ho * wo
        return 2 * macs * (3 if self.needs_input_grad else 2)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")
