"""The training recipe of a documented network, as data.

One frozen dataclass per network, defined once in that network's module and
read by both sides, the CLI and the reports. ``dataclasses.replace`` makes a
variant (``--epochs 2``) without touching the documented values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    """How a documented network is trained.

    Attributes:
        net: the network's short name (``mlp1000``).
        source: the source document(s) in ``shared/seeds``.
        lr: learning rate.
        batch_size: samples per optimizer step (the last batch of an epoch may be smaller).
        epochs: documented number of epochs.
        loss: loss function (``cross_entropy``, ``mse``, ``nll``).
        reduction: how per-sample losses are combined: ``sum`` or ``mean``.
        init: the parameter initialisation, in words.
        momentum: SGD momentum (0 = plain SGD).
        lr_schedule: a step schedule, ``((epoch, lr), ...)`` with ascending epochs: from
            that epoch on the learning rate is that ``lr``; before the first entry it is
            ``lr`` above. Empty (the default) = constant ``lr``. Both sides honour it.
        train_size: train on a seeded random subset of this many images (None = all 60,000).
        test_size: evaluate on a seeded random subset of this many test images (None = all 10,000).
        dtype: the dtype of the documented full run (parity runs use both).
        variant: which reading of the document the scratch side implements, for a
            network that has more than one (``linear10``: ``correct`` or
            ``as-documented``); None for a network with a single reading.
        choices: every choice made where the source document is silent, one sentence each.
    """

    net: str
    source: str
    lr: float
    batch_size: int
    epochs: int
    loss: str
    reduction: str
    init: str
    momentum: float = 0.0
    lr_schedule: tuple[tuple[int, float], ...] = ()
    train_size: int | None = None
    test_size: int | None = None
    dtype: str = "float64"
    variant: str | None = None
    choices: tuple[str, ...] = field(default=())

    def __post_init__(self):
        epochs = [e for e, _ in self.lr_schedule]
        if any(not isinstance(e, int) or e < 1 for e in epochs) or epochs != sorted(set(epochs)):
            raise ValueError(f"lr_schedule epochs must be ascending integers >= 1, got {self.lr_schedule!r}")
        if any(not lr > 0 for _, lr in self.lr_schedule):
            raise ValueError(f"lr_schedule learning rates must be > 0, got {self.lr_schedule!r}")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (1-based) under ``lr_schedule``."""
        lr = self.lr
        for first_epoch, value in self.lr_schedule:
            if epoch >= first_epoch:
                lr = value
        return lr

    def replace(self, **changes) -> "Recipe":
        """A copy with some fields changed; ``None`` values are ignored (handy for CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def summary(self) -> str:
        """One line for ``nnparity list``."""
        return (f"lr {self.lr}, batch {self.batch_size}, {self.epochs} epochs, {self.loss} ({self.reduction}), "
                f"documented run in {self.dtype}")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["choices"] = list(self.choices)
        d["lr_schedule"] = [list(p) for p in self.lr_schedule]
        return d
