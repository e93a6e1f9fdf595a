"""linear10: recipe, initialisation, subsets, step parity of the correct variant over 50
real MNIST steps in float64 and float32, and the as-documented variant's slip: its parity
check fails, and the message names the ReLU's input gradient at the first step."""

import json

import numpy as np
import pytest

from nnparity import networks
from nnparity.cli import main
from nnparity.networks import get, make_sides, run_parity
from scratch.nets import linear10

AS_DOCUMENTED = linear10.RECIPE.replace(variant="as-documented")


def test_recipe_is_the_documented_one():
    r = linear10.RECIPE
    assert (r.lr, r.batch_size, r.epochs, r.reduction, r.loss) == (0.01, 32, 200, "mean", "cross_entropy")
    assert (r.train_size, r.test_size, r.variant) == (30_000, 5_000, "correct")
    assert get("linear10").variants == ("correct", "as-documented")


def test_names_and_init():
    scratch, ref = make_sides(get("linear10"), linear10.RECIPE, "float64", seed=0)
    state = scratch.model.state_dict()
    assert {k: v.shape for k, v in state.items()} == {"fc.weight": (10, 784), "fc.bias": (10,)}
    assert list(ref.model.state_dict()) == ["fc.weight", "fc.bias"]
    # N(0, 0.1^2) scaled to unit L2 norm, weights and bias separately
    assert np.linalg.norm(state["fc.weight"]) == pytest.approx(1.0, abs=1e-12)
    assert np.linalg.norm(state["fc.bias"]) == pytest.approx(1.0, abs=1e-12)


def test_variants_build_the_documented_pieces():
    model = linear10.build(AS_DOCUMENTED)
    assert type(model.relu) is linear10.DocumentedReLU
    assert isinstance(linear10.loss(AS_DOCUMENTED), linear10.DocumentedSoftmaxCrossEntropy)
    assert type(linear10.build(linear10.RECIPE).relu).__name__ == "ReLU"
    with pytest.raises(ValueError, match="variant must be one of"):
        linear10.build(linear10.RECIPE.replace(variant="fixed"))


def test_seeded_half_subsets(mnist):
    net, r = get("linear10"), linear10.RECIPE
    a = networks.prepare(net, r, mnist, "float32", seed=0)
    b = networks.prepare(net, r, mnist, "float32", seed=0)
    c = networks.prepare(net, r, mnist, "float32", seed=1)
    assert a.x_train.shape == (30_000, 784) and a.x_test.shape == (5_000, 784)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.y_train, c.y_train)
    # a random half: every class present in about its share
    counts = np.bincount(a.y_train, minlength=10) / np.bincount(mnist.train_labels, minlength=10)
    assert np.all(np.abs(counts - 0.5) < 0.03)


def test_dead_units():
    w = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])
    b = np.array([0.0, 0.0, 0.5])
    x = np.array([[0.2, 0.1], [0.4, 0.9]])  # unit 1: always -x0 < 0; unit 2: 0.5 - x1 > 0 once
    np.testing.assert_array_equal(linear10.dead_units(w, b, x), [1])


@pytest.mark.slow
def test_step_parity_50_steps(mnist, dtype):
    trace = run_parity("linear10", steps=50, dtype=dtype, raw=mnist)
    assert len(trace.steps) == 50
    assert {"out/fc", "out/relu", "loss", "dout/relu", "dout/fc", "grad/fc.weight", "param/fc.bias"} <= \
        {c.name for c in trace.steps[-1]}
    assert trace.ok, trace.message()


def test_as_documented_fails_parity_at_the_relu_input_gradient(mnist, dtype):
    """The two facts: the as-documented variant fails the parity check, and the first
    failure is the ReLU's input gradient (dout/fc) at step 1, named so in the message;
    everything computed before it (forward, loss, the ReLU's upstream gradient) passes."""
    trace = run_parity("linear10", steps=3, dtype=dtype, raw=mnist, recipe=AS_DOCUMENTED)
    assert not trace.ok
    first = trace.first_failure
    assert (first.step, first.name, first.quantity) == (1, "dout/fc", "upstream gradient")
    step1 = {c.name: c.passed for c in trace.steps[0]}
    assert step1["out/fc"] and step1["out/relu"] and step1["loss"] and step1["dout/relu"]
    msg = trace.message()
    assert msg.startswith(f"linear10 {dtype} step 1: dout/fc (upstream gradient; dL/d(out/fc) = "
                          "the input gradient of layer 'relu' (DocumentedReLU)): max abs")
    # where the ReLU input was negative, autograd passes 0 and the document passes the gradient
    assert first.reference == 0 and first.scratch != 0


def test_correct_variant_passes_the_same_check(mnist):
    assert run_parity("linear10", steps=3, dtype="float64", raw=mnist).ok


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    status = main(["run", "linear10", "--out", str(out), "--epochs", "2", "--seeds", "2", "--train-size", "640",
                   "--test-size", "320", "--parity-steps", "3", "--no-progress"])
    return status, out / "linear10"


def test_run_trains_both_variants_and_keeps_going_after_the_expected_failure(quick_run):
    status, out = quick_run
    assert status == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "complete" and m["variants"] == ["correct", "as-documented"] and m["seeds"] == [0, 1]
    runs = {(r["variant"], r["seed"]): r for r in m["runs"]}
    assert set(runs) == {(v, s) for v in ("correct", "as-documented") for s in (0, 1)}
    for (variant, seed), r in runs.items():
        assert r["status"] == "complete" and len(r["epochs"]) == 2
        assert r["parity"]["ok"] == (variant == "correct")
        for e in r["epochs"]:
            for side in ("scratch", "torch"):
                assert {"train_loss", "train_error", "test_loss", "test_accuracy", "dead_units"} <= set(e[side])
    doc = runs[("as-documented", 0)]
    assert doc["parity_first_failure"]["name"] == "dout/fc" and doc["parity_first_failure"]["step"] == 1
    # the as-documented run's torch side is autograd from the same start: the correct run's, bit for bit
    assert doc["epochs"][-1]["torch"] == runs[("correct", 0)]["epochs"][-1]["torch"] | \
        {"seconds": doc["epochs"][-1]["torch"]["seconds"]}
    assert set(m["summary"]) == {"correct", "as-documented"}


def test_run_report_and_plots(quick_run):
    _, out = quick_run
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "metrics.json", "per_batch.npz", "accuracy_variants.png", "dead_units.png",
            "epoch_loss.png", "epoch_accuracy.png", "epoch_error.png", "batch_loss.png", "batch_accuracy.png",
            "batch_error.png", "drift.png"} <= names
    assert not [n for n in names if n.startswith(".")]
    text = (out / "report.md").read_text()
    assert "FAILS, as expected" in text and "dout/fc (upstream gradient; dL/d(out/fc) = the input gradient" in text
    assert "| as-documented | scratch (document's ReLU backward) |" in text
    with np.load(out / "per_batch.npz", allow_pickle=False) as z:
        assert z["correct/scratch/train/loss"].shape == (2 * 20,)  # 640 / 32 batches x 2 epochs
        assert z["as-documented/torch/val/accuracy"].shape == (2 * 10,)


def test_single_variant_run(tmp_path):
    status = main(["run", "linear10", "--variant", "as-documented", "--seeds", "1", "--out", str(tmp_path),
                   "--epochs", "1", "--train-size", "320", "--test-size", "160", "--parity-steps", "2",
                   "--no-progress"])
    assert status == 0
    m = json.loads((tmp_path / "linear10" / "metrics.json").read_text())
    assert [r["variant"] for r in m["runs"]] == ["as-documented"] and not m["runs"][0]["parity"]["ok"]
