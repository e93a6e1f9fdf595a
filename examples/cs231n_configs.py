"""Two slips that exist only in some configurations, as CS231n ``layers.py`` solutions write
them (function pairs with a cache; ``conv_param`` / ``pool_param`` read from the torch
module), each beside the correct version. ``nnparity.sweep_layer`` finds both.

    conv:  dx = dx_pad cropped back to x's size. Cropping with dx_pad[:, :, pad:-pad, pad:-pad]
           is right for pad >= 1 and EMPTY at pad 0 (x[0:-0] is x[0:0]); crop with pad:pad + H.
    max pool:  out[n, c, i, j] = max of window (i, j)  =>  dx[argmax of window (i, j)] += dout[n, c, i, j].
           Writing = instead of += is right while windows do not overlap (stride >= kernel) and
           wrong as soon as they do: an element that is the max of two windows gets one gradient.
"""

import numpy as np

from examples.cs231n_layers import conv_forward_naive   # noqa: F401 (the forward the conv pairs share)


def _conv_dx_pad_dw(dout, cache):
    x, w, b, conv_param = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    HH, WW = w.shape[2:]
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dx_pad, dw = np.zeros_like(x_pad), np.zeros_like(w)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            rows, cols = slice(i * stride, i * stride + HH), slice(j * stride, j * stride + WW)
            dw += np.tensordot(dout[:, :, i, j], x_pad[:, :, rows, cols], axes=([0], [0]))
            dx_pad[:, :, rows, cols] += np.tensordot(dout[:, :, i, j], w, axes=([1], [0]))
    return dx_pad, dw, dout.sum(axis=(0, 2, 3)), pad


def conv_backward_naive(dout, cache):
    dx_pad, dw, db, pad = _conv_dx_pad_dw(dout, cache)
    H, W = cache[0].shape[2:]
    return dx_pad[:, :, pad:pad + H, pad:pad + W], dw, db


def conv_backward_naive_crops(dout, cache):
    """The slip: ``pad:-pad`` (empty at pad 0)."""
    dx_pad, dw, db, pad = _conv_dx_pad_dw(dout, cache)
    return dx_pad[:, :, pad:-pad, pad:-pad], dw, db


def max_pool_forward_naive(x, pool_param):
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H, W = x.shape
    out = np.zeros((N, C, 1 + (H - ph) // s, 1 + (W - pw) // s), dtype=x.dtype)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = x[:, :, i * s:i * s + ph, j * s:j * s + pw].max(axis=(2, 3))
    return out, (x, pool_param)


def _max_pool_backward(dout, cache, accumulate: bool):
    x, pool_param = cache
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    dx = np.zeros_like(x)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    window = x[n, c, i * s:i * s + ph, j * s:j * s + pw]
                    a, b = np.unravel_index(np.argmax(window), window.shape)
                    if accumulate:
                        dx[n, c, i * s + a, j * s + b] += dout[n, c, i, j]
                    else:
                        dx[n, c, i * s + a, j * s + b] = dout[n, c, i, j]
    return dx


def max_pool_backward_naive(dout, cache):
    return _max_pool_backward(dout, cache, accumulate=True)


def max_pool_backward_assigns(dout, cache):
    """The slip: ``dx[argmax] = dout`` instead of ``+=`` (wrong only where windows overlap)."""
    return _max_pool_backward(dout, cache, accumulate=False)
