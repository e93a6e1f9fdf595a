"""A saturated or dead network is not a derivation bug.

A gradient that is zero on both sides (degenerate) proves nothing: it is never a
first divergence and never makes a layer the culprit; a run whose training no
longer changes its weights ends ``collapsed`` (exit 4), not ``parity-failed``; a
NaN or inf anywhere is named at the step it appears; an lr the run's dtype cannot
hold is refused; a drift envelope with NaN in it never reads "inside".
"""

import json
import math

import numpy as np
import pytest

from nnparity.core import data as mnist
from nnparity.training import drift
from nnparity.diagnosis.check import EXIT_INCONCLUSIVE, run_check
from nnparity.cli.main import main
from nnparity.diagnosis.localize import Stage, locate
from nnparity.training.networks import get, prepare
from nnparity.core.parity import Tolerance, Trace, compare, compare_records
from nnparity.training.train import Diverged, Training, collapsed

TOL = Tolerance(atol=1e-6, rtol=1e-3)
TINY = ["--train-size", "500", "--test-size", "200", "--no-progress", "--envelope-steps", "0"]


@pytest.fixture(scope="module")
def raw():
    return mnist.load_mnist()


def _recipe_ds(raw, name, **changes):
    net = get(name)
    recipe = net.recipe.replace(train_size=500, test_size=200, **changes)
    return recipe, prepare(net, recipe, raw, recipe.dtype, 0)


def test_a_degenerate_comparison_is_its_own_status_and_never_a_first_divergence():
    zeros = np.zeros(3)
    deg = compare("grad/w", zeros, zeros, TOL, step=1)
    assert deg.status == "degenerate" and not deg.mismatch and not deg.passed
    assert compare("grad/w", zeros, zeros, TOL, allowed_zero=True).status == "pass"
    wrong = compare("grad/w", np.ones(3), zeros, TOL, step=2)
    assert wrong.status == "mismatch"

    trace = Trace("net", "float64", TOL, steps=[[compare("param/w", np.ones(3), np.ones(3), TOL, step=1), deg]])
    assert trace.status == "degenerate" and not trace.ok
    assert trace.first_failure is None and trace.failures == []
    assert "INCONCLUSIVE" in trace.message() and "grad/w" in trace.message()
    trace.steps.append([wrong])
    assert trace.status == "mismatch" and trace.first_failure is wrong  # the real one, not the zero one


def test_a_stage_whose_only_off_comparison_is_degenerate_is_not_off():
    zeros = np.zeros(4)
    vanished = Stage("sigmoid", "backward", "Sigmoid.backward", [compare("dout/fc3", zeros, zeros, TOL)])
    assert not vanished.off
    assert locate([vanished], 0) == (None, "inherited")  # no culprit
    wrong = Stage("relu", "backward", "ReLU.backward", [compare("dout/fc", np.ones(4), zeros, TOL)])
    assert wrong.off and locate([wrong, vanished], 1)[0] is wrong


def test_a_saturated_sigmoid_is_inconclusive_and_blames_no_layer(raw):
    """mlp16 at lr 1e6: after step 1 every sigmoid output is 0 or 1 (pre-activations of
    order 1e4), so s(1 - s) = 0 and every gradient below it is 0 on both sides."""
    recipe, ds = _recipe_ds(raw, "mlp16", lr=1e6)
    r = run_check("mlp16", 4, "float64", 0, recipe=recipe, ds=ds)
    assert r.status == "degenerate" and r.diagnosis is None and r.exit_status == EXIT_INCONCLUSIVE
    assert r.trace.failures == []
    assert r.vanished is not None and "sigmoid" in r.vanished.cause and "saturated" in r.vanished.cause
    assert "grad/fc3.weight" in r.vanished.names
    text = r.render()
    assert "INCONCLUSIVE" in text and "CULPRIT" not in text and "FIRST DIVERGENCE" not in text
    assert "parity cannot say more" in text and "exactly zero" in text
    assert json.loads(r.to_json())["status"] == "degenerate"


def test_dead_relu_units_are_said_in_words(raw):
    recipe, ds = _recipe_ds(raw, "linear10", lr=1e6, variant="correct")
    r = run_check("linear10", 8, "float64", 0, recipe=recipe, ds=ds)
    assert r.status == "degenerate" and r.diagnosis is None
    assert r.vanished.cause.startswith("every ReLU unit of relu is dead")
    assert {"grad/fc.weight", "grad/fc.bias"} <= set(r.vanished.names)


def test_collapsed_names_the_tensors_training_no_longer_changes():
    rows = [{"epoch": e, "frozen": f, "scratch": {"test_accuracy": 8.0}, "torch": {"test_accuracy": 8.0}}
            for e, f in ((1, []), (2, ["param/fc.weight"]), (3, ["param/fc.weight"]))]
    why = collapsed(rows)
    assert "fc.weight" in why and "epochs 2-3" in why and "8.00% | 8.00%" in why
    assert collapsed(rows[:1]) is None and collapsed([]) is None


def test_a_saturated_run_ends_collapsed_not_parity_failed(tmp_path, capsys):
    status = main(["run", "mlp16", "--lr", "1e6", "--epochs", "2", "--out", str(tmp_path), *TINY])
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "mlp16" / "metrics.json").read_text())
    assert status == 4 and m["status"] == "collapsed", m.get("status_detail")
    assert m["parity"]["status"] == "degenerate" and "saturated" in m["parity"]["vanished"]["cause"]
    assert "fc3.weight" in m["status_detail"] and len(m["epochs"]) == 2
    assert "PARITY FAILED" not in out and "COLLAPSED" in out
    assert "**collapsed**" in (tmp_path / "mlp16" / "report.md").read_text()


def test_linear10_dead_run_ends_collapsed(tmp_path):
    status = main(["run", "linear10", "--lr", "1e6", "--epochs", "2", "--variant", "correct", "--seeds", "1",
                   "--parity-steps", "0", "--out", str(tmp_path), *TINY])
    m = json.loads((tmp_path / "linear10" / "metrics.json").read_text())
    assert status == 4 and m["status"] == "collapsed"


def test_nonfinite_is_caught_at_the_step_it_appears(raw):
    """A weight that overflows in step 3's update is reported at step 3, although that
    step's loss (computed before the update) is finite on both sides: every gradient and
    parameter of both sides is checked every step, not only the loss. Constructed: the
    scratch optimizer's update at step 3 leaves one element of fc3.weight infinite."""
    recipe, ds = _recipe_ds(raw, "mlp16", epochs=1)
    training = Training(get("mlp16"), recipe, ds, "float64", 0)
    opt = training.scratch.optimizer
    update = opt.step

    def overflowing_update():
        update()
        if training.step_count == 3:
            opt.params["fc3.weight"].data[1, 2] = np.inf

    opt.step = overflowing_update
    with pytest.raises(Diverged) as e:
        training.run_epoch(1, progress=False)
    assert e.value.step == 3, str(e.value)
    assert "scratch side non-finite param/fc3.weight (1 of 160 elements, first inf at (1, 2))" in str(e.value)
    assert "torch side" not in str(e.value)  # the torch side is still finite, and not blamed


def test_an_lr_beyond_float32_ends_diverged_not_in_a_traceback(tmp_path):
    """float64 run: the drift envelope's float32 trajectory cannot take lr 1e300 (torch
    refuses it: "value cannot be converted to type float without overflow"); the envelope
    is left out, said so, and the run ends diverged."""
    status = main(["run", "mlp16", "--lr", "1e300", "--epochs", "1", "--parity-steps", "0", "--out", str(tmp_path),
                   *TINY[:-2], "--envelope-steps", "5"])
    m = json.loads((tmp_path / "mlp16.incomplete" / "metrics.json").read_text())  # diverged: not OUT/NET
    assert status == 3 and m["status"] == "diverged"
    assert "larger than float32 can hold" in m["drift"]["not_measured"]


def test_overflow_on_both_sides_is_inconclusive_not_a_mismatch():
    """inf on one side, NaN on the other: both overflowed, which proves nothing about the
    code; what the step computes after it is non-finite on one side or both. A value
    non-finite on one side only, with nothing overflowed before it, is a real mismatch."""
    tol = Tolerance(atol=1e-10, rtol=1e-9)
    over = compare("out/fc2", np.array([-np.inf, 1.0]), np.array([np.nan, 1.0]), tol)
    assert over.status == "degenerate" and over.overflow and not over.mismatch
    assert compare("out/fc2", np.array([np.inf, 1.0]), np.array([np.inf, 1.0]), tol).status == "pass"
    assert compare("out/fc2", np.array([np.inf, 1.0]), np.array([2.0, 1.0]), tol).status == "mismatch"
    scratch = {"out/fc2": np.array([-np.inf, 1.0]), "out/relu2": np.array([0.0, 1.0])}
    torch_ = {"out/fc2": np.array([np.nan, 1.0]), "out/relu2": np.array([np.nan, 1.0])}
    comps = compare_records(scratch, torch_, tol, step=2)
    assert [c.status for c in comps] == ["degenerate", "degenerate"] and "after out/fc2" in comps[1].overflow
    alone = compare_records({"out/relu2": scratch["out/relu2"]}, {"out/relu2": torch_["out/relu2"]}, tol, step=2)
    assert alone[0].status == "mismatch"


def test_a_run_that_overflows_during_parity_ends_diverged_not_parity_failed(tmp_path, capsys):
    status = main(["run", "mlp16", "--lr", "1e300", "--epochs", "1", "--parity-steps", "3",
                   "--out", str(tmp_path), *TINY])
    m = json.loads((tmp_path / "mlp16.incomplete" / "metrics.json").read_text())
    assert status == 3 and m["status"] == "diverged", m.get("status_detail")
    assert "CULPRIT" not in capsys.readouterr().out


def test_a_float32_run_refuses_an_lr_float32_cannot_hold(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "cnn18k", "--lr", "1e39", "--out", str(tmp_path), *TINY])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--lr 1e+39 is larger than a float32 run can hold" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "cnn18k").exists()


def test_a_nan_band_never_reads_inside_the_envelope():
    nan = math.nan
    envelope = {"steps": 4, "impl64": [1e-16] * 4, "chaos32": [1e-7, 2e-7, nan, nan],
                "band64": drift.band([1e-7, 2e-7, nan, nan], "float64"), "seconds": 0.0}
    d = drift.assess(envelope, [(1, 1e-16), (2, 1e-16), (3, 1e-16), (4, 1e-16)], [], 4, "float64")
    text = drift.verdict(d)
    assert "inside the rounding envelope over" not in text and "cannot be judged from step 3" in text
    d = drift.assess({**envelope, "chaos32": [1e-7] * 4, "band64": drift.band([1e-7] * 4, "float64")},
                     [(1, 1e-16), (2, math.inf), (3, nan), (4, nan)], [], 4, "float64")
    assert "cannot be judged from step 2" in drift.verdict(d) and "drift itself is not finite" in drift.verdict(d)


def test_the_report_calls_an_inconclusive_parity_inconclusive_not_fail(tmp_path):
    assert main(["run", "mlp16", "--lr", "1e6", "--epochs", "2", "--parity-steps", "3", "--out", str(tmp_path),
                 *TINY]) == 4
    report = (tmp_path / "mlp16" / "report.md").read_text()
    assert "**INCONCLUSIVE (no mismatch)**" in report and "**FAIL**" not in report
    assert "Inconclusive, not a bug: from step 2" in report and "saturated" in report


def test_a_degenerate_comparison_never_kills_a_bug_in_the_selftest():
    from nnparity.selftest.kill_matrix import _cell

    zeros = np.zeros(3)
    deg = compare("grad/w", zeros, zeros, TOL, step=1)
    assert _cell([deg], bug_applied=True).status == "missed"   # proves nothing: no kill
    assert _cell([deg], bug_applied=False).status == "fail"    # on correct code: a check that cannot see
    assert _cell([compare("grad/w", np.ones(3), zeros, TOL, step=1)], bug_applied=True).status == "killed"
