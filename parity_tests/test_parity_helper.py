"""The parity helper itself: assert_close semantics, checks before values, messages."""

import math

import numpy as np
import pytest

from nnparity.core.parity import ParityError, Tolerance, assert_close, compare

TOL = Tolerance(atol=1e-6, rtol=1e-3)


def test_atol_plus_rtol_boundary():
    b = np.array([1.0, 100.0])
    assert compare("param/w", b + [1e-3 + 0.9e-6, 0.0], b, TOL).passed
    assert not compare("param/w", b + [1e-3 + 1.1e-6, 0.0], b, TOL).passed
    assert compare("param/w", b + [0.0, 0.1], b, TOL).passed  # rtol scales with |b|


def test_worst_element_index_values_and_margin():
    b = np.zeros((3, 4))
    a = b.copy()
    a[2, 1] = 5e-6
    a[0, 3] = 2e-6
    c = compare("grad/fc.weight", b + 1.0 + a, b + 1.0, TOL)
    assert c.index == (2, 1) and c.scratch == pytest.approx(1 + 5e-6) and c.reference == 1.0
    assert c.margin == pytest.approx(5e-6 / (1e-6 + 1e-3))
    assert c.max_abs == pytest.approx(5e-6)


def test_shape_checked_before_values():
    c = compare("out/V", np.zeros((2, 3)), np.zeros((3, 2)), TOL)
    assert not c.passed and "shape mismatch: scratch (2, 3), reference (3, 2)" in c.describe()


def test_dtype_checked_before_values():
    c = compare("out/V", np.zeros(3, np.float64), np.zeros(3, np.float32), TOL)
    assert not c.passed and "dtype mismatch: scratch float64, reference float32" in c.describe()


def test_nan_is_never_close():
    c = compare("loss", np.array(math.nan), np.array(1.0), TOL)
    assert not c.passed and "non-finite" in c.describe()
    assert compare("param/w", np.array([np.inf, 1.0]), np.array([np.inf, 1.0]), TOL).passed


def test_failure_message_names_net_step_tensor_index_values_errors():
    with pytest.raises(ParityError) as e:
        assert_close("grad/V.weight", np.array([[1.0, 2.0], [3.0, 4.5]]), np.array([[1.0, 2.0], [3.0, 4.0]]),
                     net="mlp1000", step=3)
    msg = str(e.value)
    assert msg.startswith("mlp1000 float64 step 3: grad/V.weight (parameter gradient): max abs 0.5 at (1, 1)")
    assert "scratch 4.5" in msg and "reference 4" in msg and "rel 0.125" in msg and "margin" in msg


def test_degenerate_gradient_fails_but_degenerate_parameter_does_not():
    zeros = np.zeros(5)
    assert not compare("grad/b", zeros, zeros, TOL).passed
    assert compare("grad/b", zeros, zeros, TOL, allowed_zero=True).passed
    assert compare("param/b", zeros, zeros, TOL).passed


def test_a_flagged_cell_of_the_relative_error_table_shows_the_failing_element():
    """The relative-error column of a kind leaves out elements whose reference is 0, so a
    tensor failing at such an element used to show a tiny worst relative error flagged "!"
    (1.12e-11!). The flagged cell now shows the relative error at the failing element."""
    from nnparity.core.parity import Trace, compare_records, tolerance_for

    tol = tolerance_for("float64")
    scratch = {"dout/fc": np.array([1.0, 2.0, 0.05]), "grad/fc.weight": np.array([1.0, 2.0])}
    reference = {"dout/fc": np.array([1.0, 2.0 + 2e-11, 0.0]), "grad/fc.weight": np.array([1.0, 2.0])}
    trace = Trace("net", "float64", tol)
    trace.steps.append(compare_records(scratch, reference, tol, 1))
    (failing,) = trace.failures
    assert failing.max_rel < 1e-10 and failing.reference == 0  # what the column leaves out
    row = trace.table(metric="max_rel").splitlines()[1]
    assert "inf!" in row and f"{failing.max_rel:.3g}!" not in row, row
