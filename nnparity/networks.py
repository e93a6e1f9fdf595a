"""The registry of documented networks, and how to set up both sides of one.

Adding a network = a scratch module (``RECIPE``, ``build``, ``loss``), a reference
module (``build``, ``loss``) and one ``Network`` entry below. Everything a network
needs beyond that is a field of its entry: its data provider, its tolerance, what
one ``nnparity run`` sweeps (seeds, variants, learning rates), its own ``run``
options, the variants whose parity is expected to fail, and a small module of its
own report pieces (``extras``); ``nnparity.run.run_network`` reads them all.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from scratch.optim import SGD
from scratch.recipe import Recipe

from . import data as mnist
from .parity import Tolerance, tolerance_for
from .sides import ScratchSide, TorchSide


@dataclass(frozen=True)
class Option:
    """A ``nnparity run`` option of one network only, declared by its entry: the CLI adds
    it to ``run`` in a group "NET only" and refuses it, in one line, for any other network.

    Attributes:
        flag: the option (``--seeds``); its value is ``args.<flag without dashes>``.
        type: the parser of its value: a callable, or the name of one of the CLI's
            (``"positive_int"``); None with ``switch``.
        help: one line for ``--help``.
        choices, metavar: as argparse's.
        switch: a flag without a value (``store_true``).
        requires: (another option's dest, the one-line refusal when this one is given
            without it).
        field: the recipe field its value sets (``--steps`` sets ``epochs``), or None for an
            option the run reads itself (``--seeds``).
    """

    flag: str
    type: object = None
    help: str = ""
    choices: tuple | None = None
    metavar: str | None = None
    switch: bool = False
    requires: tuple | None = None
    field: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def default(self):
        return False if self.switch else None


def floats(count: int, what: str):
    """A parser of ``count`` comma-separated finite numbers (``--weights w1,...,w8``)."""
    import argparse
    import math

    def parse(text: str) -> tuple:
        parts = [p for p in text.replace(" ", "").split(",")]
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers {what}, got {text!r}") from None
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers {what}, "
                                             f"got {len(values)} in {text!r}")
        if not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected finite numbers {what}, got {text!r}")
        return values
    return parse


@dataclass(frozen=True)
class MNISTData:
    """The data provider of an MNIST network: the recipe's seeded subsets of MNIST
    (``prepare``), batches in the order fixed by the seed (``first_batches``)."""

    mnist = True
    splittable = True  # a batch of many samples: the metamorphic batch-split check applies

    def load(self, data_dir=None):
        return mnist.load_mnist(data_dir)

    def first_batches(self, net, recipe, raw, dtype, seed: int, steps: int, ds=None):
        ds = ds if ds is not None else prepare(net, recipe, raw if raw is not None else self.load(), dtype, seed)
        return first_batches(ds, recipe, seed, steps)

    def describe(self, recipe, x, step: int) -> str:
        return f"training batch {step} ({len(x)} MNIST images)"


@dataclass(frozen=True)
class OwnSamples:
    """The data provider of a network that brings its own training samples (toy221):
    ``scratch.data(recipe, dtype)``, the whole set at every step; no MNIST, no test set."""

    mnist = False
    splittable = False  # one hand-worked sample: no batch to split

    def load(self, data_dir=None):
        return None

    def first_batches(self, net, recipe, raw, dtype, seed: int, steps: int | None = None, ds=None):
        import itertools

        batch = net.scratch.data(recipe, np.dtype(dtype).type)
        return itertools.repeat(batch) if steps is None else itertools.repeat(batch, steps)

    def describe(self, recipe, x, step: int) -> str:
        return "the network's own training sample"


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
        data: its data provider: ``MNISTData()`` (the recipe's seeded subsets of MNIST) or
            ``OwnSamples()`` (the scratch module's ``data(recipe, dtype)``, every step).
        variants: the readings of the document the scratch side can implement
            (``Recipe.variant``); the first is the default.
        sweep: what one ``nnparity run`` sweeps: ``"seeds"`` (``--seeds K`` replicates, ``seeds``
            by default), ``"variants"`` (every variant, or the one ``--variant`` names),
            ``"lrs"`` (``--lr`` takes several learning rates, the recipe's ``lrs`` by default,
            one run each). Empty: one run.
        seeds: the number of seeds of a documented run that sweeps ``"seeds"``.
        options: ``Option``s of this network's ``run`` only, beyond those its sweep implies.
        unsupported: ``((run option dest, why), ...)``: generic ``run`` options that do not
            apply to this network; the CLI refuses them in one line naming why.
        recipe_options: generic ``run`` options recorded in this network's recipe
            (``("dtype",)``: the recipe's ``dtype`` is the run's, not the documented one).
        expected_failure: ``((variant, why), ...)``: variants whose step parity is expected
            to FAIL (a reading of the document with a derivation slip): the run trains them
            anyway, and a pass (the check missed the slip) fails the run.
        extras: dotted module path of the network's own report pieces (its story
            paragraph, per-epoch metric, report sections and plots; a reporting module,
            resolved by ``report.extras_of``), or None.
        tolerances: ``((dtype, Tolerance), ...)``: the network's own comparison tolerance
            per dtype, where the suite's (``parity.TOLERANCES``) does not fit it.
        torch_threads: intra-op threads for the torch side (process-wide; None leaves
            torch's default). 1 for networks too small to parallelise: on a busy 2-core
            machine a linear10 step took 11 ms with 2 threads and 0.6 ms with 1.
    """

    name: str
    summary: str
    flat: bool = True
    allowed_zero: tuple = ()
    data: object = MNISTData()
    variants: tuple = ()
    torch_threads: int | None = None
    tolerances: tuple = ()
    sweep: tuple = ()
    seeds: int = 1
    options: tuple = ()
    unsupported: tuple = ()
    recipe_options: tuple = ()
    expected_failure: tuple = ()
    extras: str | None = None

    @property
    def mnist(self) -> bool:
        """Trained on MNIST (else it brings its own data: no bench, no loader)."""
        return self.data.mnist

    def tolerance(self, dtype) -> Tolerance:
        """The comparison tolerance of this network in ``dtype``: its own, else the suite's."""
        return dict(self.tolerances).get(np.dtype(dtype).name) or tolerance_for(dtype)

    @property
    def scratch(self) -> ModuleType:
        return importlib.import_module(f"scratch.nets.{self.name}")

    @property
    def reference(self) -> ModuleType:
        return importlib.import_module(f"reference.{self.name}")

    @property
    def recipe(self) -> Recipe:
        return self.scratch.RECIPE

    def run_options(self) -> tuple:
        """Every ``run`` option of this network only: those its sweep implies, then its own."""
        implied = []
        if "variants" in self.sweep:
            implied.append(Option("--variant", choices=("both",) + self.variants,
                                  help=f"both (default: the documented run), or one of: {', '.join(self.variants)}"))
        if "seeds" in self.sweep:
            implied.append(Option("--seeds", type="positive_int",
                                  help=f"train each variant with this many seeds, --seed upwards "
                                       f"(default {self.seeds})"))
        return tuple(implied) + self.options

    def expected_to_fail(self, variant) -> bool:
        """The step parity of ``variant`` is expected to fail (``expected_failure``)."""
        return variant in dict(self.expected_failure)


NETWORKS = {n.name: n for n in (
    Network("mlp1000", '784-1000-10 ReLU MLP, softmax cross-entropy '
                       '(source document: "Design and Train Neural Network from Scratch")'),
    Network("mlp16", '784-16-16-10 ReLU/ReLU/sigmoid MLP, squared error on one-hot targets '
                     '(source document: "Neural Network from Scratch" by Kaleb Ugalde)',
            torch_threads=1),
    Network("linear10", "784-10 linear + ReLU, softmax cross-entropy; correct vs as-documented backward "
                        "(source document: an untitled report of a NumPy 'Neural Network library')",
            variants=("correct", "as-documented"), torch_threads=1, sweep=("seeds", "variants"), seeds=5,
            expected_failure=(("as-documented", "its ReLU backward passes the gradient straight through"),),
            unsupported=(
                ("save_every", "linear10 trains 10 runs of 200 short epochs each; rerun instead of resuming"),
                ("resume", "linear10 trains 10 runs of 200 short epochs each; rerun instead of resuming")),
            extras="nnparity.net_linear10"),
    Network("toy221", 'hand-worked 2-2-2 sigmoid net, E = 1/2 sum (t - out)^2, lr sweep '
                      '(source document: "Assignment 4 - Part 1")',
            data=OwnSamples(), torch_threads=1, sweep=("lrs",), recipe_options=("dtype",),
            options=(
                Option("--weights", floats(8, "w1,...,w8"), metavar="W1,...,W8",
                       field="weights", help="initial weights (default: the document's 0.15,0.2,0.25,0.3,0.4,0.45,0.5,0.55)"),
                Option("--biases", floats(2, "b1,b2"), metavar="B1,B2", field="biases",
                       help="add biases: b1 shared by h1, h2 and b2 by o1, o2 (default: none, as documented)"),
                Option("--freeze-biases", switch=True, field="freeze_biases",
                       requires=("biases", "--freeze-biases needs biases to freeze: add --biases B1,B2"),
                       help="keep the biases constant (as Matt Mazur's example does); default: trained"),
                Option("--steps", "positive_int", field="epochs", help="gradient-descent steps per run (default 181)")),
            unsupported=(
                ("epochs", "toy221 counts gradient-descent steps: use --steps N"),
                ("train_size", "toy221 trains on its one documented sample"),
                ("test_size", "toy221 has no test set"),
                ("data_dir", "toy221 does not use MNIST"),
                ("parity_steps", "toy221 compares both sides at every step of every run"),
                ("batch_size", "toy221 trains on its one documented sample"),
                ("save_every", "a toy221 run takes seconds: rerun it"),
                ("resume", "a toy221 run takes seconds: rerun it"),
                ("envelope_steps", "toy221 compares every step of every run at 1e-12; there is no drift to bound")),
            extras="nnparity.net_toy221",
            # float64: the floor, the two sides agree to 1e-12 absolute on every number.
            # float32: the suite's pair (atol 1e-4, rtol 1e-3) is sized for MNIST nets; here atol 1e-4 is
            # as large as the smallest gradients (dE/dw1 falls to ~8e-7 at lr 0.1), so those comparisons
            # would prove nothing (the degeneracy guard flags them). atol is scaled to the toy's
            # magnitudes: 1e-8, above the measured float32 noise on those gradients (scratch-f32 vs
            # torch-f32 <= 1.3e-9, torch-f32 vs torch-f64 <= 1.3e-9 over 181 steps at lr 0.1 and 2.0) and
            # 80x below the smallest of them. A tightening: rtol is the suite's.
            tolerances=(("float64", Tolerance(atol=1e-12, rtol=0.0)), ("float32", Tolerance(atol=1e-8, rtol=1e-3)))),
    Network("cnn18k", '4 conv blocks (BatchNorm, dropout, max pool), GAP, log-softmax + NLL '
                      '(source document: "Assignment 4 - Part 2")',
            flat=False, allowed_zero=("conv1.bias", "conv2.bias", "conv3.bias", "conv4.bias")),
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
    recipe = recipe or net.recipe
    batches = net.data.first_batches(net, recipe, raw, dtype, seed, steps, ds=ds)
    scratch, ref = make_sides(net, recipe, dtype, seed)
    return check_steps(scratch, ref, batches, net=name, dtype=dtype, tol=net.tolerance(dtype),
                       allowed_zero=net.allowed_zero, on_step=on_step, observer=observer)
