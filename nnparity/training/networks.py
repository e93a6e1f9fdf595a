"""The registry of documented networks, and how to set up both sides of one.

Adding a network = a scratch module (``RECIPE``, ``build``, ``loss``), a reference
module (``build``, ``loss``) and one ``Network`` entry below. Everything a network
needs beyond that is a field of its entry: its data provider, its tolerance, what
one ``nnparity run`` sweeps (seeds, variants, learning rates), its own ``run``
options, the variants whose parity is expected to fail, and a small module of its
own report pieces (``extras``); ``nnparity.cli.run.run_network`` reads them all.
A network that is not in the registry is given by a file path or ``module:attr``
instead (``get``; the contract is in ``load``'s docstring and the README's "Your own network").
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
import traceback
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from scratch.optim import SGD
from scratch.recipe import Recipe

from nnparity.core import data as mnist
from nnparity.core.parity import Tolerance, tolerance_for

if TYPE_CHECKING:  # the sides import torch: make_sides imports them, so the registry alone needs no torch
    from nnparity.training.sides import ScratchSide, TorchSide


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
        scratch_module: the scratch side: a module (or any object) with ``RECIPE``,
            ``build`` and ``loss``, or its dotted import path; None = ``scratch.nets.NAME``.
        reference_module: the torch mirror: a module (or any object) with ``build`` and
            ``loss``, or its dotted import path; None = ``reference.NAME``.
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
    claim: str = ""
    results_row: tuple = ()
    scratch_module: ModuleType | object | str | None = None
    reference_module: ModuleType | object | str | None = None

    @property
    def mnist(self) -> bool:
        """Trained on MNIST (else it brings its own data: no bench, no loader)."""
        return self.data.mnist

    @property
    def run_seeds(self) -> int:
        """The seeds its documented run trains: ``seeds`` where it sweeps them, else one."""
        return self.seeds if "seeds" in self.sweep else 1

    @property
    def run_variants(self) -> int:
        """The variants its documented run trains for each seed (their torch side once), else one."""
        return len(self.variants) if "variants" in self.sweep else 1

    def tolerance(self, dtype) -> Tolerance:
        """The comparison tolerance of this network in ``dtype``: its own, else the suite's."""
        return dict(self.tolerances).get(np.dtype(dtype).name) or tolerance_for(dtype)

    @property
    def scratch(self) -> ModuleType:
        return _module(self.scratch_module, f"scratch.nets.{self.name}")

    @property
    def reference(self) -> ModuleType:
        return _module(self.reference_module, f"reference.{self.name}")

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
            variants=("correct", "as-documented"), torch_threads=1, sweep=("seeds", "variants"), seeds=5,
            expected_failure=(("as-documented", "its ReLU backward passes the gradient straight through"),),
            unsupported=(
                ("save_every", "linear10 trains 10 runs of 200 short epochs each; rerun instead of resuming"),
                ("resume", "linear10 trains 10 runs of 200 short epochs each; rerun instead of resuming")),
            extras="nnparity.reporting.linear10",
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
                ("envelope_steps", "toy221 compares every step of every run at 1e-12; there is no drift to bound"),
                ("sequential", "toy221 steps both sides in one process, on its one sample")),
            extras="nnparity.reporting.toy221",
            claim="E_total per step for each learning rate (plots)",
            results_row=(
                ("scratch", "E_total after {runs[2].scratch.last.step} steps at lr {runs[2].lr:g}: "
                            "{runs[2].scratch.last.E_total!r}"),
                ("torch", "the same to {runs.max_abs_diff.max:.2g}"),
                ("epochs", "{runs[0].scratch.last.step} steps x {runs.count} lr"),
                ("seconds", "not recorded by the report")),
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
            flat=False, allowed_zero=("conv1.bias", "conv2.bias", "conv3.bias", "conv4.bias"),
            claim="best 99.28% test (missed its 99.4% target)"),
)}


def _module(held, default: str):
    """The module a ``Network`` holds: itself, imported from its dotted path, or the default path."""
    if held is None or isinstance(held, str):
        return importlib.import_module(held or default)
    return held


class UnknownNetwork(KeyError):
    def __str__(self):
        return (f"unknown network {self.args[0]!r}; known networks: {', '.join(NETWORKS)} "
                "(or your own: path/to/net.py or module:attr)")


class NetworkSpecError(UnknownNetwork):
    """A network given as a file or ``module:attr`` that cannot be used: ``str()`` is one
    line naming the problem and the fix."""

    def __str__(self):
        return self.args[0]


_LOADED: dict = {}   # networks loaded from a file or module:attr in this process: name -> Network
_BY_SPEC: dict = {}  # (absolute path or module, attr) -> Network, so a file is executed once
_SPEC_OF: dict = {}  # name of a loaded network -> the spec that loads it again (another process)

FUNCTIONS = "build(recipe, rng, dtype), loss(recipe), torch_build(recipe) and torch_loss(recipe)"
CONTRACT = f"RECIPE (a scratch.recipe.Recipe), {FUNCTIONS}"
HELP = "README: Your own network"


def get(spec) -> Network:
    """The network named ``spec``: a documented one (``NETWORKS``), one already loaded,
    a ``Network`` itself, or a network of your own given as a Python file
    (``path/to/net.py``, optionally ``path/to/net.py:ATTR``) or ``module:attr``
    (see ``load``). A loaded network is registered under its name (``register``), so
    every tool finds it by that name for the rest of the process.

    Raises ``UnknownNetwork`` for an unknown name and ``NetworkSpecError`` (one line:
    the problem and the fix) for a file or module that cannot be loaded.
    """
    if isinstance(spec, Network):
        return spec
    if spec in NETWORKS:
        return NETWORKS[spec]
    if spec in _LOADED:
        return _LOADED[spec]
    if not is_spec(spec):
        raise UnknownNetwork(spec)
    net = register(load(spec))
    path, attr = _split(spec)
    _SPEC_OF[net.name] = spec if path is None else os.path.abspath(path) + (f":{attr}" if attr else "")
    return net


def spec_of(name: str) -> str:
    """What ``get`` needs to find network ``name`` in a fresh process (``bench``'s children):
    its name for a documented network, the file (absolute path) or ``module:attr`` it was
    loaded from otherwise."""
    return _SPEC_OF.get(name, name) if name not in NETWORKS else name


def rebuildable(net: Network) -> bool:
    """Whether a fresh process finds this very network by ``spec_of(net.name)``: a documented
    one, or one loaded from a file or module (not one made in this process, or changed here)."""
    if net.name in NETWORKS:
        return NETWORKS[net.name] is net
    return net.name in _SPEC_OF and _LOADED.get(net.name) is net


def is_spec(text: str) -> bool:
    """Whether ``text`` names a network by file or module rather than by registry name."""
    return isinstance(text, str) and (":" in text or text.endswith(".py") or "/" in text or os.sep in text)


def register(net: Network) -> Network:
    """Make ``net`` findable by its name (``get(net.name)``) for the rest of the process;
    a later network of the same name replaces it. A documented network's name is refused."""
    if net.name in NETWORKS and NETWORKS[net.name] is not net:
        raise NetworkSpecError(f"network name {net.name!r} is a documented network's: give yours another "
                               "name (RECIPE = Recipe(net=..., ...))")
    _LOADED[net.name] = net
    return net


def load(spec: str) -> Network:
    """A network of your own, from a Python file (``path/to/net.py[:ATTR]``) or an
    importable module (``module:attr``).

    The contract, one file holding both sides (``examples/tanh_mlp.py``):

    * ``RECIPE = Recipe(net="NAME", ...)``: the recipe; ``NAME`` names the network
      (reports go to ``OUT/NAME/``) and must not be a documented network's;
    * ``build(recipe, rng, dtype)`` -> the scratch model (a ``scratch.module.Module``
      whose ``state_dict()`` names are the torch mirror's) and ``loss(recipe)`` -> the
      scratch loss, as in ``scratch/nets/*.py``;
    * ``torch_build(recipe)`` -> the ``torch.nn.Module`` mirror (its weights are
      overwritten by the scratch side's) and ``torch_loss(recipe)``, as in ``reference/*.py``;
    * optionally ``NETWORK = Network(...)`` for the registry fields (``flat=False`` for
      (N, 1, 28, 28) images, ``allowed_zero``, ``torch_threads``, ``summary``); its
      ``scratch_module`` / ``reference_module`` may point to other modules (objects or
      dotted paths) instead, so that the two sides live in two files.

    ``ATTR`` (``module:attr``, ``file.py:ATTR``) picks a ``Network`` object or an object
    holding the contract (a module, a class, a namespace) instead of the whole module.
    A file's folder is on ``sys.path`` while it is executed, so it can import its
    neighbours. Anything wrong is a ``NetworkSpecError`` naming it, and the line of your
    file an exception came from.
    """
    path, attr = _split(spec)
    if path is not None:
        key = (os.path.abspath(path), attr)
        if key not in _BY_SPEC:
            _BY_SPEC[key] = _network_of(_exec_file(path), attr, path)
        return _BY_SPEC[key]
    modname, _, attr = spec.partition(":")
    if not modname or not attr:
        raise NetworkSpecError(f"network {spec!r}: expected module:attr (both parts), or a file path "
                               "ending in .py")
    key = (modname, attr)
    if key not in _BY_SPEC:
        _BY_SPEC[key] = _network_of(_import(modname, spec), attr, spec)
    return _BY_SPEC[key]


def _split(spec: str):
    """(file path, attr or None) for a file spec, (None, None) for ``module:attr``."""
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".py"):
        return head, tail
    if spec.endswith(".py") or "/" in spec or os.sep in spec:
        return spec, None
    return None, None


def _fail(where: str, exc: BaseException, user_file: str | None, doing: str | None = None) -> NetworkSpecError:
    """The one-line error for an exception raised while your file or module was executed:
    the exception and the line of your code it came from."""
    what = (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0]
    at = ""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        what = f"SyntaxError: {exc.msg}"
        at = f" at {_shown(exc.filename)} line {exc.lineno}" + (f": {exc.text.strip()}" if exc.text else "")
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_users(f.filename, user_file)]
        if frames:
            at = f" at {_shown(frames[-1].filename)} line {frames[-1].lineno}" + (
                f": {frames[-1].line}" if frames[-1].line else "")
    doing = doing or ("executing it" if user_file else "importing it")
    return NetworkSpecError(f"{where}: {doing} raised {what}{at}; fix it there and try again")


def _shown(filename: str) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    rel = os.path.relpath(filename) if os.path.isabs(filename) else filename
    return filename if rel.startswith("..") else rel


_LIBRARY = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
                 for d in ("nnparity", "scratch", "reference"))


def _is_users(filename: str, user_file: str | None) -> bool:
    """Whether a traceback frame is in your code: your file, or any file that is not nn-parity's,
    the standard library's or an installed package's."""
    if user_file is not None and os.path.abspath(filename) == os.path.abspath(user_file):
        return True
    full = os.path.abspath(filename)
    return not (filename.startswith("<") or full.startswith(_LIBRARY) or "site-packages" in full
                or full.startswith(os.path.abspath(sys.base_prefix) + os.sep)
                or full.startswith(os.path.abspath(sys.prefix) + os.sep))


def _exec_file(path: str) -> ModuleType:
    """Execute a user file as a module (named after the file if that name is free)."""
    if not os.path.exists(path):
        raise NetworkSpecError(f"network file {path}: no such file; give the path of a Python file that "
                               f"defines {CONTRACT} ({HELP})")
    if os.path.isdir(path):
        raise NetworkSpecError(f"network file {path}: is a folder; give the path of a Python file inside it")
    if not path.endswith(".py"):
        raise NetworkSpecError(f"network file {path}: not a .py file; give a Python file, or module:attr")
    full = os.path.abspath(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    name = stem if stem.isidentifier() else "user_network"
    known = sys.modules.get(name)
    if known is not None:
        if os.path.abspath(getattr(known, "__file__", "") or "") == full:
            return known  # the same file, already imported (e.g. by a neighbour)
        name = f"{name}__{zlib.crc32(full.encode()):08x}"  # another file of the same name
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(full)
    sys.modules[name] = module  # before executing: dataclasses and pickle-free imports look it up
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        del sys.modules[name]
        raise _fail(f"network file {path}", e, path) from None
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    return module


def _import(modname: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name and (modname == e.name or modname.startswith(e.name + ".")):
            raise NetworkSpecError(f"network {spec!r}: no module named {e.name!r}; run from the folder that "
                                   "holds it, add that folder to PYTHONPATH, or give the file's path "
                                   "(path/to/net.py)") from None
        raise _fail(f"network {spec!r}", e, None) from None
    except (Exception, SystemExit) as e:
        raise _fail(f"network {spec!r}", e, None) from None


class _TorchMirror:
    """The reference side of a one-file network: its ``torch_build`` / ``torch_loss``."""

    def __init__(self, build, loss, name: str):
        self.build, self.loss, self.__name__ = build, loss, name


def _network_of(module, attr: str | None, where: str) -> Network:
    """The ``Network`` a loaded file or module describes, checked against the contract."""
    obj = module
    if attr is not None:
        if not hasattr(module, attr):
            public = [n for n in vars(module) if not n.startswith("_")] if hasattr(module, "__dict__") else []
            raise NetworkSpecError(f"network {where!r}: {getattr(module, '__name__', module)!r} has no attribute "
                                   f"{attr!r}; it has {', '.join(public[:12]) or 'no public names'}")
        obj = getattr(module, attr)
    if not isinstance(obj, Network) and isinstance(getattr(obj, "NETWORK", None), Network):
        obj = obj.NETWORK  # a module that declares its registry entry
    if isinstance(obj, Network):
        net = obj
        if net.scratch_module is None and net.name not in NETWORKS:
            net = dataclasses.replace(net, scratch_module=module)
        if net.reference_module is None and net.name not in NETWORKS:
            net = dataclasses.replace(net, reference_module=_mirror_of(module, where))
        if net.name in NETWORKS and net == NETWORKS[net.name]:
            return NETWORKS[net.name]
    else:
        recipe = _recipe_of(obj, where)
        _check_functions(obj, ("build", "loss"), where, "")  # the scratch side before the mirror
        doc = (getattr(obj, "__doc__", None) or "").strip()
        net = Network(recipe.net, doc.splitlines()[0] if doc else f"your network from {where}",
                      scratch_module=obj, reference_module=_mirror_of(obj, where))
    _check_contract(net, where)
    return net


def _recipe_of(obj, where: str) -> Recipe:
    recipe = getattr(obj, "RECIPE", None)
    if recipe is None:
        raise NetworkSpecError(f"network {where!r} defines no RECIPE; add RECIPE = Recipe(net=\"NAME\", lr=..., "
                               f"...) (from scratch.recipe import Recipe), beside {FUNCTIONS} ({HELP})")
    if not isinstance(recipe, Recipe):
        raise NetworkSpecError(f"network {where!r}: RECIPE is of type {type(recipe).__name__}, not a "
                               "scratch.recipe.Recipe; make it RECIPE = Recipe(net=\"NAME\", ...)")
    return recipe


def _mirror_of(obj, where: str):
    build, loss = getattr(obj, "torch_build", None), getattr(obj, "torch_loss", None)
    if build is None and loss is None:
        raise NetworkSpecError(f"network {where!r} has no torch mirror: define torch_build(recipe) and "
                               "torch_loss(recipe) in it, or NETWORK = Network(..., reference_module=...) "
                               f"naming the module that has build and loss ({HELP})")
    return _TorchMirror(build, loss, f"{getattr(obj, '__name__', where)} (torch_build, torch_loss)")


def _check_contract(net: Network, where: str) -> None:
    if not isinstance(net.name, str) or not net.name or net.name.startswith(".") or any(
            c in net.name for c in "/\\:\0") or net.name != net.name.strip():
        raise NetworkSpecError(f"network {where!r}: its name {net.name!r} cannot name a report folder; use "
                               "letters, digits, '_', '-' or '.'")
    for side in ("scratch", "reference"):
        try:
            module = getattr(net, side)
        except ImportError as e:
            raise NetworkSpecError(f"network {where!r}: its {side} module cannot be imported ({e}); check "
                                   f"Network(..., {side}_module=...)") from None
        if side == "scratch":
            _recipe_of(module, where)
        _check_functions(module, ("build", "loss"), where, "torch_" if isinstance(module, _TorchMirror) else "")
    if net.recipe.net != net.name:
        raise NetworkSpecError(f"network {where!r}: NETWORK is named {net.name!r} but its RECIPE "
                               f"{net.recipe.net!r}; give both the same name")
    _check_builds(net, where)


def _check_builds(net: Network, where: str) -> None:
    """Build both sides once, as every tool will, so that an error in your functions, or two
    sides that do not line up, is one line now rather than a traceback later."""
    from reference import bridge

    recipe, torch_prefix = net.recipe, "torch_" if isinstance(net.reference, _TorchMirror) else ""
    built = []  # the scratch model, its loss, the torch model, its loss
    for label, call in ((f"build(RECIPE, rng, {recipe.dtype})",
                         lambda: net.scratch.build(recipe, stream(0, "init"), np.dtype(recipe.dtype))),
                        ("loss(RECIPE)", lambda: net.scratch.loss(recipe)),
                        (f"{torch_prefix}build(RECIPE)", lambda: net.reference.build(recipe)),
                        (f"{torch_prefix}loss(RECIPE)", lambda: net.reference.loss(recipe))):
        try:
            built.append(call())
        except (Exception, SystemExit) as e:
            raise _fail(f"network {where!r}", e, None, doing=f"calling {label}") from None
    model, tmodel = built[0], built[2]
    if not callable(getattr(model, "named_parameters", None)) or not callable(getattr(model, "named_state", None)):
        raise NetworkSpecError(f"network {where!r}: build returned a {type(model).__name__}, not a scratch "
                               "module; return a scratch.module.Module (e.g. a Sequential of scratch layers)")
    import torch

    if not isinstance(tmodel, torch.nn.Module):
        raise NetworkSpecError(f"network {where!r}: {torch_prefix}build returned a {type(tmodel).__name__}, "
                               "not a torch.nn.Module")
    try:
        bridge.mirror(model, tmodel)
    except bridge.BridgeError as e:
        raise NetworkSpecError(f"network {where!r}: the two sides do not line up: " + " ".join(str(e).split())
                               + f"; give {torch_prefix}build's modules the scratch model's names and shapes") from None


def _check_functions(module, names, where: str, prefix: str) -> None:
    for attr in names:
        fn = getattr(module, attr, None)
        if not callable(fn):
            what = "missing" if fn is None else f"of type {type(fn).__name__}, not a function"
            raise NetworkSpecError(f"network {where!r}: {prefix}{attr} is {what}; the contract is {CONTRACT} "
                                   f"({HELP})")


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


@contextmanager
def side_threads(n: int):
    """The block runs with ``n`` threads in each library, NumPy's BLAS (``threadpoolctl``) and
    torch's intra-op pool; both counts are put back after it. ``side_threads(1)`` is the rule
    of a process that steps one side after the other: neither library's idle workers spin
    against the other's (``nnparity/core/threads.py``)."""
    import torch

    from nnparity.core.threads import blas_threads

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with blas_threads(n):
            yield
    finally:
        torch.set_num_threads(before)


def make_sides(net: Network, recipe: Recipe, dtype, seed: int) -> tuple[ScratchSide, TorchSide]:
    """Both sides from identical weights: the scratch side initialises from ``seed``,
    the torch side receives a copy (parity never relies on two RNGs agreeing)."""
    import torch

    from reference import bridge

    from nnparity.training.sides import ScratchSide, TorchSide

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
    from nnparity.core.parity import check_steps
    from nnparity.core.progress import with_parity_bars

    on_step = with_parity_bars(on_step)  # a bar of ``progress.parity_bar`` follows the steps
    net = get(name)
    recipe = recipe or net.recipe
    batches = net.data.first_batches(net, recipe, raw, dtype, seed, steps, ds=ds)
    scratch, ref = make_sides(net, recipe, dtype, seed)
    return check_steps(scratch, ref, batches, net=name, dtype=dtype, tol=net.tolerance(dtype),
                       allowed_zero=net.allowed_zero, on_step=on_step, observer=observer)
