"""The registry of documented networks, and how to set up both sides of one.

Adding a network = a scratch module (``RECIPE``, ``build``, ``loss``), a reference
module (``build``, ``loss``) and one ``Network`` entry below. A network whose
``nnparity run`` is not the generic MNIST run (``run.run_network``) names a
*runner* module: ``add_arguments(group)`` adds its own ``run`` options,
``run(args) -> exit status`` replaces the generic run, and an optional
``step_parity(steps, dtype, seed, recipe=None)`` replaces the MNIST step parity.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from scratch.optim import SGD
from scratch.recipe import Recipe

from . import data as mnist

if TYPE_CHECKING:  # the sides import torch: make_sides imports them, so the registry alone needs no torch
    from .sides import ScratchSide, TorchSide


@dataclass(frozen=True)
class Network:
    """A documented network: where its two sides live and how its data is shaped.

    Attributes:
        name: short name used by the CLI and reports.
        summary: one line for ``nnparity list``.
        flat: inputs flattened to (N, 784) (else images (N, 1, 28, 28)).
        allowed_zero: gradients that are zero by construction (e.g. a bias
            followed by BatchNorm); exempt from the degeneracy guard, and their
            gradients and momentum buffers are compared with zero rather than with
            the reference's rounding noise (``parity.compare_records``).
        mnist: trained on MNIST (else it brings its own data: no bench, no loader).
        variants: the readings of the document the scratch side can implement
            (``Recipe.variant``); the first is the default.
        runner: dotted module path of a custom ``nnparity run`` (see above), or None.
        torch_threads: intra-op threads for the torch side (process-wide; None leaves
            torch's default). 1 for networks too small to parallelise: on a busy 2-core
            machine a linear10 step took 11 ms with 2 threads and 0.6 ms with 1.
    """

    name: str
    summary: str
    flat: bool = True
    allowed_zero: tuple = ()
    mnist: bool = True
    variants: tuple = ()
    runner: str | None = None
    torch_threads: int | None = None
    claim: str = ""
    results_row: tuple = ()

    @property
    def scratch(self) -> ModuleType:
        return importlib.import_module(f"scratch.nets.{self.name}")

    @property
    def reference(self) -> ModuleType:
        return importlib.import_module(f"reference.{self.name}")

    @property
    def recipe(self) -> Recipe:
        return self.scratch.RECIPE

    @property
    def runner_module(self) -> ModuleType | None:
        return importlib.import_module(self.runner) if self.runner else None


NETWORKS = {n.name: n for n in (
    Network("mlp1000", '784-1000-10 ReLU MLP, softmax cross-entropy '
                       '(source document: "Design and Train Neural Network from Scratch")',
            claim="training loss ~0, training error 0% by epoch 100",
            results_row=(("side", "training error {headline.SIDE.final_train_error:.3f}% "
                                  "({epochs.SIDE.train_error.min:.3f}% "
                                  "at epoch {epochs.SIDE.train_error.at_min.epoch}), "
                                  "test {headline.SIDE.final_test_accuracy:.2f}% "
                                  "(best {headline.SIDE.best_test_accuracy:.2f})"),)),
    Network("mlp16", '784-16-16-10 ReLU/ReLU/sigmoid MLP, squared error on one-hot targets '
                     '(source document: "Neural Network from Scratch" by Kaleb Ugalde)',
            torch_threads=1, claim="~95% test after 100 epochs, in ~20 minutes"),
    Network("linear10", "784-10 linear + ReLU, softmax cross-entropy; correct vs as-documented backward "
                        "(source document: an untitled report of a NumPy 'Neural Network library')",
            variants=("correct", "as-documented"), runner="nnparity.runners.linear10", torch_threads=1,
            claim="{document.train_accuracy}% training / {document.val_accuracy}% validation",
            results_row=(
                ("scratch", "correct derivative: {summary.correct.scratch.val_accuracy.mean:.2f}% validation "
                            "({summary.correct.scratch.val_accuracy.min:.2f} - "
                            "{summary.correct.scratch.val_accuracy.max:.2f}, {seeds.count} seeds); as documented: "
                            "{summary[as-documented].scratch.val_accuracy.mean:.2f}% "
                            "({summary[as-documented].scratch.val_accuracy.min:.2f} - "
                            "{summary[as-documented].scratch.val_accuracy.max:.2f})"),
                ("torch", "{summary.correct.torch.val_accuracy.mean:.2f}% ({summary.correct.torch.val_accuracy.min:.2f}"
                          " - {summary.correct.torch.val_accuracy.max:.2f})"),
                ("epochs", "{epochs_planned} x {seeds.count} seeds x {variants.count} variants"),
                ("seconds", "{runs.final.scratch.seconds.min:.0f} - {runs.final.scratch.seconds.max:.0f} / "
                            "{runs.final.torch.seconds.min:.0f} - {runs.final.torch.seconds.max:.0f} per run"))),
    Network("toy221", 'hand-worked 2-2-2 sigmoid net, E = 1/2 sum (t - out)^2, lr sweep '
                      '(source document: "Assignment 4 - Part 1")',
            mnist=False, runner="nnparity.runners.toy221", torch_threads=1,
            claim="E_total per step for each learning rate (plots)",
            results_row=(
                ("scratch", "E_total after {runs[2].scratch.last.step} steps at lr {runs[2].lr:g}: "
                            "{runs[2].scratch.last.E_total!r}"),
                ("torch", "the same to {runs.max_abs_diff.max:.2g}"),
                ("epochs", "{runs[0].scratch.last.step} steps x {runs.count} lr"),
                ("seconds", "not recorded by the report"))),
    Network("cnn18k", '4 conv blocks (BatchNorm, dropout, max pool), GAP, log-softmax + NLL '
                      '(source document: "Assignment 4 - Part 2")',
            flat=False, allowed_zero=("conv1.bias", "conv2.bias", "conv3.bias", "conv4.bias"),
            claim="best 99.28% test (missed its 99.4% target)"),
)}


class UnknownNetwork(KeyError):
    def __str__(self):
        return f"unknown network {self.args[0]!r}; known networks: {', '.join(NETWORKS)}"


def get(name: str) -> Network:
    try:
        return NETWORKS[name]
    except KeyError:
        raise UnknownNetwork(name) from None


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent generator for one purpose (``init``, ``dropout``...) of one seed."""
    return np.random.default_rng([seed, mnist._stream_id(name)])


_default_threads: list = []  # torch's thread count before the first apply_threads


def apply_threads(net: Network) -> None:
    """Set torch's intra-op threads to the network's ``torch_threads``, or back to torch's
    default for a network without one (so the setting never leaks from one network to the next)."""
    import torch

    if not _default_threads:
        _default_threads.append(torch.get_num_threads())
    wanted = net.torch_threads or _default_threads[0]
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def make_sides(net: Network, recipe: Recipe, dtype, seed: int) -> tuple[ScratchSide, TorchSide]:
    """Both sides from identical weights: the scratch side initialises from ``seed``,
    the torch side receives a copy (parity never relies on two RNGs agreeing)."""
    import torch

    from reference import bridge

    from .sides import ScratchSide, TorchSide

    apply_threads(net)

    dtype = np.dtype(dtype)
    smodel = net.scratch.build(recipe, stream(seed, "init"), dtype)
    tmodel = bridge.mirror(smodel, net.reference.build(recipe))
    scratch = ScratchSide(smodel, net.scratch.loss(recipe),
                          SGD(smodel.named_parameters(), recipe.lr, recipe.momentum))
    ref = TorchSide(tmodel, net.reference.loss(recipe),
                    torch.optim.SGD(tmodel.parameters(), lr=recipe.lr, momentum=recipe.momentum))
    return scratch, ref


@dataclass
class Dataset:
    """Preprocessed arrays shared by both sides (torch wraps them without copying)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def prepare(net: Network, recipe: Recipe, raw: mnist.MNIST, dtype, seed: int) -> Dataset:
    """Scale to [0, 1], lay out for the network, take the recipe's seeded subsets."""
    tr = mnist.subset(len(raw.train_labels), recipe.train_size, seed, "train_subset")
    te = mnist.subset(len(raw.test_labels), recipe.test_size, seed, "test_subset")

    def pick(a, i):
        return a if i is None else a[i]

    return Dataset(
        mnist.to_inputs(pick(raw.train_images, tr), dtype, net.flat),
        pick(raw.train_labels, tr).astype(np.int64),
        mnist.to_inputs(pick(raw.test_images, te), dtype, net.flat),
        pick(raw.test_labels, te).astype(np.int64),
    )


def training_batches(ds: Dataset, recipe: Recipe, seed: int, epoch: int):
    """The (x, y) minibatches of one epoch, in the order fixed by (seed, epoch)."""
    for idx in mnist.batches(mnist.epoch_order(len(ds.y_train), seed, epoch), recipe.batch_size):
        yield ds.x_train[idx], ds.y_train[idx]


def first_batches(ds: Dataset, recipe: Recipe, seed: int, steps: int):
    """The first ``steps`` training batches of the run (continuing into later epochs)."""
    epoch, n = 1, 0
    while n < steps:
        for batch in training_batches(ds, recipe, seed, epoch):
            if n == steps:
                return
            n += 1
            yield batch
        epoch += 1


def run_parity(name: str, steps: int = 50, dtype="float64", seed: int = 0, raw: mnist.MNIST | None = None,
               recipe: Recipe | None = None, ds: Dataset | None = None, on_step=None, observer=None):
    """Step parity of a documented network on its first ``steps`` real training batches
    (``observer``: see ``parity.check_steps``)."""
    from .parity import check_steps
    from .progress import with_parity_bars

    on_step = with_parity_bars(on_step)  # a bar of ``progress.parity_bar`` follows the steps
    net = get(name)
    custom = getattr(net.runner_module, "step_parity", None)
    if custom is not None:
        return custom(steps, dtype, seed, recipe=recipe, on_step=on_step)
    recipe = recipe or net.recipe
    ds = ds or prepare(net, recipe, raw or mnist.load_mnist(), dtype, seed)
    scratch, ref = make_sides(net, recipe, dtype, seed)
    return check_steps(scratch, ref, first_batches(ds, recipe, seed, steps), net=name, dtype=dtype,
                       allowed_zero=net.allowed_zero, on_step=on_step, observer=observer)
