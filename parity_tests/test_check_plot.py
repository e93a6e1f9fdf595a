"""``nnparity check NET --plot DIR``: on a mismatch, heatmaps of the failing tensors at the first
failing step (``reporting.heatmap.draw_divergence``, the same drawing as the API's ``plot=``);
a DIR that cannot hold them is one line and exit 2, before any work."""

import json
import os

import numpy as np
import pytest

from nnparity.cli.main import main

BUG = ["--inject", "relu-straight-through"]   # mlp1000: the ReLU backward passes every gradient


def test_a_catalogued_bug_draws_the_first_divergence(tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["check", "mlp1000", "--steps", "1", "--json", "--plot", str(out)] + BUG) == 1
    d = json.loads(capsys.readouterr().out)
    # the first divergence is also the culprit's worst tensor: one PNG, named after the step and tensor
    assert d["plots"] == [str(out / "mlp1000_float64_step1_dout_U.png")]
    with open(d["plots"][0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_text_output_names_the_heatmap(tmp_path, capsys):
    assert main(["check", "mlp1000", "--steps", "1", "--plot", str(tmp_path)] + BUG) == 1
    assert f"heatmap of scratch - reference: {tmp_path / 'mlp1000_float64_step1_dout_U.png'}" \
        in capsys.readouterr().out


def test_a_passing_check_draws_nothing(tmp_path, capsys):
    assert main(["check", "toy221", "--steps", "1", "--plot", str(tmp_path)]) == 0
    assert os.listdir(tmp_path) == [] and "heatmap" not in capsys.readouterr().out


@pytest.mark.parametrize("make, phrase", [
    (lambda p: p.write_text("x") and p, "that is a file, not a folder"),
    (lambda p: p / "missing" / "deeper", "its parent folder"),
])
def test_a_bad_dir_is_one_line_before_any_work(tmp_path, capsys, make, phrase):
    target = make(tmp_path / "target")
    assert main(["check", "mlp1000", "--steps", "1", "--plot", str(target)] + BUG) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nnparity check: error: --plot ") and phrase in err and "\n" not in err


def test_the_drawing_is_the_apis(tmp_path):
    from nnparity.diagnosis.localize import Diagnosis, Stage
    from nnparity.core.parity import compare, tolerance_for
    from nnparity.reporting.heatmap import draw_divergence

    a, b = np.arange(6.0).reshape(2, 3), np.arange(6.0).reshape(2, 3).T.copy().reshape(2, 3)
    c = compare("grad/fc.weight", a, b, tolerance_for("float64"), step=2)
    d = Diagnosis(2, c, "fc", None, Stage("fc", "backward", "X.backward", [c]), "own", [], None,
                  arrays={"grad/fc.weight": (a, b)})
    assert draw_divergence(str(tmp_path), d, "net", "float64") == [str(tmp_path / "net_float64_step2_grad_fc.weight.png")]
