"""A learner's layers as CS231n's ``layers.py`` writes them: function pairs with a cache,
``*_forward(x, *params, cfg) -> (out, cache)`` and ``*_backward(dout, cache) -> (dx,
*dparams)``, the affine weight stored (D, M) = (in, out), the conv weight (F, C, HH,
WW) like torch's, and the conv's configuration in a ``conv_param`` dict. The correct
conv backward and a deliberately wrong one (its weight gradient ignores the stride:
right at stride 1, wrong at stride 2).

    affine:  out = x.reshape(N, D) w + b   =>   dw = x^T dout, db = sum dout, dx = dout w^T
    conv:    out[n, f, i, j] = sum x_pad[n, :, i s : i s + HH, j s : j s + WW] w[f] + b[f]
             =>  dw[f] = sum dout[n, f, i, j] x_pad[n, :, window (i, j)], dx_pad[window] += dout w[f]

Checked in ``test_conventions.py``: the pair is passed as a tuple; nn-parity reads the
parameters' shapes and ``conv_param`` ({stride, pad}) from the torch module, and
``bn_param`` ({mode, eps, momentum}: CS231n's momentum is 1 - torch's) for the batchnorm,
whose running statistics (stored back into ``bn_param``) are compared as buffers.

    batchnorm (train):  xhat = (x - mean) / sqrt(var + eps),  out = gamma xhat + beta
             =>  dgamma = sum dout xhat,  dbeta = sum dout,  dx = (g - mean g - xhat mean(g xhat)) / sqrt(var + eps),
                 g = dout gamma
"""

import numpy as np


def affine_forward(x, w, b):
    out = x.reshape(x.shape[0], -1) @ w + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    x, w, b = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    db = dout.sum(axis=0)
    return dx, dw, db


def relu_forward(x):
    return np.maximum(0, x), x


def relu_backward(dout, cache):
    return dout * (cache > 0)


def conv_forward_naive(x, w, b, conv_param):
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out, W_out = 1 + (H + 2 * pad - HH) // stride, 1 + (W + 2 * pad - WW) // stride
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((N, F, H_out, W_out), dtype=x.dtype)
    for i in range(H_out):
        for j in range(W_out):
            window = x_pad[:, :, i * stride:i * stride + HH, j * stride:j * stride + WW]   # (N, C, HH, WW)
            out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
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
    db = dout.sum(axis=(0, 2, 3))
    dx = dx_pad[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]]
    return dx, dw, db


def conv_backward_naive_ignores_stride(dout, cache):
    """The same, but the weight gradient reads the window at (i, j) instead of (i s, j s)."""
    x, w, b, conv_param = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    HH, WW = w.shape[2:]
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dx_pad, dw = np.zeros_like(x_pad), np.zeros_like(w)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            rows, cols = slice(i * stride, i * stride + HH), slice(j * stride, j * stride + WW)
            dw += np.tensordot(dout[:, :, i, j], x_pad[:, :, i:i + HH, j:j + WW], axes=([0], [0]))   # BUG: no stride
            dx_pad[:, :, rows, cols] += np.tensordot(dout[:, :, i, j], w, axes=([1], [0]))
    db = dout.sum(axis=(0, 2, 3))
    dx = dx_pad[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]]
    return dx, dw, db


def batchnorm_forward(x, gamma, beta, bn_param):
    mode, eps, momentum = bn_param["mode"], bn_param.get("eps", 1e-5), bn_param.get("momentum", 0.9)
    D = x.shape[1]
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(D, dtype=x.dtype))
    if mode == "train":
        mu, var = x.mean(axis=0), x.var(axis=0)
        running_mean = momentum * running_mean + (1 - momentum) * mu
        running_var = momentum * running_var + (1 - momentum) * var   # the biased variance (CS231n's choice)
    else:
        mu, var = running_mean, running_var
    xhat = (x - mu) / np.sqrt(var + eps)
    bn_param["running_mean"], bn_param["running_var"] = running_mean, running_var
    return gamma * xhat + beta, (xhat, gamma, var, eps, mode)


def batchnorm_backward(dout, cache):
    xhat, gamma, var, eps, mode = cache
    g = dout * gamma
    if mode == "train":
        dx = (g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0)) / np.sqrt(var + eps)
    else:
        dx = g / np.sqrt(var + eps)
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)
