"""linear10: recipe, initialisation, subsets, step parity of the correct variant over 50
real MNIST steps in float64 and float32, and the as-documented variant's slip: its parity
check fails, and the message names the ReLU's input gradient at the first step."""

import contextlib
import io
import json
import os
import signal
import time

import numpy as np
import pytest

from nnparity.training import networks
from nnparity.selftest.bugs import get_bug
from nnparity.cli.main import main
from nnparity.training.networks import get, make_sides, run_parity
from nnparity.cli import run as runner
from nnparity.training.sides import TorchSide
from nnparity.core.threads import blas_threads
from nnparity.training.train import Training
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
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        status = main(["run", "linear10", "--out", str(out), "--epochs", "2", "--seeds", "2", "--train-size", "640",
                       "--test-size", "320", "--parity-steps", "3", "--no-progress"])
    return status, out / "linear10", log.getvalue()


def test_run_trains_both_variants_and_keeps_going_after_the_expected_failure(quick_run):
    status, out, _ = quick_run
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
    _, out, _ = quick_run
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


def test_failed_parity_carries_the_own_or_inherited_diagnosis(quick_run):
    """The as-documented variant's expected failure is diagnosed: DocumentedReLU.backward,
    fed the reference side's numbers, is off on its own at step 1; in metrics.json, the
    log and the report."""
    _, out, log = quick_run
    m = json.loads((out / "metrics.json").read_text())
    for r in m["runs"]:
        if r["variant"] == "correct":
            assert r["parity"]["ok"] and "diagnosis" not in r["parity"]
            continue
        d = r["parity"]["diagnosis"]
        assert (d["step"], d["quantity"], d["kind"]) == (1, "upstream gradient", "own")
        assert (d["suspect"], d["culprit"], d["culprit_impl"]) == ("relu backward", "relu backward",
                                                                   "DocumentedReLU.backward")
        off = [st["impl"] for st in d["stages"] if st["off"]]
        assert off == ["DocumentedReLU.backward"]  # every other stage is fine alone
    assert log.count("VERDICT: relu backward (DocumentedReLU.backward) is wrong on its own") == 2
    text = (out / "report.md").read_text()
    assert "| relu backward | `DocumentedReLU.backward` |" in text and "OFF (suspect, CULPRIT)" in text
    assert "The divergence at dout/fc is its OWN error." in text


def test_drift_against_the_envelope_in_every_run(quick_run):
    """Each run's drift is recorded per step over the envelope (capped at the run's 2 x 20
    steps) and per epoch, and assessed: the correct variant stays inside the rounding
    envelope, the as-documented one (a different derivative) leaves it at step 1. Both
    variants of a seed share the seed's envelope."""
    _, out, log = quick_run
    m = json.loads((out / "metrics.json").read_text())
    runs = {(r["variant"], r["seed"]): r["drift"] for r in m["runs"]}
    for (variant, seed), d in runs.items():
        assert d["envelope_steps"] == 40 and d["steps_per_epoch"] == 20 and d["dtype"] == "float64"
        assert [s for s, _ in d["step_drift"]] == list(range(1, 41))
        assert [(s, e) for s, e, _ in d["epoch_drift"]] == [(20, 1), (40, 2)]
        assert d["chaos32"] == runs[("correct", seed)]["chaos32"] and d["impl64"] == runs[("correct", seed)]["impl64"]
        assert d["check_command"] == f"nnparity check linear10 --variant {variant} --seed {seed}"
        if variant == "correct":
            # the band is this machine's float32 rounding, measured in the run; the largest
            # drift / band measured (AMD EPYC AVX-512, also with OpenBLAS at Nehalem and torch
            # and NumPy at AVX2) is 0.39 (seed 0) and 0.34 (seed 1)
            assert d["leaves"] is None and max(v for _, v in d["step_drift"]) <= d["band"][-1]
        else:
            assert d["leaves"]["step"] == 1 and d["leaves"]["drift"] > 1e6 * d["leaves"]["band"]
    assert m["summary"]["correct"]["drift"]["leaves_at_step"] == [None, None]
    assert m["summary"]["as-documented"]["drift"]["leaves_at_step"] == [1, 1]
    assert "as-documented seed 0 drift: drift LEAVES the rounding envelope at step 1" in log
    text = (out / "report.md").read_text()
    assert "## Drift between the sides" in text and "![drift](drift.png)" in text
    assert "| as-documented | 1 |" in text and "**step 1**" in text
    assert "**As-documented variant (a different derivative by design, not rounding):**" in text
    assert "**Correct variant:** drift stays inside the rounding envelope for 2 of 2 seeds" in text
    assert (out / "weight_difference.png").stat().st_size > 0


def test_peak_memory_is_recorded(quick_run):
    _, out, _ = quick_run
    m = json.loads((out / "metrics.json").read_text())
    assert isinstance(m["peak_rss_mib"], int) and m["peak_rss_mib"] > 50  # torch alone takes more
    assert f"peak resident memory {m['peak_rss_mib']} MiB" in (out / "report.md").read_text()


def test_envelope_steps_zero_skips_the_envelope(tmp_path):
    status = main(["run", "linear10", "--variant", "correct", "--seeds", "1", "--out", str(tmp_path), "--epochs", "1",
                   "--train-size", "320", "--test-size", "160", "--parity-steps", "0", "--envelope-steps", "0",
                   "--no-progress"])
    assert status == 0
    out = tmp_path / "linear10"
    m = json.loads((out / "metrics.json").read_text())
    assert "drift" not in m["runs"][0] and "drift" not in m["summary"]["correct"]
    assert "## Drift between the sides" not in (out / "report.md").read_text()
    assert (out / "drift.png").exists() and not (out / "weight_difference.png").exists()


def test_lr_and_batch_size_take_effect(tmp_path, mnist):
    """--lr and --batch-size reach both sides: the run's first epoch is the one a Training
    with that lr and batch size gives, which differs from the recipe's."""
    args = ["run", "linear10", "--variant", "correct", "--seeds", "1", "--epochs", "1", "--train-size", "200",
            "--test-size", "100", "--parity-steps", "2", "--envelope-steps", "3", "--no-progress"]
    assert main(args + ["--out", str(tmp_path), "--lr", "0.5", "--batch-size", "50"]) == 0
    out = tmp_path / "linear10"
    m = json.loads((out / "metrics.json").read_text())
    assert (m["recipe"]["lr"], m["recipe"]["batch_size"]) == (0.5, 50)
    run = m["runs"][0]
    assert run["drift"]["steps_per_epoch"] == 4
    with np.load(out / "per_batch.npz", allow_pickle=False) as z:
        assert z["correct/scratch/train/loss"].shape == (4,)  # 200 / 50 batches
        assert z["correct/torch/val/loss"].shape == (2,)     # 100 / 50

    def first_epoch(**change):
        recipe = linear10.RECIPE.replace(epochs=1, train_size=200, test_size=100, **change)
        ds = networks.prepare(get("linear10"), recipe, mnist, "float64", 0)
        row = Training(get("linear10"), recipe, ds, "float64", 0).run_epoch(1, progress=False)
        return [row[side]["train_loss"] for side in ("scratch", "torch")]

    expected = first_epoch(lr=0.5, batch_size=50)
    assert [run["epochs"][0][side]["train_loss"] for side in ("scratch", "torch")] == expected
    assert first_epoch() != expected and first_epoch(lr=0.5) != expected and first_epoch(batch_size=50) != expected


def test_unexpected_failure_of_the_correct_variant_is_diagnosed(tmp_path):
    """A slip in the correct variant (ReLU.backward patched to pass the gradient straight
    through) stops the run with exit 1, the diagnosis naming it in metrics.json and the report."""
    log = io.StringIO()
    with get_bug("relu-straight-through").applied(), contextlib.redirect_stdout(log):
        status = main(["run", "linear10", "--variant", "correct", "--seeds", "1", "--out", str(tmp_path),
                       "--epochs", "1", "--train-size", "320", "--test-size", "160", "--parity-steps", "2",
                       "--no-progress"])
    assert status == 1
    out = tmp_path / "linear10.incomplete"  # a failed run never takes OUT/linear10's place
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "parity-failed" and m["runs"][0]["status"] == "parity-failed"
    d = m["runs"][0]["parity"]["diagnosis"]
    assert (d["culprit_impl"], d["kind"], d["step"]) == ("ReLU.backward", "own", 1)
    assert "relu backward (ReLU.backward) is wrong on its own" in m["status_detail"]
    assert "PARITY FAILED (correct, seed 0) - not training." in log.getvalue()
    assert "VERDICT: relu backward (ReLU.backward) is wrong on its own" in log.getvalue()
    text = (out / "report.md").read_text()
    assert "**parity-failed**" in text and "| relu backward | `ReLU.backward` |" in text


def test_sigterm_between_runs_writes_complete_files_marked_incomplete(tmp_path, monkeypatch):
    """A real SIGTERM while the second seed's envelope is measured (sent to this process
    from inside ``envelope_for``): the first seed's run is kept, the handlers put back."""
    calls = []

    def envelope_for(*args):
        calls.append(1)
        if len(calls) == 2:
            # without the run's handler SIGTERM would end the test session: fail instead
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None), \
                "no SIGTERM handler installed during the run"
            os.kill(os.getpid(), signal.SIGTERM)  # nnparity.core.signals turns it into KeyboardInterrupt
            time.sleep(5)
            raise AssertionError("SIGTERM did not interrupt the run")
        return original(*args)

    original = runner.envelope_for
    monkeypatch.setattr(runner, "envelope_for", envelope_for)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = main(["run", "linear10", "--variant", "correct", "--seeds", "2", "--out", str(tmp_path), "--epochs", "1",
                   "--train-size", "320", "--test-size", "160", "--parity-steps", "2", "--envelope-steps", "5",
                   "--no-progress"])
    assert status == 130
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    out = tmp_path / "linear10.incomplete"
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "incomplete"
    assert m["status_detail"] == "interrupted (SIGTERM) while measuring the drift envelope of seed 1"
    assert [(r["variant"], r["seed"], r["status"]) for r in m["runs"]] == [("correct", 0, "complete")]
    text = (out / "report.md").read_text()
    assert "**incomplete** - interrupted (SIGTERM) while measuring" in text and "## Drift between the sides" in text
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_sigint_during_training_leaves_complete_files_marked_incomplete(tmp_path, cli_process):
    """Ctrl-C in the middle of the first run's training (SIGTERM takes the same path, see above)."""
    sig = signal.SIGINT
    proc = cli_process.popen(["run", "linear10", "--out", str(tmp_path), "--epochs", "200", "--seeds", "2",
                              "--train-size", "640", "--test-size", "320", "--parity-steps", "2", "--no-progress"])
    for line in proc.stdout:  # wait for the first finished epoch
        if "correct seed 0 epoch   1/200" in line:
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    folder = tmp_path / "linear10.incomplete"
    m = json.loads((folder / "metrics.json").read_text())
    name = signal.Signals(sig).name
    assert m["status"] == "incomplete"
    assert m["status_detail"].startswith(f"interrupted: correct, seed 0, interrupted ({name}) during epoch ")
    # the seed's second variant follows the first step by step (Training.follow): interrupted with it
    assert [(r["variant"], r["seed"], r["status"]) for r in m["runs"]] == [("correct", 0, "incomplete"),
                                                                          ("as-documented", 0, "incomplete")]
    r = m["runs"][0]
    assert len(r["epochs"]) >= 1 and len(r["epochs"]) - 1 <= len(m["runs"][1]["epochs"]) <= len(r["epochs"])
    assert r["drift"]["epoch_drift"] and r["drift"]["leaves"] is None  # the epochs done, assessed
    assert "peak_rss_mib" in m
    text = (folder / "report.md").read_text()
    assert "**incomplete**" in text and "## Drift between the sides" in text
    for png in ("drift.png", "accuracy_variants.png", "epoch_loss.png"):
        assert (folder / png).stat().st_size > 0
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not leftovers


def test_single_variant_run(tmp_path):
    status = main(["run", "linear10", "--variant", "as-documented", "--seeds", "1", "--out", str(tmp_path),
                   "--epochs", "1", "--train-size", "320", "--test-size", "160", "--parity-steps", "2",
                   "--no-progress"])
    assert status == 0
    m = json.loads((tmp_path / "linear10" / "metrics.json").read_text())
    assert [r["variant"] for r in m["runs"]] == ["as-documented"] and not m["runs"][0]["parity"]["ok"]


def _counting_torch_steps(monkeypatch) -> list:
    """Count every ``TorchSide.step`` call from now on (the list's length)."""
    calls, step = [], TorchSide.step

    def counted(self, *args, **kwargs):
        calls.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(TorchSide, "step", counted)
    return calls


def _torch_alone(mnist, recipe, seed: int) -> list:
    """The torch side trained on its own, as ``Training`` steps it (the same batches, one
    BLAS thread while stepping): per epoch the run's torch figures, computed here."""
    net = get("linear10")
    ds = networks.prepare(net, recipe, mnist, "float64", seed)
    _, ref = make_sides(net, recipe, "float64", seed)
    rows = []
    for epoch in range(1, recipe.epochs + 1):
        loss, correct, n = 0.0, 0, 0
        with blas_threads(1):
            for x, y in networks.training_batches(ds, recipe, seed, epoch):
                r = ref.step(x, y)
                loss, correct, n = loss + r.loss * r.n, correct + r.correct, n + r.n
        test_loss, test_accuracy = ref.evaluate(ds.x_test, ds.y_test)
        state = ref.state()
        rows.append({"train_loss": loss / n, "train_error": 100.0 * (1 - correct / n), "test_loss": test_loss,
                     "test_accuracy": test_accuracy,
                     "dead_units": len(linear10.dead_units(state["param/fc.weight"], state["param/fc.bias"],
                                                           ds.x_train))})
    return rows


def test_the_torch_side_is_trained_once_per_seed(tmp_path, monkeypatch, mnist):
    """Both variants' torch sides are the same computation: the run trains it once per
    seed (2 seeds x 2 epochs x 10 batches, not twice that), and both variants report the
    figures of a torch side trained on its own, bit for bit. (``--sequential``: the torch
    steps are counted in this process; a concurrent run takes them in its worker.)"""
    calls = _counting_torch_steps(monkeypatch)
    status = main(["run", "linear10", "--seeds", "2", "--epochs", "2", "--train-size", "320", "--test-size", "160",
                   "--parity-steps", "0", "--envelope-steps", "0", "--no-progress", "--out", str(tmp_path),
                   "--sequential"])
    assert status == 0
    assert len(calls) == 2 * 2 * 10
    m = json.loads((tmp_path / "linear10" / "metrics.json").read_text())
    runs = {(r["variant"], r["seed"]): r for r in m["runs"]}
    recipe = linear10.RECIPE.replace(epochs=2, train_size=320, test_size=160)
    for seed in (0, 1):
        alone = _torch_alone(mnist, recipe, seed)
        for variant in ("correct", "as-documented"):
            run = runs[(variant, seed)]
            assert [{k: v for k, v in e["torch"].items() if k != "seconds"} for e in run["epochs"]] == alone
            assert run["final"]["torch"]["dead_units"] == alone[-1]["dead_units"]
        assert runs[("as-documented", seed)]["dead_unit_indices"]["torch"] == \
            runs[("correct", seed)]["dead_unit_indices"]["torch"]


def _without_seconds(rows: list) -> list:
    return [{k: ({kk: vv for kk, vv in v.items() if kk != "seconds"} if isinstance(v, dict) else v)
             for k, v in row.items()} for row in rows]


def test_a_replayed_torch_side_is_the_trained_one(mnist, monkeypatch):
    """The as-documented Training replaying the correct one's torch side gives what it
    gives training its own, bit for bit: every epoch row (both sides' figures, weight
    differences, frozen parameters, per-batch curves) and the drift after each of the
    first steps; its torch side takes no step, and its times are the recorded ones."""
    net = get("linear10")
    correct = linear10.RECIPE.replace(epochs=2, train_size=320, test_size=160)
    documented = correct.replace(variant="as-documented")
    ds = networks.prepare(net, correct, mnist, "float64", 3)

    def trained(recipe, **kwargs):
        t = Training(net, recipe, ds, "float64", 3, per_batch=True, drift_steps=12, **kwargs)
        for epoch in (1, 2):
            t.run_epoch(epoch, progress=False)
        return t

    recorded = trained(correct, record_ref=True)
    live = trained(documented)
    calls = _counting_torch_steps(monkeypatch)
    replayed = trained(documented, replay_ref=recorded.ref_tape)
    assert calls == []
    assert _without_seconds(replayed.history) == _without_seconds(live.history)
    assert replayed.step_drift == live.step_drift and len(live.step_drift) == 12
    assert [row["torch"] for row in replayed.history] == [row["torch"] for row in recorded.history]
    assert replayed.history[-1]["max_abs_weight_diff"] > 0.01  # the slip, against the recorded torch weights


@pytest.mark.parametrize("concurrent", [False, True], ids=["alternating", "torch-worker"])
def test_a_follower_stepped_beside_the_recording_run_is_its_replay_afterwards(mnist, monkeypatch, concurrent):
    """``Training.follow``: the as-documented run takes each step as soon as the correct run has
    paired it (in the time this process waits for the torch worker) and closes each epoch after
    it; every figure is the one replaying the finished tape afterwards gives, bit for bit."""
    net = get("linear10")
    correct = linear10.RECIPE.replace(epochs=2, train_size=320, test_size=160)
    documented = correct.replace(variant="as-documented")
    ds = networks.prepare(net, correct, mnist, "float64", 3)
    make = dict(per_batch=True, drift_steps=12)
    with Training(net, correct, ds, "float64", 3, record_ref=True, concurrent=concurrent, **make) as lead:
        follower = Training(net, documented, ds, "float64", 3, replay_ref=lead.ref_tape, **make)
        lead.follow(follower)
        calls = _counting_torch_steps(monkeypatch) if not concurrent else []
        for epoch in (1, 2):
            lead.run_epoch(epoch, progress=False)
            follower.run_epoch(epoch, progress=False)
    assert len(calls) == (0 if concurrent else 20)  # the lead's torch steps only: 10 a epoch
    afterwards = Training(net, documented, ds, "float64", 3, replay_ref=lead.ref_tape, **make)
    for epoch in (1, 2):
        afterwards.run_epoch(epoch, progress=False)
    assert _without_seconds(follower.history) == _without_seconds(afterwards.history)
    assert follower.step_drift == afterwards.step_drift and len(follower.step_drift) == 12
    assert follower.history[-1]["max_abs_weight_diff"] > 0.01  # the slip, against the recorded torch weights
    with pytest.raises(ValueError, match="a follower replays this run's tape"):
        lead.follow(Training(net, documented, ds, "float64", 3))


def test_a_follower_that_diverges_stops_following_and_the_first_run_goes_on(mnist, monkeypatch):
    """The follower's own failure is its own: raised by its ``run_epoch``; the run it followed
    trains on alone (the next epoch opens no epoch on the follower)."""
    calls, backward = [], linear10.DocumentedReLU.backward

    def nan_at_step_2(self, dy):
        calls.append(1)
        return backward(self, dy) * (np.nan if len(calls) == 2 else 1.0)

    monkeypatch.setattr(linear10.DocumentedReLU, "backward", nan_at_step_2)
    net = get("linear10")
    correct = linear10.RECIPE.replace(epochs=2, train_size=320, test_size=160)
    ds = networks.prepare(net, correct, mnist, "float64", 0)
    lead = Training(net, correct, ds, "float64", 0, record_ref=True)
    follower = Training(net, correct.replace(variant="as-documented"), ds, "float64", 0, replay_ref=lead.ref_tape)
    lead.follow(follower)
    lead.run_epoch(1, progress=False)
    with pytest.raises(runner.Diverged, match="diverged at epoch 1, step 2: scratch side non-finite"):
        follower.run_epoch(1, progress=False)
    assert lead.followers == [] and len(calls) == 2  # let go: the next epoch steps the first run only
    lead.run_epoch(2, progress=False)
    assert len(lead.history) == 2 and len(calls) == 2


def test_a_follower_whose_first_run_diverges_is_run_again_on_its_own(mnist, monkeypatch):
    """``run.train_variants``: the first variant diverging leaves no whole torch side to follow;
    the second is then trained alone, its own torch side included, as without a shared one."""
    net = get("linear10")
    base = linear10.RECIPE.replace(epochs=2, train_size=320, test_size=160)
    ds = networks.prepare(net, base, mnist, "float64", 0)
    kwargs = dict(parity_steps=0, keep_batches=False, progress=False, ds=ds)
    alone = runner.train_one(net, base.replace(variant="as-documented"), mnist, "float64", 0, **kwargs)
    real = Training._close_epoch

    def diverge_correct_at_epoch_2(self):
        if self.recipe.variant == "correct" and self.history:
            raise runner.Diverged("linear10 diverged (made to, for the test)", 2, 20)
        return real(self)
    monkeypatch.setattr(Training, "_close_epoch", diverge_correct_at_epoch_2)
    first, second = runner.train_variants(net, [base, base.replace(variant="as-documented")], mnist, "float64", 0,
                                          **kwargs)
    assert first["status"] == "diverged" and len(first["epochs"]) == 1
    assert second["status"] == "complete"
    assert _without_seconds(second["epochs"]) == _without_seconds(alone["epochs"])


def test_a_replay_refuses_what_was_not_recorded(mnist):
    """A tape replays only the run it recorded: another seed, or a dataset, or more drift
    steps are refused at once; a step beyond its end, an unrecorded state, a different
    evaluation raise ReplayMismatch instead of returning numbers never computed."""
    from nnparity.training.tape import ReplayMismatch

    net = get("linear10")
    recipe = linear10.RECIPE.replace(epochs=1, train_size=96, test_size=64)
    ds = networks.prepare(net, recipe, mnist, "float64", 0)
    recorded = Training(net, recipe, ds, "float64", 0, drift_steps=1, record_ref=True)
    recorded.run_epoch(1, progress=False)
    tape = recorded.ref_tape
    documented = recipe.replace(variant="as-documented")
    with pytest.raises(ValueError, match=r"^linear10: the recorded torch side is not this run's: different seed "
                                         r"\(0 recorded, 1 here\); replay only a tape of the same recipe"):
        Training(net, documented, ds, "float64", 1, replay_ref=tape)
    with pytest.raises(ValueError, match=r"different recipe \(lr differ\)"):
        Training(net, documented.replace(lr=0.5), ds, "float64", 0, replay_ref=tape)
    with pytest.raises(ValueError, match=r"different dataset \(another prepared copy\);"):
        Training(net, documented, networks.prepare(net, recipe, mnist, "float64", 0), "float64", 0, replay_ref=tape)
    with pytest.raises(ValueError, match=r"different drift steps \(1 recorded, 2 here\);"):
        Training(net, documented, ds, "float64", 0, drift_steps=2, replay_ref=tape)
    replay = Training(net, documented, ds, "float64", 0, replay_ref=tape)
    replay.run_epoch(1, progress=False)
    with pytest.raises(ReplayMismatch, match="ends at step 3"):
        replay.run_epoch(2, progress=False)  # 96 images: 3 steps recorded
    side = Training(net, documented, ds, "float64", 0, replay_ref=tape).ref
    side.step(ds.x_train[:32], ds.y_train[:32])
    side.step(ds.x_train[:32], ds.y_train[:32])
    with pytest.raises(ReplayMismatch, match="state after step 2 was not recorded"):
        side.state()
    with pytest.raises(ReplayMismatch, match="evaluation 1: 64 samples in batches of None after step 2"):
        side.evaluate(ds.x_test, ds.y_test)


def test_a_run_that_stops_early_names_the_dead_units_of_its_last_finished_epoch(tmp_path, monkeypatch):
    """A run that stops inside an epoch lists the dead units of both sides where its
    figures stop: after its last finished epoch, not at the step it stopped at. Here the
    as-documented scratch side is made to diverge at its second step (its ReLU backward
    returns NaN), before any epoch finished: both sides' list is the initial weights' (the
    same on both), not the NaN weights' (a NaN pre-activation is never positive: no dead
    unit) on the scratch side and one step further on the torch side."""
    calls, backward = [], linear10.DocumentedReLU.backward

    def nan_at_step_2(self, dy):
        calls.append(1)
        return backward(self, dy) * (np.nan if len(calls) == 2 else 1.0)

    monkeypatch.setattr(linear10.DocumentedReLU, "backward", nan_at_step_2)
    status = main(["run", "linear10", "--seeds", "1", "--epochs", "2", "--train-size", "320", "--test-size", "160",
                   "--parity-steps", "0", "--envelope-steps", "0", "--no-progress", "--out", str(tmp_path)])
    assert status == 3
    m = json.loads((tmp_path / "linear10.incomplete" / "metrics.json").read_text())
    correct, documented = m["runs"]
    assert correct["status"] == "complete"
    assert documented["status"] == "diverged" and documented["epochs"] == []
    assert documented["status_detail"].startswith("linear10 diverged at epoch 1, step 2: scratch side non-finite")
    assert "torch side" not in documented["status_detail"]
    indices = documented["dead_unit_indices"]
    assert indices["scratch"] == indices["torch"] and len(indices["torch"]) == documented["dead_units_at_init"] > 0
