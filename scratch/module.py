"""Parameter, Module and Sequential: the bookkeeping every scratch layer shares.

The contract is PyTorch's, so that a scratch network and its PyTorch mirror line
up name for name:

* parameters and buffers are registered under attribute names, and
  ``state_dict()`` keys are dotted paths (``U.weight``, ``bn1.running_var``);
* every ``Parameter`` owns a ``grad`` array of its own shape and dtype;
  ``backward`` *accumulates* into it and ``zero_grad()`` clears it (lazily: the first
  gradient after it is taken as it is, where adding it to zeros would give the same
  numbers at the cost of two passes over the array);
* ``train()`` / ``eval()`` switch the mode of a module and all its children.

A layer implements ``forward(x)`` (caching what its backward needs) and
``backward(dy)`` (returning dL/dx and accumulating dL/dparam). NumPy only.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class Parameter:
    """A trainable array and its accumulated gradient.

    Args:
        data: the initial value; the parameter keeps this array (no copy).

    Attributes:
        data: the value, updated in place by the optimizer.
        grad: dL/d(data), same shape and dtype, accumulated by ``backward``.

    ``zero_grad()`` only marks the gradient as zero; reading ``grad`` then gives zeros,
    and the next ``accumulate`` takes its array instead of adding it to zeros (the same
    numbers: x + 0 = x, save the sign of an exact zero, which torch's first backward keeps too).
    """

    __slots__ = ("data", "_grad", "_grad_is_zero")

    def __init__(self, data: np.ndarray):
        self.data = np.asarray(data)
        self.grad = np.zeros_like(self.data)

    @property
    def grad(self) -> np.ndarray:
        if self._grad_is_zero:
            self._grad[...] = 0
            self._grad_is_zero = False
        return self._grad

    @grad.setter
    def grad(self, value: np.ndarray) -> None:
        self._grad, self._grad_is_zero = value, False

    def zero_grad(self) -> None:
        """Mark the gradient zero (``grad`` reads as zeros; nothing is written until then)."""
        self._grad_is_zero = True

    def spare_grad(self) -> np.ndarray | None:
        """The gradient's array while ``zero_grad`` has left it unread (else None): a layer may
        compute its next gradient into it (``out=``) and hand that to ``accumulate``."""
        return self._grad if self._grad_is_zero else None

    def accumulate(self, grad: np.ndarray) -> None:
        """``self.grad += grad``; right after ``zero_grad`` a fresh array of the gradient's own shape
        and dtype becomes the gradient as it is (an array of another shape or dtype is added)."""
        if self._grad_is_zero and grad.shape == self._grad.shape and grad.dtype == self._grad.dtype:
            self.grad = grad
        else:
            self.grad += grad

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every scratch layer and network (mirrors ``torch.nn.Module``).

    Subclasses assign ``Parameter`` and ``Module`` attributes in ``__init__``;
    they are registered in assignment order, which fixes the order of
    ``named_parameters()`` and ``state_dict()``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               f"before assigning attribute {name!r}")
        if not isinstance(value, (Parameter, Module)) and name not in self._parameters \
                and name not in self._buffers and name not in self._modules:
            object.__setattr__(self, name, value)  # a plain attribute (a layer's cache): nothing to register
            return
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """Register a non-trainable array that belongs to the state (e.g. running_var)."""
        object.__setattr__(self, name, value)
        self._buffers[name] = value

    def _set_buffer(self, name: str, value: np.ndarray) -> None:
        """Replace a registered buffer's array (used by layers that rebind a buffer)."""
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    # --- traversal -----------------------------------------------------------------
    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_children(self):
        return iter(self._modules.items())

    def named_parameters(self, prefix: str = ""):
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = ""):
        for mod_name, mod in self.named_modules(prefix):
            for name, b in mod._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    # --- state -----------------------------------------------------------------------
    def named_state(self):
        """``(name, live array)`` of every parameter and buffer in ``torch.nn.Module.state_dict()``
        order: module by module, each module's parameters, then its buffers."""
        for mod_name, mod in self.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                yield prefix + name, p.data
            for name, b in mod._buffers.items():
                yield prefix + name, b

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer, keyed and ordered like ``torch.nn.Module.state_dict()``."""
        return OrderedDict((k, np.array(a, copy=True)) for k, a in self.named_state())

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into the parameters and buffers, in place.

        Raises ``KeyError`` listing missing and unexpected names, and ``ValueError``
        naming the first key whose shape or dtype differs. Nothing is written unless
        every key matches.
        """
        own = OrderedDict(self.named_state())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise KeyError(f"state_dict keys differ: missing {missing}, unexpected {unexpected}")
        for k, dst in own.items():
            src = np.asarray(state[k])
            if src.shape != dst.shape or src.dtype != dst.dtype:
                raise ValueError(f"{k}: expected shape {dst.shape} dtype {dst.dtype}, "
                                 f"got shape {src.shape} dtype {src.dtype}")
        for k, dst in own.items():
            dst[...] = state[k]

    def astype(self, dtype) -> "Module":
        """Convert every parameter (and floating buffer) to ``dtype``, in place; returns self."""
        dtype = np.dtype(dtype)
        for _, p in self.named_parameters():
            p.data = p.data.astype(dtype)
            p.grad = np.zeros_like(p.data)
        for mod_name, mod in self.named_modules():
            for name, b in list(mod._buffers.items()):
                if np.issubdtype(b.dtype, np.floating):
                    mod._set_buffer(name, b.astype(dtype))
        return self

    def _accumulate(self, param: Parameter, grad) -> None:
        """``param.grad += grad``: gradients add up over backward calls until ``zero_grad``; a selftest slip may override it.

        ``grad`` must be an array this layer hands over (computed for this call, kept by
        nothing else): right after ``zero_grad`` it becomes ``param.grad`` without a copy."""
        param.accumulate(grad)

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero (gradients otherwise accumulate)."""
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True) -> "Module":
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    # --- computation -----------------------------------------------------------------
    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        return lines[0] + (")" if len(lines) == 1 else "\n" + "\n".join(lines[1:]) + "\n)")


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    Built from an ordered mapping so the layer names become the ``state_dict``
    prefixes, exactly as ``torch.nn.Sequential(OrderedDict(...))`` does.

    When ``record`` is true, ``forward`` keeps every layer's output in
    ``outputs[name]`` and ``backward`` keeps the gradient arriving at every
    layer's output in ``upstream[name]`` (references, not copies): the named
    intermediates the parity harness compares.

    Shape: whatever the layers accept; the first layer sees the input.
    """

    def __init__(self, layers: "OrderedDict[str, Module]"):
        super().__init__()
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for name, layer in layers.items():
            setattr(self, name, layer)
        self.record = False
        self.outputs: dict = {}
        self.upstream: dict = {}
        self.set_input_grad(False)

    def set_input_grad(self, flag: bool) -> "Sequential":
        """Whether ``backward`` returns dL/d(input).

        Off by default: the input is data and never needs a gradient (as in torch,
        where inputs do not require grad), which saves the largest GEMM of an MLP.
        Gradient checks on the input switch it on; ``backward`` then returns it.
        """
        first = next(iter(self._modules.values()))
        if hasattr(first, "needs_input_grad"):
            first.needs_input_grad = flag
        return self

    def __setattr__(self, name, value):
        if name in ("record", "outputs", "upstream"):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x):
        for name, layer in self._modules.items():
            x = layer.forward(x)
            if self.record:
                self.outputs[name] = x
        return x

    def backward(self, dy):
        for name, layer in reversed(self._modules.items()):
            if self.record:
                self.upstream[name] = dy
            dy = layer.backward(dy)
        return dy
