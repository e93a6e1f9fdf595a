"""The two sides of a parity run: a scratch model and its PyTorch mirror, each with
its loss and optimizer, driven through the same calls.

``step(x, y, record=True)`` returns the named intermediates of one training step
in computation order, under the same names on both sides::

    out/<layer>      forward activation (the output of a top-level layer)
    loss             the loss
    dout/<layer>     upstream gradient: dL/d(out/<layer>)
    grad/<param>     parameter gradient (before the update)
    param/<param>    parameter after the optimizer step
    state/<param>.momentum_buffer   optimizer state
    buffer/<name>    buffers (BatchNorm's running statistics)

``step(x, y)`` without ``record`` is the fast path used for training. With
``record``, the torch side's ``StepResult.inputs`` also holds each top-level
layer's input (not compared; ``nnparity.diagnosis.localize`` feeds it to a scratch layer
alone to tell the layer's own error from an inherited one).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

# Evaluation chunk size. The scratch Conv2d's im2col copy is (N*H'*W', C_in*kH*kW): for
# cnn18k's conv2 in float64 that is 415 MB at 1000 images and a whole float64 cnn18k run
# peaked at 2.1 GiB; 250 images per chunk keeps it under 2 GiB (the accuracy is the same;
# the summed test loss differs by rounding).
EVAL_BATCH = 250


@dataclass
class StepResult:
    loss: float          # the loss as reduced by the recipe
    n: int               # samples in the batch
    correct: int         # argmax(logits) == label
    record: "OrderedDict[str, np.ndarray] | None" = None
    # torch side, with ``record``: each top-level layer's input, by layer name (not part of
    # the compared record; a Sequential layer's input is the previous layer's output)
    inputs: "OrderedDict[str, np.ndarray] | None" = None


def canonical_order(layer_names, param_names, state_names, buffer_names) -> list[str]:
    """Record keys in the order a training step computes them."""
    layer_names = list(layer_names)
    keys = [f"out/{n}" for n in layer_names] + ["loss"]
    for layer in reversed(layer_names):
        keys.append(f"dout/{layer}")
        keys += [f"grad/{p}" for p in param_names if p.startswith(layer + ".")]
    # parameters outside every recorded layer (a network's own parameters): after the backward, never dropped
    keys += [f"grad/{p}" for p in param_names if f"grad/{p}" not in keys]
    keys += [f"param/{p}" for p in param_names]
    keys += [f"state/{s}" for s in state_names]
    keys += [f"buffer/{b}" for b in buffer_names]
    return keys


def count_correct(logits, y) -> int:
    """Samples whose argmax matches the label (integer labels) or the target's argmax (one-hot targets)."""
    logits, y = np.asarray(logits), np.asarray(y)
    if logits.ndim != 2:
        return 0
    if y.shape == logits.shape:
        return int((logits.argmax(axis=1) == y.argmax(axis=1)).sum())
    if y.shape == (len(logits),) and np.issubdtype(y.dtype, np.integer):
        return int((logits.argmax(axis=1) == y).sum())
    return 0


def summed(batch_loss: float, reduction: str, n: int) -> float:
    """The batch's loss summed over its samples, whatever the reduction."""
    return batch_loss * n if reduction == "mean" else batch_loss


class Draws(Mapping):
    """``{layer name: mask}`` of a scratch model's last forward pass, as a dict of them was.

    A mask held as an attribute (dropout, ReLU) is taken when the mapping is made; a mask
    computed on request (a max-pool's flat indices, built from its argmax) is computed only
    when read, which must then happen before the layer's next forward pass. The names are
    the layers with ``draws_mask`` that hold a mask (``has_mask`` where the layer defines it,
    so that asking builds nothing)."""

    def __init__(self, model):
        self._masks = OrderedDict()
        for name, mod in model.named_modules():
            if not getattr(mod, "draws_mask", False):
                continue
            if "mask" in vars(mod):
                if mod.mask is not None:
                    self._masks[name] = mod.mask
            elif getattr(mod, "has_mask", None) or (not hasattr(mod, "has_mask") and mod.mask is not None):
                self._masks[name] = mod  # read on access

    def __getitem__(self, name):
        mask = self._masks[name]
        return mask.mask if not isinstance(mask, np.ndarray) else mask

    def __iter__(self):
        return iter(self._masks)

    def __len__(self):
        return len(self._masks)


class ScratchSide:
    """A scratch model + loss + optimizer (NumPy)."""

    name = "scratch"

    def __init__(self, model, loss_fn, optimizer):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.seconds = 0.0

    def step(self, x: np.ndarray, y: np.ndarray, record: bool = False, draws=None) -> StepResult:
        """One training step; ``draws`` is accepted for symmetry and ignored (this side draws)."""
        t0 = time.perf_counter()
        m = self.model
        m.train()
        m.record = record
        m.zero_grad()
        logits = m.forward(x)
        loss = self.loss_fn.forward(logits, y)
        m.backward(self.loss_fn.backward())
        rec = None
        if record:
            grads = OrderedDict((k, p.grad.copy()) for k, p in m.named_parameters())
        self.optimizer.step()
        self.seconds += time.perf_counter() - t0
        if record:
            rec = self._record(logits, loss, grads)
            m.record = False
        return StepResult(float(loss), len(y), count_correct(logits, y), rec)

    def _record(self, logits, loss, grads):
        m = self.model
        values = {f"out/{k}": v for k, v in m.outputs.items()}
        values["loss"] = np.asarray(loss)
        values.update((f"dout/{k}", v) for k, v in m.upstream.items())
        values.update((f"grad/{k}", g) for k, g in grads.items())
        values.update((f"param/{k}", p.data) for k, p in m.named_parameters())
        values.update((f"state/{k}", v) for k, v in self.optimizer.state_dict().items())
        values.update((f"buffer/{k}", b) for k, b in m.named_buffers())
        keys = canonical_order(list(m._modules), list(grads), list(self.optimizer.state_dict()),
                               [k for k, _ in m.named_buffers()])
        return OrderedDict((k, np.array(values[k], copy=True)) for k in keys if k in values)

    def draws(self) -> "Draws":
        """The draws of the last forward pass (dropout masks; ReLU and max-pool choices), by layer
        name: a mapping that builds a mask only when it is read (``TorchSide`` reads only those
        its modules use: in a training run, the dropout masks)."""
        return Draws(self.model)

    def evaluate(self, x, y, batch_size: int = EVAL_BATCH) -> tuple[float, float]:
        """(mean per-sample loss, accuracy %) in eval mode."""
        m = self.model
        m.eval()
        total, correct = 0.0, 0
        for s in range(0, len(y), batch_size):
            logits = m.forward(x[s:s + batch_size])
            total += summed(float(self.loss_fn.forward(logits, y[s:s + batch_size])),
                            self.loss_fn.reduction, len(logits))
            correct += int((logits.argmax(axis=1) == y[s:s + batch_size]).sum())
        m.train()
        return total / len(y), 100.0 * correct / len(y)

    def state(self) -> "OrderedDict[str, np.ndarray]":
        """Live parameter, optimizer-state and buffer arrays, by record key."""
        out = OrderedDict((f"param/{k}", p.data) for k, p in self.model.named_parameters())
        out.update((f"state/{k}.momentum_buffer", v) for k, v in self.optimizer.buffers.items())
        out.update((f"buffer/{k}", b) for k, b in self.model.named_buffers())
        return out

    def grads(self) -> "OrderedDict[str, np.ndarray]":
        """The gradients of the last step, by record key."""
        return OrderedDict((f"grad/{k}", p.grad) for k, p in self.model.named_parameters())

    def set_lr(self, lr: float) -> None:
        self.optimizer.lr = lr

    def load_state(self, state: dict) -> None:
        """Inverse of ``state()``: parameters, buffers and optimizer state, by record key."""
        model_state = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(("param/", "buffer/"))}
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict({k[len("state/"):]: v for k, v in state.items() if k.startswith("state/")})


class TorchSide:
    """A torch model + loss + optimizer, recorded under the scratch side's names."""

    name = "torch"
    training = True   # the mode of every training step (False: steps in eval mode, check_steps(mode="eval"))

    def __init__(self, model: torch.nn.Module, loss_fn, optimizer: torch.optim.Optimizer):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.seconds = 0.0

    def recorded_children(self):
        """The modules whose outputs are recorded as ``out/<name>`` (the top-level layers)."""
        return list(self.model.named_children())

    def uses_draw(self, name: str) -> bool:
        """Whether the module ``name`` takes the scratch side's draw: one that reads a ``.mask``
        (``reference.layers.MaskedDropout`` always; an aligned module only with a tie tolerance,
        not in a training run). A plain ``nn.ReLU`` takes none: its mask would be built, and
        sent to a torch worker, for nothing at every step."""
        module = self.model.get_submodule(name)
        return hasattr(module, "mask") and getattr(module, "tie_tol", "used") is not None

    def _feed_draws(self, draws):
        for name in draws or ():
            if self.uses_draw(name):
                self.model.get_submodule(name).mask = torch.from_numpy(draws[name])

    def step(self, x: np.ndarray, y: np.ndarray, record: bool = False, draws=None) -> StepResult:
        t0 = time.perf_counter()
        m = self.model
        m.train(self.training)
        self._feed_draws(draws)
        outs, douts, ins, hooks = OrderedDict(), OrderedDict(), OrderedDict(), []
        if record:
            def keep(name):
                def hook(_mod, inp, out):
                    if inp and isinstance(inp[0], torch.Tensor):
                        ins[name] = inp[0].detach().clone()
                    outs[name] = out.detach().clone()
                    if out.requires_grad:
                        out.register_hook(lambda g: douts.__setitem__(name, g.detach().clone()))
                return hook
            hooks = [mod.register_forward_hook(keep(n)) for n, mod in self.recorded_children()]
        try:
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            self.optimizer.zero_grad(set_to_none=True)
            logits = m(xt)
            loss = self.loss_fn(logits, yt)
            loss.backward()
            grads = (OrderedDict((k, p.grad.detach().clone()) for k, p in m.named_parameters())
                     if record else None)
            self.optimizer.step()
        finally:
            for h in hooks:
                h.remove()
        self.seconds += time.perf_counter() - t0
        rec = self._record(outs, loss, douts, grads) if record else None
        inputs = OrderedDict((k, v.numpy()) for k, v in ins.items()) if record else None
        return StepResult(loss.item(), len(y), count_correct(logits.detach().numpy(), y), rec, inputs)

    def _record(self, outs, loss, douts, grads):
        values = {f"out/{k}": v for k, v in outs.items()}
        values["loss"] = loss.detach()
        values.update((f"dout/{k}", v) for k, v in douts.items())
        values.update((f"grad/{k}", g) for k, g in grads.items())
        state = self.state()
        values.update(state)
        keys = canonical_order([n for n, _ in self.recorded_children()], list(grads),
                               [k[len("state/"):] for k in state if k.startswith("state/")],
                               [k[len("buffer/"):] for k in state if k.startswith("buffer/")])
        return OrderedDict((k, np.array(_np(values[k]), copy=True)) for k in keys if k in values)

    def evaluate(self, x, y, batch_size: int = EVAL_BATCH) -> tuple[float, float]:
        m = self.model
        m.eval()
        total, correct = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(y), batch_size):
                xt, yt = torch.from_numpy(x[s:s + batch_size]), torch.from_numpy(y[s:s + batch_size])
                logits = m(xt)
                total += summed(float(self.loss_fn(logits, yt)), self.loss_fn.reduction, len(yt))
                correct += int((logits.argmax(dim=1) == yt).sum())
        m.train()
        return total / len(y), 100.0 * correct / len(y)

    def state(self) -> "OrderedDict[str, np.ndarray]":
        out = OrderedDict((f"param/{k}", p.detach().numpy()) for k, p in self.model.named_parameters())
        for k, p in self.model.named_parameters():
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"state/{k}.momentum_buffer"] = buf.numpy()
        out.update((f"buffer/{k}", b.numpy()) for k, b in self.model.named_buffers())
        return out

    def grads(self) -> "OrderedDict[str, np.ndarray]":
        return OrderedDict((f"grad/{k}", p.grad.numpy()) for k, p in self.model.named_parameters()
                           if p.grad is not None)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def load_state(self, state: dict) -> None:
        """Inverse of ``state()``: parameters, buffers and optimizer state, by record key."""
        model_state = {k.split("/", 1)[1]: torch.from_numpy(np.array(v)) for k, v in state.items()
                       if k.startswith(("param/", "buffer/"))}
        self.model.load_state_dict(model_state, strict=True)
        params = dict(self.model.named_parameters())
        self.optimizer.state.clear()
        for k, v in state.items():
            if k.startswith("state/") and k.endswith(".momentum_buffer"):
                name = k[len("state/"):-len(".momentum_buffer")]
                self.optimizer.state[params[name]]["momentum_buffer"] = torch.from_numpy(np.array(v))


def _np(v):
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
