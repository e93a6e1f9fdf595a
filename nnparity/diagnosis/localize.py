"""Where does a divergence come from? Tell a layer's OWN error from one it INHERITED.

The first tensor to diverge says where an error became visible, not where it was
made: an upstream gradient carries every error made after it in the forward
pass, and step k's forward carries every error of steps 1..k-1. So when step
parity fails, ``Localizer`` (an observer of ``parity.check_steps``) re-runs every
stage of the failing step *alone*, fed exactly the reference side's numbers:

* a layer's forward on the torch side's input to that layer, with the torch
  side's pre-step parameters and buffers (and the step's dropout masks);
* the same layer's backward on the torch side's upstream gradient;
* the loss on the torch side's logits and the labels;
* the optimizer on the torch side's pre-step parameters, state and gradients.

Each stage's own outputs are compared with the torch side's, with the run's
tolerances. A stage that is off although its inputs were exact is wrong on its
own. If the stage that produced the first diverging tensor (the *suspect*) is
off alone, it is the culprit and the error is its OWN; otherwise the error is
INHERITED and the walk goes back through the step's earlier stages, in
computation order, to the first one that is off alone. If none is, the error
came in with the state entering the step (or from how the stages are composed).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from nnparity.core.parity import Comparison, Tolerance, _comparison_dict, compare, draws_random_mask
from nnparity.diagnosis.patterns import detect

PHASES = ("forward", "backward", "update")
STATE_QUANTITIES = ("updated parameter", "optimizer state", "BatchNorm buffer", "buffer")


@dataclass
class Stage:
    """One stage of a training step, re-run alone on the reference side's numbers."""

    component: str                 # top-level layer name, "loss" or "optimizer"
    phase: str                     # forward, backward or update
    impl: str                      # the scratch code that ran: "Linear.backward"
    comparisons: list = field(default_factory=list)
    note: str | None = None        # why it could not be (fully) re-run

    @property
    def label(self) -> str:
        return f"{self.component} {self.phase}"

    @property
    def off(self) -> bool:
        """Some output disagrees with the reference side's. A degenerate comparison (both
        sides ~0) is agreement that proves nothing, never a reason to call a stage off."""
        return any(c.mismatch for c in self.comparisons)

    @property
    def margin(self) -> float:
        return max((c.margin for c in self.comparisons), default=0.0)

    def worst(self) -> Comparison | None:
        bad = [c for c in self.comparisons if c.mismatch] or self.comparisons
        return max(bad, key=lambda c: c.margin) if bad else None

    def to_dict(self) -> dict:
        return {"component": self.component, "phase": self.phase, "impl": self.impl, "off": self.off,
                "margin": self.margin, "note": self.note,
                "comparisons": [_comparison_dict(c) for c in self.comparisons]}


def layer_of(name: str) -> str:
    """The layer a record key belongs to: ``grad/U.weight`` -> ``U``, ``loss`` -> ``loss``."""
    head, _, rest = name.partition("/")
    if not rest:
        return head
    return rest if head in ("out", "dout") else rest.split(".")[0]


def producer(name: str, layers: list) -> tuple[str, str] | None:
    """(component, phase) of the stage that computes the record key ``name``.

    ``dout/L`` (the gradient arriving at L's output) is computed by the backward
    of the layer after L, or by the loss for the last layer.
    """
    head, _, rest = name.partition("/")
    if name == "loss":
        return ("loss", "forward")
    if head in ("param", "state"):
        return ("optimizer", "update")
    if head == "out":
        return (rest, "forward")
    if head == "buffer":
        return (_owner(rest, layers), "forward")
    if head == "grad":
        return (_owner(rest, layers), "backward")
    if head == "dout" and rest in layers:
        i = layers.index(rest)
        return ("loss", "backward") if i == len(layers) - 1 else (layers[i + 1], "backward")
    if head == "din" and layers:
        return (layers[0], "backward")
    return None


def _owner(param: str, layers: list) -> str:
    """The layer a parameter or buffer belongs to: the one whose name prefixes it, else the only
    layer (a network checked as one piece, ``output``), else the name's first part."""
    mine = next((n for n in layers if param.startswith(n + ".")), None)
    if mine is not None:
        return mine
    return layers[0] if len(layers) == 1 else param.split(".")[0]


def _has_draws(module) -> bool:
    return any(draws_random_mask(m) for _, m in module.named_modules())


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:200]


@dataclass
class Diagnosis:
    """The first divergence of a parity run and where it comes from."""

    step: int
    first: Comparison
    layer: str                    # the layer the first diverging tensor belongs to
    suspect: Stage | None         # the stage that computed it
    culprit: Stage | None         # the first stage (walking back) that is off on its own
    kind: str                     # "own" or "inherited"
    stages: list
    entering: Comparison | None   # worst state difference entering the step (step > 1)
    kink: dict | None = None      # forward activations on opposite sides of 0 (a branch taken differently)
    verdict: str = ""
    inherited: list = field(default_factory=list)   # stages right alone whose output diverged in the run
    arrays: dict = field(default_factory=dict, repr=False)   # {tensor: (scratch, reference)} at the step

    def first_lines(self) -> list[str]:
        c = self.first
        idx = ", ".join(map(str, c.index))
        head = (f"FIRST DIVERGENCE: step {self.step}, layer {self.layer}, {c.quantity} {c.name}"
                + (f"[{idx}]" if c.index else ""))
        pattern = [f"  PATTERN: {c.pattern}"] if c.pattern else []
        if c.problem:
            return [head, f"  {c.problem}"] + pattern
        abs_err = abs(c.scratch - c.reference)
        rel_err = abs_err / abs(c.reference) if c.reference else (0.0 if abs_err == 0 else float("inf"))
        return [head,
                f"  scratch {c.scratch:.10g}   reference {c.reference:.10g}",
                f"  abs error {abs_err:.3g}   rel error {rel_err:.3g}   margin {c.margin:.3g} "
                f"(tolerance atol {c.tol.atol:g} + rtol {c.tol.rtol:g} |reference|; the tensor's max abs error "
                f"{c.max_abs:.3g}, max rel error {c.max_rel:.3g} where the reference is non-zero)"] + pattern

    def render(self) -> str:
        lines = self.first_lines()
        lines += ["", f"OWN OR INHERITED: every stage of step {self.step} re-run alone on the reference side's "
                      "inputs, upstream gradients and pre-step weights",
                  f"  {'stage':<24} {'scratch code':<32} {'own margin':>10}  verdict"]
        for s in self.stages:
            tags = []
            if s is self.suspect:
                tags.append("suspect")
            if s is self.culprit:
                tags.append("CULPRIT")
            verdict = "OFF" if s.off else ("n/a" if not s.comparisons else
                                            "ok alone, inherited" if s.label in self.inherited else "ok")
            w = s.worst()
            where = f" ({w.name})" if s.off and w is not None else ""
            note = f"  [{s.note}]" if s.note else ""
            tag = f"  <- {', '.join(tags)}" if tags else ""
            lines.append(f"  {s.label:<24} {s.impl:<32} {s.margin:>10.3g}  {verdict}{where}{tag}{note}")
        lines += ["", f"VERDICT: {self.verdict}"]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"step": self.step, "layer": self.layer, "quantity": self.first.quantity,
                "first_divergence": _comparison_dict(self.first),
                "suspect": self.suspect.label if self.suspect else None,
                "culprit": self.culprit.label if self.culprit else None,
                "culprit_impl": self.culprit.impl if self.culprit else None,
                "kind": self.kind, "verdict": self.verdict, "inherited": self.inherited,
                "entering_state": _comparison_dict(self.entering) if self.entering else None,
                "kink": self.kink,
                "stages": [s.to_dict() for s in self.stages]}


@dataclass
class Vanished:
    """Gradients that vanished on both sides (degenerate comparisons), and why, in words.

    Both sides agreeing that a gradient is ~0 is not a bug: it is what a saturated
    sigmoid or a layer of dead ReLU units does. But it proves nothing about the
    backward that produced it, so parity must say so rather than pass or fail.
    """

    step: int                      # the first step with degenerate comparisons
    names: list                    # the degenerate record keys at that step
    cause: str                     # "every ReLU unit of relu1 is dead: ..."
    exact: bool                    # every one of them exactly 0 on both sides (else within atol)
    atol: float
    steps: list = field(default_factory=list)  # every step with degenerate comparisons
    overflow: list = field(default_factory=list)  # record keys non-finite on both sides (inf vs NaN)

    @property
    def layers(self) -> list:
        return list(dict.fromkeys(layer_of(n) for n in self.names))

    def sentence(self) -> str:
        if self.overflow:
            n = len(self.overflow)
            return (f"at step {self.step} the numbers overflowed on BOTH sides (both agree they are not finite, they "
                    f"differ only in which of inf and NaN they reached): {self.cause}; {n} tensor{'s' * (n != 1)} "
                    f"({', '.join(self.overflow[:6])}{' ...' if n > 6 else ''}) prove nothing, and parity stops here. "
                    "Not a derivation error: the learning rate is too large for this dtype")
        grads = [n.split("/", 1)[1] if n.startswith("grad/") else n for n in self.names]
        n = len(grads)
        zero = "exactly zero" if self.exact else f"zero to within atol {self.atol:g}"
        lay = self.layers
        later = (f"; {len(self.steps)} step{'s' * (len(self.steps) != 1)} checked had degenerate gradients"
                 if len(self.steps) > 1 else "")
        return (f"from step {self.step}, {self.cause} (both sides agree): the gradient{'s' * (n != 1)} of "
                f"{', '.join(grads)} {'are' if n != 1 else 'is'} {zero} on both sides; parity cannot say more about "
                f"{'layer ' + lay[0] if len(lay) == 1 else 'layers ' + ', '.join(lay)} at this learning rate{later}")

    def to_dict(self) -> dict:
        return {"step": self.step, "names": self.names, "cause": self.cause, "exact": self.exact,
                "steps": self.steps, "overflow": self.overflow, "sentence": self.sentence()}


def _all_zero(*arrays) -> bool:
    return all(a is not None and not np.any(a) for a in arrays)


def _killer(layer: str, module, srec, trec, batch: int) -> str:
    """Why ``layer``'s backward returns a zero gradient from a non-zero upstream one."""
    kind = type(module).__name__
    out_s, out_t = srec.get(f"out/{layer}"), trec.get(f"out/{layer}")
    if "Sigmoid" in kind and out_s is not None and out_t is not None:
        outs = [np.asarray(o, dtype=np.float64) for o in (out_s, out_t)]
        deriv = max(float(np.max(o * (1 - o))) for o in outs)
        a = outs[0]
        return (f"every output of {layer} ({kind}) is saturated on all {batch} examples of the batch "
                f"({int((a == 0).sum())} exactly 0, {int((a == 1).sum())} exactly 1, of {a.size}), so its "
                f"derivative s(1 - s) is at most {deriv:.3g}")
    if _all_zero(out_s, out_t):
        if "ReLU" in kind:
            return f"every ReLU unit of {layer} is dead: it outputs 0 on all {batch} examples of the batch"
        return (f"every unit of {layer} ({kind}) outputs 0 on all {batch} examples of the batch, so its "
                "backward passes no gradient")
    return f"the backward of {layer} ({kind}) turns a non-zero upstream gradient into zero"


def explain_vanished(step: int, comparisons, scratch_record, torch_record, model, tol) -> "Vanished":
    """The degenerate comparisons of one step, and the stage that made the gradient vanish:
    walking back from the loss, the first layer whose backward returns ~0 from a non-zero
    upstream gradient (a dead ReLU, a saturated sigmoid), or, for a weight gradient alone,
    the layer before it whose output is all zero."""
    deg = [c for c in comparisons if c.inconclusive]
    over = [c for c in deg if c.overflow]
    if over:
        return Vanished(step, [c.name for c in deg], f"{over[0].name} is {over[0].overflow}", False, tol.atol,
                        steps=[step], overflow=[c.name for c in over])
    names = list(getattr(model, "_modules", {}))
    mods = getattr(model, "_modules", {})
    dead = {c.name for c in deg}
    srec, trec = scratch_record or {}, torch_record or {}
    first = next((srec[k] for k in srec if k.startswith("dout/")), None)
    batch = int(np.shape(first)[0]) if first is not None and np.ndim(first) else 0
    cause = None
    for i in range(len(names) - 1, -1, -1):  # the vanished upstream gradient nearest the loss
        if f"dout/{names[i]}" in dead:
            if i == len(names) - 1:
                cause = f"the loss gradient dL/d(out/{names[i]}) vanished (the loss is flat there)"
            else:
                cause = _killer(names[i + 1], mods[names[i + 1]], srec, trec, batch)
            break
    if cause is None:
        grads = [c.name for c in deg if c.name.startswith("grad/")]
        layer = layer_of(grads[0]) if grads else None
        if layer in names and names.index(layer) > 0:
            prev = names[names.index(layer) - 1]
            if _all_zero(srec.get(f"out/{prev}"), trec.get(f"out/{prev}")):
                cause = _killer(prev, mods[prev], srec, trec, batch)
        if cause is None:
            cause = "this batch gives a gradient of ~0"
    exact = all(_all_zero(srec.get(c.name), trec.get(c.name)) for c in deg)
    return Vanished(step, [c.name for c in deg], cause, exact, tol.atol, steps=[step])


class Localizer:
    """Observer for ``parity.check_steps``: keeps the torch side's pre-step state and, at
    the first failing step, re-runs every stage alone (``diagnosis`` holds the result).

    Args:
        allowed_zero: the network's gradients that are zero by construction.
    """

    def __init__(self, allowed_zero=()):
        self.allowed_zero = tuple(allowed_zero)
        self.diagnosis: Diagnosis | None = None
        self.vanished: Vanished | None = None     # the first step with degenerate gradients, explained
        self.scratch_side = self.torch_side = None
        self._pre_torch = None
        self._snapshots = {}

    def before_step(self, i, x, y, scratch_side, torch_side):
        self.scratch_side, self.torch_side = scratch_side, torch_side
        if self.diagnosis is not None:
            return
        if self._pre_torch is None:
            self._pre_torch = _copy_state(torch_side.state())
        # layers that draw random masks are copied before the step, random generator
        # included, so that a re-run draws the step's masks again
        if hasattr(scratch_side, "random_layers"):
            self._snapshots = scratch_side.random_layers()
        else:
            self._snapshots = {n: copy.deepcopy(m) for n, m in scratch_side.model.named_children()
                               if _has_draws(m)}

    def after_step(self, i, x, y, s, t, trace):
        if self.diagnosis is not None:
            return
        if any(c.inconclusive for c in trace.steps[-1]):
            if self.vanished is None:
                self.vanished = explain_vanished(i, trace.steps[-1], s.record, t.record,
                                                 getattr(self.scratch_side, "model", None), trace.tol)
            else:
                self.vanished.steps.append(i)
        if any(c.mismatch for c in trace.steps[-1]):
            self.diagnosis = diagnose(i, x, y, self.scratch_side, t, self._pre_torch, trace,
                                      snapshots=self._snapshots, allowed_zero=self.allowed_zero,
                                      scratch_record=s.record)
        else:
            self._pre_torch = _copy_state(self.torch_side.state())


def _copy_state(state) -> dict:
    return {k: np.array(v, copy=True) for k, v in state.items()}


def _sub_state(pre: dict, kind: str, layer: str) -> dict:
    prefix = f"{kind}/{layer}."
    return {k[len(prefix):]: v for k, v in pre.items() if k.startswith(prefix)}


def _load(module, layer: str, pre: dict) -> None:
    """The torch side's pre-step parameters and buffers of one layer, into its scratch copy."""
    own = [k for k, _ in module.named_parameters()] + [k for k, _ in module.named_buffers()]
    if not own:
        return
    state = {**_sub_state(pre, "param", layer), **_sub_state(pre, "buffer", layer)}
    module.load_state_dict({k: np.array(v, copy=True) for k, v in state.items()})


def _want_input_grad(module) -> None:
    if hasattr(module, "set_input_grad"):
        module.set_input_grad(True)
    elif hasattr(module, "needs_input_grad"):
        module.needs_input_grad = True


def _masks(module, layer: str, draws: dict) -> dict:
    """{submodule: the step's mask} for the random draws inside one top-level layer (a
    ReLU's or max-pool's mask is the layer's own decision on its input: not replayed)."""
    subs = dict(module.named_modules())
    out = {}
    for path, mask in (draws or {}).items():
        if path == layer or path.startswith(layer + "."):
            rel = path[len(layer) + 1:] if path != layer else ""
            if rel in subs and draws_random_mask(subs[rel]):
                out[subs[rel]] = mask
    return out


def _rerun(fst: Stage, bst: Stage, name: str, prev, rec, tol, step, forward, backward, allowed_zero=(),
           cast=lambda a, ref: a) -> None:
    """One layer's forward and backward alone, each compared with the torch side's record.

    ``forward()`` runs the forward and returns ``{record key: array}`` to compare (``out/<name>``,
    buffers), or None when it set ``fst.note`` instead (and ``bst.note`` when the backward cannot be
    re-run either); ``backward(dout)`` returns ``(dx, {grad key: array})``, dx compared with ``prev``
    (the previous layer's ``dout/``). ``cast``: your arrays in the record's dtype. An exception
    becomes the stage's note: a broken layer must not hide the others' verdicts."""
    try:
        for key, a in (forward() or {}).items():
            if key in rec:
                fst.comparisons.append(compare(key, cast(a, rec[key]), rec[key], tol, step=step))
    except Exception as e:  # noqa: BLE001
        fst.note = f"could not be re-run alone: {_why(e)}"
        bst.note = "not re-run: its forward failed"
        return
    if bst.note:
        return
    try:
        key = f"dout/{name}"
        if key not in rec:
            bst.note = "no upstream gradient recorded"
            return
        dx, grads = backward(np.array(rec[key], copy=True))
        for k, g in grads.items():
            if k in rec:
                bst.comparisons.append(compare(k, cast(g, rec[k]), rec[k], tol, step=step,
                                               allowed_zero=k.split("/", 1)[1] in allowed_zero))
        if prev and prev in rec and isinstance(dx, np.ndarray):
            bst.comparisons.append(compare(prev, cast(dx, rec[prev]), rec[prev], tol, step=step))
    except Exception as e:  # noqa: BLE001
        bst.note = f"could not be re-run alone: {_why(e)}"


def _isolate_layers(model, x, t, pre, tol, step, snapshots, draws, allowed_zero) -> tuple[list, list]:
    names = list(model._modules)
    rec = t.record
    inputs = t.inputs or {}
    forward, backward = [], []
    for i, name in enumerate(names):
        mod = model._modules[name]
        fst = Stage(name, "forward", f"{type(mod).__name__}.forward")
        bst = Stage(name, "backward", f"{type(mod).__name__}.backward")
        forward.append(fst)
        backward.append(bst)
        iso = copy.deepcopy(snapshots.get(name, mod))

        def run_forward(i=i, name=name, iso=iso, fst=fst):
            _load(iso, name, pre)
            iso.train()
            if hasattr(iso, "zero_grad"):
                iso.zero_grad()
            if i > 0:
                _want_input_grad(iso)
            xin = inputs.get(name)
            if xin is None:
                xin = x if i == 0 else rec[f"out/{names[i - 1]}"]
            out = iso.forward(np.array(xin, copy=True))
            masks = _masks(iso, name, draws)
            if any(not np.array_equal(getattr(m, "mask", None), v) for m, v in masks.items()):
                fst.note = "its random mask could not be drawn again: forward not compared"
                for m, v in masks.items():
                    m.mask = np.array(v, copy=True)
                return None
            return {f"out/{name}": out, **{f"buffer/{name}.{b}": v for b, v in iso.named_buffers()}}

        def run_backward(dout, name=name, iso=iso):
            dx = iso.backward(dout)
            return dx, {f"grad/{name}.{p}": q.grad for p, q in iso.named_parameters()}

        _rerun(fst, bst, name, f"dout/{names[i - 1]}" if i > 0 else None, rec, tol, step, run_forward, run_backward,
               allowed_zero)
    return forward, backward


def _isolate_loss(loss_fn, logits_key, y, rec, tol, step) -> tuple[Stage, Stage]:
    fst = Stage("loss", "forward", f"{type(loss_fn).__name__}.forward")
    bst = Stage("loss", "backward", f"{type(loss_fn).__name__}.backward")
    try:
        iso = copy.deepcopy(loss_fn)
        value = iso.forward(np.array(rec[logits_key], copy=True), y)
        fst.comparisons.append(compare("loss", np.asarray(value), rec["loss"], tol, step=step))
        dz = iso.backward()
        key = "dout/" + logits_key.split("/", 1)[1]
        if key in rec:
            bst.comparisons.append(compare(key, dz, rec[key], tol, step=step))
    except Exception as e:
        (bst if fst.comparisons else fst).note = f"could not be re-run alone: {_why(e)}"
    return fst, bst


def _isolate_optimizer(optimizer, pre, rec, tol, step) -> Stage:
    st = Stage("optimizer", "update", f"{type(optimizer).__name__}.step")
    try:
        opt = copy.deepcopy(optimizer)
        for name, p in opt.params.items():
            p.data = np.array(pre[f"param/{name}"], copy=True)
            p.grad = np.array(rec[f"grad/{name}"], copy=True)
        opt.load_state_dict({k[len("state/"):]: v for k, v in pre.items() if k.startswith("state/")})
        opt.step()
        for name, p in opt.params.items():
            st.comparisons.append(compare(f"param/{name}", p.data, rec[f"param/{name}"], tol, step=step))
        for k, v in opt.state_dict().items():
            if f"state/{k}" in rec:
                st.comparisons.append(compare(f"state/{k}", v, rec[f"state/{k}"], tol, step=step))
    except Exception as e:
        st.note = f"could not be re-run alone: {_why(e)}"
    return st


def isolate(scratch_side, x, y, t, pre: dict, tol: Tolerance, step: int, *, snapshots=None,
            draws=None, allowed_zero=()) -> list:
    """Every stage of one step re-run alone on the torch side's numbers, in computation
    order: layer forwards, loss forward and backward, layer backwards, optimizer.

    Args:
        scratch_side: the scratch ``ScratchSide`` (its layers, loss and optimizer are copied).
        x, y: the step's batch.
        t: the torch side's ``StepResult`` of the step, recorded (``record`` and ``inputs``).
        pre: the torch side's state before the step (``TorchSide.state()`` keys).
        snapshots: top-level layers copied before the step (those that draw masks).
        draws: the step's masks, ``ScratchSide.draws()``.
    """
    model = scratch_side.model
    names = list(model._modules)
    fwd, bwd = _isolate_layers(model, x, t, pre, tol, step, snapshots or {}, draws or {}, allowed_zero)
    loss = list(_isolate_loss(scratch_side.loss_fn, f"out/{names[-1]}", y, t.record, tol, step)) if names else []
    opt = _isolate_optimizer(scratch_side.optimizer, pre, t.record, tol, step)
    return fwd + loss + bwd[::-1] + [opt]


def sign_flip(scratch_record, torch_record) -> dict | None:
    """The first forward activation with elements on opposite sides of 0 on the two sides
    (a ReLU-like kink that took different branches), if any: its name, how many elements,
    and the one nearest to 0 on the reference side."""
    for key, b in torch_record.items():
        if not key.startswith("out/") or key not in scratch_record:
            continue
        a = np.asarray(scratch_record[key])
        b = np.asarray(b)
        if a.shape != b.shape:
            continue
        flip = np.sign(a) != np.sign(b)
        if flip.any():
            where = np.flatnonzero(flip)
            i = int(where[np.argmin(np.abs(b.reshape(-1)[where]))])
            idx = [int(v) for v in np.unravel_index(i, b.shape)]
            return {"name": key, "count": int(flip.sum()), "index": idx,
                    "scratch": float(a.reshape(-1)[i]), "reference": float(b.reshape(-1)[i])}
    return None


def diagnose(step: int, x, y, scratch_side, t, pre: dict, trace, *, snapshots=None,
             allowed_zero=(), scratch_record=None) -> Diagnosis:
    """The first divergence of ``trace`` (at ``step``) and its own-or-inherited verdict."""
    first = next(c for c in trace.steps[step - 1] if c.mismatch)
    names = layer_names(scratch_side)
    try:
        if hasattr(scratch_side, "isolate"):   # a side that re-runs its own stages (a user's network)
            stages = scratch_side.isolate(x, y, t, pre, trace.tol, step, snapshots=snapshots or {},
                                          allowed_zero=allowed_zero)
        else:
            stages = isolate(scratch_side, x, y, t, pre, trace.tol, step, snapshots=snapshots,
                             draws=scratch_side.draws(), allowed_zero=allowed_zero)
    except Exception as e:  # never lose the first divergence to a failed re-run
        stages = [Stage("(all)", "forward", "-", note=f"stages could not be re-run alone: {_why(e)}")]
    where = producer(first.name, names)
    index = next((i for i, s in enumerate(stages) if (s.component, s.phase) == where), None)
    suspect = stages[index] if index is not None else None
    entering = None
    if step > 1:
        before = [c for c in trace.steps[step - 2] if c.quantity in STATE_QUANTITIES and c.problem is None]
        entering = max(before, key=lambda c: c.margin, default=None)

    if scratch_record is not None and first.name in scratch_record and first.name in t.record:
        first.pattern = first_pattern(first, scratch_record, t.record, trace.tol, len(y))
    culprit, kind = locate(stages, index)
    d = Diagnosis(step, first, layer_of(first.name), suspect, culprit, kind, stages, entering)
    d.inherited = inherited_stages(trace.steps[step - 1], stages, names)
    if scratch_record is not None:
        d.arrays = {c.name: (scratch_record[c.name], t.record[c.name]) for c in trace.steps[step - 1]
                    if c.mismatch and c.name in scratch_record and c.name in t.record}
    if culprit is None and scratch_record is not None:
        d.kink = sign_flip(scratch_record, t.record)
    d.verdict = _verdict(d)
    return d


def layer_names(side) -> list:
    """The names of a side's top-level layers, in forward order."""
    return side.layer_names() if hasattr(side, "layer_names") else list(side.model._modules)


def inherited_stages(comparisons, stages, names) -> list:
    """Labels of the stages that are right when re-run alone although a tensor they compute
    diverged in the run: they passed on an error made before them (INHERITED)."""
    by_label = {s.label: s for s in stages}
    out = []
    for c in comparisons:
        where = producer(c.name, names) if c.mismatch else None
        s = by_label.get(f"{where[0]} {where[1]}") if where else None
        if s is not None and s.comparisons and not s.off and s.label not in out:
            out.append(s.label)
    return out


def first_pattern(first: Comparison, srec, trec, tol: Tolerance, batch: int) -> str | None:
    """The exact pattern of the first divergence (``nnparity.diagnosis.patterns``), its factors named by
    the batch size N and, for a layer with a feature map, that map's N*H*W and H*W."""
    counts = {"N": batch}
    out = trec.get(f"out/{layer_of(first.name)}")
    if out is not None and np.ndim(out) == 4:
        counts.update({"N*H*W": int(np.size(out) // np.shape(out)[1]), "H*W": int(np.prod(np.shape(out)[2:]))})
    try:
        return detect(srec[first.name], trec[first.name], tol, counts=counts)
    except Exception:  # noqa: BLE001 - a pattern is a hint: never lose the diagnosis to it
        return None


def locate(stages: list, index: int | None) -> tuple[Stage | None, str]:
    """(culprit, kind) given the stages in computation order and the suspect's index:
    the suspect if it is off on its own (``own``), else the nearest earlier stage that
    is (``inherited``), else no culprit (``inherited`` from the entering state or from
    how the stages are put together)."""
    if index is not None and stages[index].off:
        return stages[index], "own"
    upto = stages[:index] if index is not None else stages
    return next((s for s in reversed(upto) if s.off), None), "inherited"


def _fmt_stage(s: Stage) -> str:
    return f"{s.label} ({s.impl})"


def _verdict(d: Diagnosis) -> str:
    f = d.first
    if d.kind == "own":
        w = d.culprit.worst()
        fed = ("input and upstream gradient" if d.culprit.phase == "backward" else
               "pre-step weights and gradients" if d.culprit.phase == "update" else "input and weights")
        return (f"{_fmt_stage(d.culprit)} is wrong on its own: fed the reference side's {fed} at step {d.step}, "
                f"it still gives {w.name} off by margin {w.margin:.3g}. The divergence at {f.name} is its OWN error.")
    own = ("" if not d.suspect else
           f"{_fmt_stage(d.suspect)}, which computes {f.name}, was not compared alone ({d.suspect.note}); "
           if not d.suspect.comparisons else
           f"{_fmt_stage(d.suspect)}, which computes {f.name}, is right when fed the reference side's numbers "
           f"(own margin {d.suspect.margin:.3g}); ")
    if d.culprit is not None:
        w = d.culprit.worst()
        return (f"The divergence at {f.name} is INHERITED: {own}walking back, the first stage wrong on its own is "
                f"{_fmt_stage(d.culprit)}: {w.name} margin {w.margin:.3g}.")
    largest = max((s for s in d.stages if s.comparisons), key=lambda s: s.margin, default=None)
    big = f" (largest own margin {largest.margin:.3g}, {largest.label})" if largest else ""
    if d.kink is not None:
        k = d.kink
        n = k["count"]
        return (f"The divergence at {f.name} is INHERITED, and it is ROUNDING AT A KINK, not a derivation error: "
                f"{own}no stage of step {d.step} is wrong on its own{big}, but {n} element{'s' * (n != 1)} of "
                f"{k['name']} {'lie' if n != 1 else 'lies'} on opposite sides of 0 on the two sides "
                f"(e.g. [{', '.join(map(str, k['index']))}]: "
                f"scratch {k['scratch']:.3g}, reference {k['reference']:.3g}), so a ReLU-like kink took different "
                "branches and its gradient differs by a whole term. Rounding puts an activation that close to 0 now "
                "and then, in float32 much more often than in float64 (TOLERANCES.md).")
    if d.step > 1 and d.entering is not None:
        return (f"The divergence at {f.name} is INHERITED: {own}no stage of step {d.step} is wrong on its own{big}. "
                f"It came in with the state entering step {d.step}: after step {d.step - 1} the sides already "
                f"differed by margin {d.entering.margin:.3g} ({d.entering.name}, within tolerance), and the difference "
                "grew. Follow the margins up the table; in float32, compare with the noise floor "
                "(nnparity check NET --noise-floor).")
    return (f"The divergence at {f.name} is INHERITED: {own}no stage is wrong on its own at step {d.step}{big}, yet "
            "the chain diverges: the error is in how the stages are put together (the model's forward/backward "
            "plumbing, the training step), or rounding compounding across stages (compare with the noise floor, "
            "nnparity check NET --noise-floor).")


# --- a user's network (``nnparity.check_steps``) -------------------------------------------------

def _cast_like(a, ref):
    """Your array in the reference's dtype (a wrong dtype is its own finding in the run; alone,
    the stage is judged on its values)."""
    a = np.asarray(a)
    ref = np.asarray(ref)
    return a.astype(ref.dtype) if np.issubdtype(a.dtype, np.floating) and a.dtype != ref.dtype else a


def _keeps_state(fn) -> bool:
    """An update function whose closure or defaults hold mutable state (momentum kept in a dict):
    re-running it alone would change the state the rest of the run uses."""
    cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if c.cell_contents is not None]
    cells += list(getattr(fn, "__defaults__", None) or ())
    return any(isinstance(v, (dict, list, np.ndarray)) for v in cells)


def isolate_network(user, x, y, t, pre: dict, tol: Tolerance, step: int, *, snapshots=None,
                    allowed_zero=()) -> list:
    """Every stage of one step of a user's network re-run alone on the torch side's numbers, in
    computation order: each layer's forward, the loss, each layer's backward, the update.

    Args:
        user: the ``UserSide`` (``nnparity.api.byod``): its ``layers`` ({name: your layer}, or
            None for a network checked as one piece, the stage ``output``), ``torch_children``,
            network adapter, loss and update adapters.
        t: the torch side's ``StepResult`` of the step, recorded (``record`` and ``inputs``).
        pre: the torch side's state before the step; ``snapshots``: layers copied before it.
    """
    from nnparity.training.adapters import LayerAdapter, LossAdapter, as_layer
    from nnparity.training.masks import step_mask

    rec, inputs = t.record, t.inputs or {}
    if user.layers:
        names = list(user.layers)
        pieces = [(n, LayerAdapter(copy.deepcopy((snapshots or {}).get(n, obj)), n), user.torch_children[n])
                  for n, obj in user.layers.items()]
    else:
        names = ["output"]
        pieces = [("output", as_layer(copy.deepcopy(user.net.obj), user.net.name, user.net.mapping), user.torch_net)]
    forward, backward = [], []
    for i, (name, lay, module) in enumerate(pieces):
        cls = type(lay.obj).__name__
        fst, bst = Stage(name, "forward", f"{cls}.forward"), Stage(name, "backward", f"{cls}.backward")
        forward.append(fst)
        backward.append(bst)
        prefix = f"{name}." if user.layers else ""

        def run_forward(i=i, name=name, lay=lay, module=module, prefix=prefix):
            lay.bind(module)
            lay.set_params({k: np.array(pre[f"param/{prefix}{k}"], copy=True) for k in lay.params()
                            if f"param/{prefix}{k}" in pre})
            lay.set_buffers({k: np.array(pre[f"buffer/{prefix}{k}"], copy=True) for k in lay.buffers()
                             if f"buffer/{prefix}{k}" in pre})
            lay.train(user.training)
            lay.zero_grad()
            if i > 0:   # a copy: the switch is not undone
                lay.input_grad_on()
            xin = inputs.get(name) if user.layers else None
            xin = np.array(x if xin is None else xin, copy=True)
            if name not in user.masks:
                out = lay.forward(xin)
            else:   # a dropout layer: the step's mask drawn again (its generator copied before the step)
                out = _with_random_state(user.random_states.get(name), lay.forward, xin)
                if not np.array_equal(step_mask(name, lay.obj, xin), user.masks[name]):
                    fst.note = ("its random mask could not be drawn again (keep the generator on the layer: "
                                "self.rng = np.random.default_rng(seed)): not compared")
                    bst.note = "not re-run: its mask could not be drawn again"
                    return None
            return {f"out/{name}": out, **{f"buffer/{prefix}{k}": b for k, b in lay.buffers().items()}}

        def run_backward(dout, lay=lay, prefix=prefix):
            dx = lay.backward(dout)
            return dx, {f"grad/{prefix}{k}": g for k, g in lay.grads().items()}

        _rerun(fst, bst, name, f"dout/{names[i - 1]}" if i > 0 else None, rec, tol, step, run_forward, run_backward,
               allowed_zero, _cast_like)
    loss_f, loss_b = Stage("loss", "forward", f"{user.loss_fn.name}"), Stage("loss", "backward", user.loss_fn.name)
    try:
        logits = f"out/{names[-1]}"
        value, dz = LossAdapter(copy.deepcopy(user.loss_fn.obj), user.loss_fn.name)(np.array(rec[logits], copy=True),
                                                                                   y)
        loss_f.comparisons.append(compare("loss", _cast_like(value, rec["loss"]), rec["loss"], tol, step=step))
        key = f"dout/{names[-1]}"
        if key in rec:
            loss_b.comparisons.append(compare(key, _cast_like(dz, rec[key]), rec[key], tol, step=step))
    except Exception as e:
        (loss_b if loss_f.comparisons else loss_f).note = f"could not be re-run alone: {_why(e)}"
    return forward + [loss_f, loss_b] + backward[::-1] + [_isolate_update(user.update, pre, rec, tol, step)]


def _with_random_state(state, fn, *args):
    """``fn(*args)`` with NumPy's global generator at ``state`` (None: as it is), put back after."""
    if state is None:
        return fn(*args)
    saved = np.random.get_state()
    np.random.set_state(state)
    try:
        return fn(*args)
    finally:
        np.random.set_state(saved)


def _isolate_update(update, pre, rec, tol, step) -> Stage:
    """Your update rule alone on the torch side's pre-step parameters and gradients: a function
    ``update(params, grads)`` on copies, or an optimizer over scratch parameters (``scratch.SGD``)."""
    if update.kind == "optimizer":
        return _isolate_optimizer(update.obj, pre, rec, tol, step)
    st = Stage("optimizer", "update", getattr(update.obj, "__name__", type(update.obj).__name__))
    if _keeps_state(update.obj):
        st.note = "not re-run alone: the update function keeps state of its own"
        return st
    try:
        names = [k[len("param/"):] for k in pre if k.startswith("param/")]
        params = {k: np.array(pre[f"param/{k}"], copy=True) for k in names}
        grads = {k: np.array(rec[f"grad/{k}"], copy=True) for k in names}
        new = update.obj(params, grads)
        params = new if isinstance(new, dict) else params
        for k in names:
            st.comparisons.append(compare(f"param/{k}", _cast_like(params[k], rec[f"param/{k}"]), rec[f"param/{k}"],
                                          tol, step=step))
    except Exception as e:
        st.note = f"could not be re-run alone: {_why(e)}"
    return st
