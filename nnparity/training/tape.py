"""One side's trajectory through a training run, recorded once and replayed in a second run.

``nnparity run linear10`` trains two variants per seed that differ on the scratch side
only: the torch side is the same computation (same initial weights, batches, order and
recipe) in both. Training it twice gives the same numbers twice, so the first run
records what its torch side did (``RecordingSide``, a wrapper around the live side) and
the second run replays it (``ReplayedSide``), stepping only its scratch side. The
replayed numbers are the recorded ones, bit for bit: the second run's torch figures
are exactly those the first run's torch side produced.

What is recorded is what ``nnparity.training.train.Training`` and the sweep (``run.train_one``)
read from the torch side, no more:

* every step's loss, batch size and number of correct predictions (the epoch's totals
  and per-batch curves), and its time (``side.seconds``);
* the side's state (parameters, optimizer state, buffers; copies) at the start, after
  each of the first ``drift_steps`` steps (the per-step drift) and after every epoch's
  last step (the epoch's weight difference, frozen parameters, dead units);
* every ``evaluate`` call's result, in order, with the step it was made at.

A replay asks for these at the same points in the same order; anything else (a state
between two recorded points, a step beyond the recording, an evaluation of a different
set) raises ``ReplayMismatch`` rather than returning a number that was never computed.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from nnparity.training.sides import StepResult


class ReplayMismatch(RuntimeError):
    """A replay asked the tape for something the recording run did not do."""


@dataclass
class Tape:
    """What one side did in one run (see the module docstring).

    ``key``: what the side's computation depended on, by name (``Training``: network,
    recipe without the variant, dtype, seed, the dataset's identity); a replay must
    present the same (``mismatch``)."""

    key: dict
    name: str
    reduction: str
    drift_steps: int
    steps_per_epoch: int
    loss: array = field(default_factory=lambda: array("d"))
    n: array = field(default_factory=lambda: array("q"))
    correct: array = field(default_factory=lambda: array("q"))
    seconds: array = field(default_factory=lambda: array("d"))
    checked: int = 0  # steps whose loss, gradients and state ``Training`` found finite (a replay stops there)
    states: dict = field(default_factory=dict)        # step -> OrderedDict of copied arrays
    evaluations: list = field(default_factory=list)   # (step, n, batch_size, (loss, accuracy))
    metrics: list = field(default_factory=list)       # ``Training.epoch_metric`` of the side after each epoch

    @property
    def steps(self) -> int:
        return len(self.loss)

    def keeps_state_at(self, step: int) -> bool:
        return step <= self.drift_steps or step % self.steps_per_epoch == 0

    def add_step(self, result: StepResult, seconds: float, state) -> None:
        """One more step: its figures and time, and the side's state after it where it is kept
        (``state``: a function returning it, called only then)."""
        self.loss.append(result.loss)
        self.n.append(result.n)
        self.correct.append(result.correct)
        self.seconds.append(seconds)
        if self.keeps_state_at(self.steps):
            self.states[self.steps] = copy_state(state())

    def add_evaluation(self, n: int, batch_size, result) -> None:
        """An ``evaluate`` of ``n`` samples (``batch_size`` as it was passed) after the last step."""
        self.evaluations.append((self.steps, n, batch_size, result))

    def mismatch(self, key: dict, drift_steps: int) -> str:
        """Why a run with ``key`` and ``drift_steps`` cannot replay this tape, or ""."""
        why = []
        for name in list(self.key) + [k for k in key if k not in self.key]:
            a, b = self.key.get(name), key.get(name)
            if a == b:
                continue
            if dataclasses.is_dataclass(a) and type(a) is type(b):
                fields = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
                why.append(f"{name} ({', '.join(fields)} differ)")
            elif name == "dataset":
                why.append("dataset (another prepared copy)")
            else:
                why.append(f"{name} ({a!r} recorded, {b!r} here)")
        if drift_steps > self.drift_steps:
            why.append(f"drift steps ({self.drift_steps} recorded, {drift_steps} here)")
        return ", ".join(why)


class Same:
    """Equal only to a ``Same`` of the very same object (a key for what has no cheap
    equality, such as a prepared dataset; unlike ``id``, it keeps the object alive, so
    another object can never take its place)."""

    __hash__ = None

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other) -> bool:
        return isinstance(other, Same) and other.obj is self.obj

    def __repr__(self) -> str:
        return f"Same({type(self.obj).__name__} at {id(self.obj):#x})"


def copy_state(state) -> "OrderedDict[str, np.ndarray]":
    """A copy of a side's ``state()``, array by array."""
    return OrderedDict((k, np.array(v, copy=True)) for k, v in state.items())


class _LossFn:
    """The one attribute of the loss that ``Training`` reads from a replayed side."""

    def __init__(self, reduction: str):
        self.reduction = reduction


class RecordingSide:
    """A live side that also writes its trajectory to ``tape`` (its state at the start now)."""

    def __init__(self, side, tape: Tape):
        self.side, self.tape = side, tape
        self.name, self.loss_fn = side.name, side.loss_fn
        tape.states[0] = copy_state(side.state())

    @property
    def seconds(self) -> float:
        return self.side.seconds

    def step(self, x, y, record: bool = False, draws=None) -> StepResult:
        before = self.side.seconds
        r = self.side.step(x, y, record=record, draws=draws)
        self.tape.add_step(r, self.side.seconds - before, self.side.state)
        return r

    def evaluate(self, x, y, **kwargs) -> tuple[float, float]:
        result = self.side.evaluate(x, y, **kwargs)
        self.tape.add_evaluation(len(y), kwargs.get("batch_size"), result)
        return result

    def set_lr(self, lr: float) -> None:
        self.side.set_lr(lr)

    def state(self):
        return self.side.state()

    def grads(self):
        return self.side.grads()


class ReplayedSide:
    """A side that is not trained: its steps, states and evaluations come from ``tape``.

    Its ``seconds`` are the recorded ones (the time the side took when it was trained)."""

    replayed = True  # nnparity.training.train: its steps were checked for non-finite values when recorded

    def __init__(self, tape: Tape):
        self.tape, self.name, self.loss_fn = tape, tape.name, _LossFn(tape.reduction)
        self.step_count, self.seconds, self._evaluated = 0, 0.0, 0

    def step(self, x, y, record: bool = False, draws=None) -> StepResult:
        t, i = self.tape, self.step_count
        if record:
            raise ReplayMismatch("a replayed side keeps no per-step record")
        if i >= t.checked:
            raise ReplayMismatch(f"the recorded {t.name} side ends at step {t.checked} (checked finite); "
                                 f"step {i + 1} was asked for")
        if t.n[i] != len(y):
            raise ReplayMismatch(f"step {i + 1}: batch of {len(y)}, the recorded {t.name} side's had {t.n[i]}")
        self.step_count += 1
        self.seconds += t.seconds[i]
        return StepResult(t.loss[i], t.n[i], t.correct[i])

    def state(self):
        try:
            return self.tape.states[self.step_count]
        except KeyError:
            raise ReplayMismatch(f"the {self.name} side's state after step {self.step_count} was not recorded "
                                 "(only the first drift steps and every epoch's last)") from None

    def evaluate(self, x, y, batch_size=None) -> tuple[float, float]:
        evaluations = self.tape.evaluations
        if self._evaluated >= len(evaluations):
            raise ReplayMismatch(f"evaluation {self._evaluated + 1} of the {self.name} side was not recorded")
        step, n, size, result = evaluations[self._evaluated]
        if (step, n, size) != (self.step_count, len(y), batch_size):
            raise ReplayMismatch(f"evaluation {self._evaluated + 1}: {len(y)} samples in batches of {batch_size} "
                                 f"after step {self.step_count}; recorded: {n} in batches of {size} after step {step}")
        self._evaluated += 1
        return result

    def grads(self):
        raise ReplayMismatch("a replayed side keeps no gradients")

    def set_lr(self, lr: float) -> None:
        """Nothing to set: the recorded side ran the same recipe's learning rates."""
