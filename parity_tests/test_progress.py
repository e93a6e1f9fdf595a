"""The long phases of ``nnparity run`` before training (step parity, the drift envelope)
show a bar on a terminal and, on a terminal or not, one line each with their duration."""

import re

from nnparity.training import drift

from nnparity.training import networks
from nnparity.diagnosis.check import run_check
from nnparity.cli.main import main
from nnparity.core.progress import parity_bar

TINY = ["--epochs", "1", "--train-size", "64", "--test-size", "32", "--parity-steps", "2", "--envelope-steps", "2"]


def test_off_a_terminal_each_phase_prints_one_line_with_its_duration(tmp_path, capsys):
    # no --no-progress: off a terminal (pytest's captured stderr is not one) the bars stay off by themselves
    assert main(["run", "mlp16", "--out", str(tmp_path), *TINY]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^step parity: 2 steps in \d+\.\d s$", out, re.M), out
    assert re.search(r"^drift envelope: 2 steps in \d+\.\d s$", out, re.M), out
    assert "step parity" not in err and "drift envelope" not in err   # no bar written off a terminal


def test_the_parity_bar_follows_each_step_of_a_run_started_inside_it(mnist, capsys):
    with parity_bar("step parity", 3, progress=True) as bar:
        run_check("mlp16", 3, "float64", 0, mnist)
    assert bar.n == 3 and "step parity" in capsys.readouterr().err
    with parity_bar("step parity", 3, progress=True) as outer:
        pass
    run_check("mlp16", 2, "float64", 0, mnist)   # outside the block: the bar is left alone
    assert outer.n == 0


def test_the_envelope_bar_shows_when_asked_and_not_with_no_progress(mnist, capsys):
    net = networks.get("mlp16")
    recipe = net.recipe.replace(train_size=64, test_size=32)
    ds = networks.prepare(net, recipe, mnist, "float32", 0)
    assert drift.measure_envelope(net, recipe, ds, 0, 2, progress=True)["steps"] == 2
    assert "drift envelope" in capsys.readouterr().err
    drift.measure_envelope(net, recipe, ds, 0, 2, progress=False)
    assert "drift envelope" not in capsys.readouterr().err


def test_gradcheck_and_selftest_show_a_bar_only_when_asked(mnist, capsys):
    from nnparity.selftest import bugs
    from nnparity.diagnosis import gradcheck
    from nnparity.selftest import kill_matrix as selftest

    ds = networks.prepare(networks.get("mlp16"), networks.get("mlp16").recipe, mnist, "float64", 0)
    gradcheck.gradcheck_network("mlp16", samples=2, batch_size=4, ds=ds, progress=True)
    assert "mlp16 gradcheck" in capsys.readouterr().err
    gradcheck.gradcheck_network("mlp16", samples=2, batch_size=4, ds=ds)   # the library default: no bar
    assert capsys.readouterr().err == ""
    one = [bugs.get_bug("sgd-wrong-sign")]
    selftest.run_selftest(["toy221"], raw=mnist, bugs=one, progress=True)
    assert "selftest" in capsys.readouterr().err
    selftest.run_selftest(["toy221"], raw=mnist, bugs=one)
    assert capsys.readouterr().err == ""
