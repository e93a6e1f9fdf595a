"""A network that is not in the registry, given by path or module:attr, through every tool
(run, check, gradcheck, selftest, bench), and every way of getting its file wrong answered in
one line. The networks here are tiny and written into tmp_path, outside the package."""

import json
import os
import re
import sys
import textwrap

import pytest

from nnparity.training import networks
from nnparity.cli.main import main

TINY = '''
"""A tiny 784-8-10 ReLU MLP of a user's own, outside the package."""
from collections import OrderedDict

import numpy as np
from torch import nn

from scratch import init
from scratch.layers import Linear, ReLU
from scratch.losses import CrossEntropyLoss
from scratch.module import Sequential
from scratch.recipe import Recipe

RECIPE = Recipe(net="{name}", source="a test", lr=0.1, batch_size={batch}, epochs=1, loss="cross_entropy",
                reduction="mean", init="uniform fan-in", train_size={train}, test_size=32,
                choices=("8 hidden units: small enough for a test.",))


def build(recipe=RECIPE, rng=None, dtype=np.float64, act=ReLU):
    model = Sequential(OrderedDict(fc1=Linear(784, 8, dtype=dtype), act=act(), fc2=Linear(8, 10, dtype=dtype)))
    init.uniform_fan_in(model, rng if rng is not None else np.random.default_rng(0))
    return model


def loss(recipe=RECIPE):
    return CrossEntropyLoss(reduction=recipe.reduction)


def torch_build(recipe=RECIPE):
    return nn.Sequential(OrderedDict(fc1=nn.Linear(784, 8), act=nn.ReLU(), fc2=nn.Linear(8, 10)))


def torch_loss(recipe=RECIPE):
    return nn.CrossEntropyLoss(reduction=recipe.reduction)
'''

# the same network with ReLU's backward passing the gradient straight through (linear10's
# slip), importing its neighbour as a learner would
WRONG = '''
from scratch.layers import ReLU
from {right} import RECIPE as RIGHT, build as build_right, loss, torch_build, torch_loss


class StraightThrough(ReLU):
    def backward(self, dy):
        return dy  # SLIP: should be dy * self.mask


RECIPE = RIGHT.replace(net="{right}_wrong")


def build(recipe=RECIPE, rng=None, dtype=None):
    return build_right(recipe, rng, dtype, act=StraightThrough)
'''


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """Networks loaded in a test, and the modules of its files, are forgotten after it."""
    for attr in ("_LOADED", "_BY_SPEC", "_SPEC_OF"):
        monkeypatch.setattr(networks, attr, {})
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [m for m, mod in list(sys.modules.items())
                 if (getattr(mod, "__file__", "") or "").startswith(str(tmp_path))]:
        del sys.modules[name]


def write(folder, name, text, **fields):
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(text).format(name=name, **{"batch": 8, "train": 64, **fields}))
    return path


def test_a_file_path_is_loaded_checked_and_registered_under_its_name(tmp_path, registry):
    path = write(tmp_path, "tinynet", TINY)
    net = networks.get(str(path))
    assert net.name == "tinynet" and net.summary.startswith("A tiny 784-8-10")
    assert networks.get("tinynet") is net and networks.get(str(path)) is net  # the file runs once
    assert net.recipe.batch_size == 8 and callable(net.reference.build)
    scratch, ref = networks.make_sides(net, net.recipe, "float64", 0)
    assert list(scratch.model.state_dict()) == list(ref.model.state_dict()) == [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert "tinynet" not in networks.NETWORKS  # the documented registry is unchanged
    assert networks.spec_of("tinynet") == str(path) and networks.spec_of("mlp1000") == "mlp1000"


def test_module_attr_and_a_network_object_holding_two_modules(tmp_path, registry, monkeypatch):
    """``module:attr`` naming a Network whose sides are two other modules (dotted paths)."""
    write(tmp_path, "tiny_scratch", TINY.replace("def torch_build", "def _unused"))
    (tmp_path / "tiny_torch.py").write_text("from tiny_scratch import _unused as build, torch_loss as loss\n")
    (tmp_path / "tiny_entry.py").write_text(
        "from nnparity import Network\n"
        "ENTRY = Network('tiny_scratch', 'two modules', scratch_module='tiny_scratch',\n"
        "                reference_module='tiny_torch', torch_threads=1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = networks.get("tiny_entry:ENTRY")
    assert (net.name, net.torch_threads) == ("tiny_scratch", 1)
    assert net.scratch.__name__ == "tiny_scratch" and net.reference.__name__ == "tiny_torch"
    networks.make_sides(net, net.recipe, "float32", 0)


def test_run_check_gradcheck_selftest_and_bench_take_a_network_by_path(tmp_path, registry, capsys):
    path = str(write(tmp_path, "tinynet", TINY, batch=1000, train=64))
    small = ["--train-size", "64", "--test-size", "32", "--batch-size", "8"]
    out = tmp_path / "runs"
    assert main(["run", path, "--epochs", "1", *small, "--parity-steps", "2", "--envelope-steps", "2",
                 "--out", str(out), "--no-progress"]) == 0
    meta = json.loads((out / "tinynet" / "metrics.json").read_text())
    assert meta["net"] == "tinynet" and meta["status"] == "complete" and meta["parity"]["status"] == "pass"
    assert (out / "tinynet" / "report.md").is_file()

    capsys.readouterr()
    assert main(["check", path, "--steps", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["net"] == "tinynet"

    assert main(["gradcheck", path, "--samples", "2", "--batch-size", "4", "--no-progress"]) == 0
    assert "tinynet gradcheck" in capsys.readouterr().out

    from nnparity.selftest import bugs

    from nnparity.selftest import kill_matrix as selftest
    report = selftest.run_selftest(["tinynet"], steps=1, batch_size=8,
                                   bugs=[bugs.get_bug("relu-straight-through")])
    cells = report.cells["relu-straight-through"]
    assert {"tinynet", "tinynet:split", "tinynet:linear"} <= set(cells)
    assert report.baseline["tinynet:split"].status == report.baseline["tinynet:linear"].status == "pass"
    assert cells["tinynet"].status == "killed"

    # bench: a fresh process per network (spawn), which loads the file again by its path
    assert main(["bench", path, "--dtype", "float64", "--repeats", "1", "--out", str(tmp_path / "b.md")]) == 0
    assert "| tinynet | float64 | 1000 |" in (tmp_path / "b.md").read_text()


REGISTRY_TESTS = ("test_registry", "test_metamorphic")  # the modules with tests over the registry
HERE = os.path.dirname(os.path.abspath(__file__))


def registry_tests(net):
    """``file::test[param-NET]`` of every test the registry's parametrization gives ``net``: each
    function of ``REGISTRY_TESTS`` taking ``network`` whose ``networks`` marks admit it, once per
    dtype if it takes ``dtype``."""
    import importlib
    import inspect

    ids = set()
    for name in REGISTRY_TESTS:
        for fname, fn in inspect.getmembers(importlib.import_module(name), inspect.isfunction):
            params = inspect.signature(fn).parameters
            marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "networks"]
            if fname.startswith("test_") and "network" in params and all(m.kwargs["where"](net) for m in marks):
                for dtype in (["float64", "float32"] if "dtype" in params else [None]):
                    ids.add(f"parity_tests/{name}.py::{fname}[{f'{dtype}-' if dtype else ''}{net.name}]")
    return ids


def pytest_session(pytester, *args):
    """A new pytest session (in this process: no second start-up of torch) over the repository's
    own configuration, conftests and test files."""
    root = os.path.dirname(HERE)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "--rootdir", root, "-c",
                                        os.path.join(root, "pyproject.toml"), *args)


def test_a_network_added_to_the_registry_gets_every_registry_test_unedited(pytester, tmp_path, registry,
                                                                           monkeypatch):
    """A network named by NNPARITY_EXTRA_NETWORKS joins the registry the tests are parametrized
    over (``conftest.py``): a new pytest session collects every registry test for it, as for the
    documented networks, and they pass, without a test file edited."""
    path = write(tmp_path, "tinynet", TINY)
    monkeypatch.setenv("NNPARITY_EXTRA_NETWORKS", str(path))
    result = pytest_session(pytester, "-v", "-k", "tinynet", *(os.path.join(HERE, f"{m}.py") for m in REGISTRY_TESTS))
    out = "\n".join(result.outlines)
    assert result.ret == 0, out[-3000:]
    outcomes = dict(re.findall(r"(parity_tests/\S+\[\S*tinynet\S*\]) (\w+)", out))
    expected = registry_tests(networks.get(str(path)))
    # the entry, start state and step parity in 2 dtypes, first batches, gradcheck, drift, run, metamorphic
    assert len(expected) >= 11, sorted(expected)
    # ... the same tests a documented MNIST network of the generic run gets
    assert {t.replace("tinynet", "NET") for t in expected} == {
        t.replace("mlp1000", "NET") for t in registry_tests(networks.get("mlp1000"))}
    assert set(outcomes) == expected, (sorted(expected - set(outcomes)), sorted(set(outcomes) - expected))
    assert set(outcomes.values()) == {"PASSED"}, outcomes


def test_a_bad_extra_network_is_one_line(pytester, tmp_path, registry, monkeypatch):
    monkeypatch.setenv("NNPARITY_EXTRA_NETWORKS", str(tmp_path / "nowhere.py"))
    result = pytest_session(pytester, "--collect-only", "-q", os.path.join(HERE, "test_registry.py"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR and not "".join(result.outlines).strip()
    assert result.errlines == [
        f"ERROR: NNPARITY_EXTRA_NETWORKS: network file {tmp_path / 'nowhere.py'}: no such file; give the path "
        "of a Python file that defines RECIPE (a scratch.recipe.Recipe), build(recipe, rng, dtype), "
        "loss(recipe), torch_build(recipe) and torch_loss(recipe) (README: Your own network)", ""]


def test_the_wrong_neighbour_is_diagnosed_as_its_own_error(tmp_path, registry, capsys):
    write(tmp_path, "tinynet", TINY)
    wrong = write(tmp_path, "tinynet_wrong", WRONG, right="tinynet")
    assert main(["check", str(wrong), "--steps", "2"]) == 1
    out = capsys.readouterr().out
    assert "FIRST DIVERGENCE: step 1, layer fc1, upstream gradient dout/fc1" in out
    assert "VERDICT: act backward" in out and "OWN error" in out


@pytest.mark.parametrize("text,spec,expected", [
    (None, "nowhere/net.py", "network file nowhere/net.py: no such file; give the path of a Python file that "
                             "defines RECIPE"),
    ("x = 1\n", "net.py", "defines no RECIPE; add RECIPE = Recipe("),
    ("RECIPE = 3\n", "net.py", "RECIPE is of type int, not a scratch.recipe.Recipe"),
    ("import numpy\n\ndef f():\n    return undefined_name\n\nf()\n", "net.py",
     "executing it raised NameError: name 'undefined_name' is not defined at {dir}/net.py line {line:return u}: "
     "return undefined_name; fix it there"),
    ("def f(:\n", "net.py", "SyntaxError: "),
    ("import no_such_module_here\n", "net.py", "ModuleNotFoundError: No module named 'no_such_module_here' at "
                                               "{dir}/net.py line {line:import no_such}: import no_such_module_here"),
    (TINY.replace("def build", "def _build"), "net.py", "build is missing; the contract is RECIPE"),
    (TINY.replace("def torch_build", "def _b").replace("def torch_loss", "def _l"), "net.py",
     "has no torch mirror: define torch_build(recipe) and torch_loss(recipe)"),
    (TINY.replace("{name}", "mlp1000"), "net.py", "network name 'mlp1000' is a documented network's"),
    (TINY.replace("return nn.Sequential", "return nnn.Sequential"), "net.py",
     "calling torch_build(RECIPE) raised NameError: name 'nnn' is not defined at {dir}/net.py line {line:nnn.}: "
     "return nnn.Sequential("),
    (TINY.replace("model = Sequential", "model = 1 / 0; Sequential"), "net.py",
     "calling build(RECIPE, rng, float64) raised ZeroDivisionError: division by zero at {dir}/net.py line {line:1 / 0}"),
    (TINY.replace("return model", "return None"), "net.py", "build returned a NoneType, not a scratch module"),
    (TINY.replace("fc2=nn.Linear", "out=nn.Linear"), "net.py",
     "the two sides do not line up: state names differ between the scratch model and the torch model: "
     "scratch: ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias'] torch: ['fc1.weight', 'fc1.bias', "
     "'out.weight', 'out.bias']"),
    (TINY.replace("nn.Linear(784, 8)", "nn.Linear(784, 9)"), "net.py",
     "fc1.weight: scratch has shape (8, 784) dtype float64, torch has shape (9, 784)"),
    (TINY, "net.py:NOPE", "has no attribute 'NOPE'; it has"),
    (None, "no_such_pkg_xyz:NET", "no module named 'no_such_pkg_xyz'; run from the folder that holds it"),
    (None, "os:", "expected module:attr (both parts)"),
    (None, "mlp1001", "unknown network 'mlp1001'; known networks: mlp1000"),
])
def test_a_bad_network_is_one_line_naming_the_problem_and_the_fix(tmp_path, registry, capsys, text, spec,
                                                                  expected):
    if text is not None:
        text = text.replace("{name}", "tinynet").replace("{batch}", "8").replace("{train}", "64")
        (tmp_path / "net.py").write_text(text)
        spec = f"{tmp_path}/{spec}"
        # "{line:MARK}": the number of the file's first line containing MARK
        expected = re.sub(r"\{line:(.+?)\}", lambda m: str(next(
            i for i, line in enumerate(text.splitlines(), 1) if m.group(1) in line)), expected)
    with pytest.raises(SystemExit) as e:
        main(["check", spec, "--steps", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected.replace("{dir}", str(tmp_path)) in err, err
