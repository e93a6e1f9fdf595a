"""Reference-side modules torch does not ship in the form parity needs."""

from __future__ import annotations

import torch
from torch import nn


class MaskedDropout(nn.Module):
    """``torch.nn.Dropout(p)`` with the Bernoulli mask supplied from outside.

    Parity with dropout active needs the same mask on both sides, and parity never
    relies on two libraries drawing the same random numbers: the scratch
    ``Dropout`` draws the mask, and ``nnparity.training.sides.TorchSide`` sets it here as
    ``.mask`` (bool, the input's shape, True = kept) before each forward pass.

    Everything else is torch's own dropout arithmetic (``at::native::_dropout_impl``):
    ``noise = mask.to(dtype); noise.div_(1 - p); y = x * noise``, zeros for ``p = 1``,
    the identity in ``eval()``; autograd differentiates it (``dx = dy * noise``).
    A mask is used for one training forward pass only, then cleared, so a stale mask
    can never be applied to the next batch by mistake: a training pass without one is
    an error, unless ``draw_own_mask`` is set, when it is plain ``F.dropout`` drawing
    from torch's generator (``nnparity bench`` times each side drawing its own masks).

    Args:
        p: probability of zeroing an element.

    Shape: any; output has the input's shape.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"MaskedDropout: p must be in [0, 1], got {p}")
        self.p = float(p)
        self.mask: torch.Tensor | None = None
        self.draw_own_mask = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            self.mask = None
            return x
        mask, self.mask = self.mask, None
        if mask is None and self.draw_own_mask:
            return nn.functional.dropout(x, self.p, training=True)
        if mask is None:
            raise RuntimeError("MaskedDropout in training mode needs .mask set before each forward pass "
                               "(the scratch Dropout's mask, handed over by the parity harness)")
        if tuple(mask.shape) != tuple(x.shape):
            raise ValueError(f"MaskedDropout: mask shape {tuple(mask.shape)} does not match input {tuple(x.shape)}")
        if self.p == 1:
            return x * torch.zeros_like(x)
        noise = mask.to(x.dtype)
        noise.div_(1 - self.p)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class AlignedMaxPool2d(nn.MaxPool2d):
    """``torch.nn.MaxPool2d(k)`` that, during step parity, breaks *ties* the way the
    scratch side did.

    The gradient of a max goes to one element of each window. When several elements
    are equal, which one is a convention (torch: the first in row-major order, the
    layer tests check scratch follows it), but in a real network the "equal" values
    are computed: MNIST's blank borders make many windows' values mathematically
    equal, and two implementations round them differently by an ulp, so each side
    routes the gradient to a different (equally valid) element. That alone makes
    upstream gradients disagree, and in float32 the different routing changes the
    weights and the runs drift apart within a few steps.

    So, when ``tie_tol = (atol, rtol)`` is set (``nnparity.core.parity.check_steps`` sets
    the parity tolerance) and the scratch ``MaxPool2d`` handed over its choices as
    ``.mask`` (torch's ``return_indices`` convention), this module takes the scratch
    choice in every window where that element is within ``atol + rtol * |max|`` of
    torch's own maximum: values the parity check cannot tell apart. Every other window
    keeps torch's choice, so a wrong argmax still shows. The output is gathered at the
    chosen elements (identical to ``max_pool2d`` where nothing was adopted, and
    within the tolerance of it where something was); autograd routes the gradient.
    With ``tie_tol = None`` (the default, and in training runs) it is exactly
    ``nn.MaxPool2d``. A handed-over mask is used for one forward pass only.

    Args:
        kernel_size: k (window and stride).

    Shape: (N, C, H, W) -> (N, C, H // k, W // k).
    """

    def __init__(self, kernel_size: int):
        super().__init__(kernel_size)
        self.mask: torch.Tensor | None = None
        self.tie_tol: tuple[float, float] | None = None
        self.adopted = 0  # windows where the last forward took the scratch choice over torch's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice, self.mask = self.mask, None
        if choice is None or self.tie_tol is None:
            self.adopted = 0
            return super().forward(x)
        y, idx = nn.functional.max_pool2d(x, self.kernel_size, self.stride, return_indices=True)
        if tuple(choice.shape) != tuple(idx.shape):
            raise ValueError(f"AlignedMaxPool2d: choices of shape {tuple(choice.shape)} for an output of "
                             f"shape {tuple(idx.shape)}")
        atol, rtol = self.tie_tol
        with torch.no_grad():
            flat = x.flatten(2)  # (N, C, H, W) -> (N, C, H*W)
            alt = flat.gather(2, choice.flatten(2)).view_as(y)  # torch's value at the scratch choice
            tie = (y - alt).abs() <= atol + rtol * y.abs()
            new_idx = torch.where(tie, choice, idx)
            self.adopted = int((new_idx != idx).sum())
        return x.flatten(2).gather(2, new_idx.flatten(2)).view_as(y)


class AlignedReLU(nn.ReLU):
    """``torch.nn.ReLU`` that, during step parity, takes the scratch side's decision for the
    inputs it cannot tell apart from 0.

    ReLU is ``max(x, 0)``: at ``x`` within rounding of 0 the two sides can decide the kink
    differently (one passes the gradient, the other blocks it), an ulp-sized accident in
    float32 that a BatchNorm behind it then scales up. As for ``AlignedMaxPool2d``:
    with ``tie_tol = (atol, rtol)`` set (by ``nnparity.core.parity.check_steps``) and the
    scratch ``ReLU``'s ``x > 0`` handed over as ``.mask``, the elements with
    ``|x| <= atol`` follow the scratch decision (their output differs from torch's by at
    most ``atol``); every other element is torch's own ReLU. Without ``tie_tol`` (the
    default, and in training runs) it is exactly ``nn.ReLU``.

    Shape: any; output has the input's shape.
    """

    def __init__(self):
        super().__init__()
        self.mask: torch.Tensor | None = None
        self.tie_tol: tuple[float, float] | None = None
        self.adopted = 0  # elements where the last forward took the scratch decision over torch's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch_pass, self.mask = self.mask, None
        if scratch_pass is None or self.tie_tol is None:
            self.adopted = 0
            return super().forward(x)
        with torch.no_grad():
            own = x > 0
            near = x.abs() <= self.tie_tol[0]
            decision = torch.where(near, scratch_pass, own)
            self.adopted = int((decision != own).sum())
        return x * decision.to(x.dtype)
