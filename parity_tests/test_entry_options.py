"""The ``run`` options of one network only come from the registry entries
(``Network.run_options``): the CLI adds what an entry declares, refuses it for any
other network, and ``run.run_recipe`` turns it into the recipe."""

import dataclasses

import pytest

from nnparity.cli import main as cli

from nnparity.training import networks
from nnparity.cli.run import run_recipe


@pytest.fixture
def extra_entry(monkeypatch):
    """A temporary entry sweeping seeds (as linear10 does) with an option of its own."""
    entry = dataclasses.replace(networks.get("mlp16"), name="mlp16x", sweep=("seeds",), seeds=3,
                                options=(networks.Option("--gamma", "positive_int", field="batch_size",
                                                         help="a batch size under another name"),))
    monkeypatch.setitem(networks.NETWORKS, "mlp16x", entry)
    return entry


def problem(parser, *argv):
    return cli._option_problem(parser, parser.parse_args(list(argv)))


def test_a_declared_option_is_added_and_refused_for_other_networks(extra_entry):
    parser = cli.build_parser()
    args = parser.parse_args(["run", "mlp16x", "--seeds", "2", "--gamma", "4"])
    assert (args.seeds, args.gamma) == (2, 4)
    assert problem(parser, "run", "mlp16", "--gamma", "3") == "--gamma is an option of mlp16x only, not of mlp16"
    # an option implied by two entries' sweeps is one option, named after both
    assert problem(parser, "run", "mlp16", "--seeds", "3") == "--seeds is an option of linear10, mlp16x only, not of mlp16"
    assert problem(parser, "run", "linear10", "--seeds", "3") is None


def test_without_the_entry_the_option_does_not_exist():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "mlp16", "--gamma", "3"])


def test_lr_takes_several_values_only_for_an_entry_that_sweeps_them():
    parser = cli.build_parser()
    assert problem(parser, "run", "toy221", "--lr", "0.1", "0.2") is None
    assert problem(parser, "run", "mlp16", "--lr", "0.1", "0.2") == "--lr takes one learning rate for mlp16, got 2"


def test_options_set_the_recipe_fields_they_name():
    toy = networks.get("toy221")
    r = run_recipe(toy, lr=[0.3, 0.7], dtype="float32", options={"steps": 5, "biases": (0.35, 0.6),
                                                                 "freeze_biases": True})
    assert (r.epochs, r.lrs, r.lr, r.biases, r.freeze_biases, r.dtype) == (5, (0.3, 0.7), 0.3, (0.35, 0.6), True,
                                                                          "float32")
    assert r.init.endswith("b1 = 0.35, b2 = 0.6 (frozen)")
    lin = networks.get("linear10")
    r = run_recipe(lin, lr=[0.05], dtype="float32", options={"seeds": 2, "variant": "correct"})
    # its recipe records no dtype; --variant and --seeds are read by the sweep, not the recipe
    assert (r.lr, r.dtype, r.variant) == (0.05, lin.recipe.dtype, lin.recipe.variant)
