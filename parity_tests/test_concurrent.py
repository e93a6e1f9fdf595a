"""Both sides at once (``Training(..., concurrent=True)``, the torch side in a worker
process) give the numbers of the sides alternating in one process, bit for bit: every
epoch row (both sides' figures, weight differences, frozen parameters, per-batch
curves), the drift after each of the first steps, both sides' final state, a recorded
torch tape, a checkpoint resumed, and the step a run diverges at. A worker that dies is
one error, never a wait, and a Ctrl-C in the middle of a message to it never stops its end."""

import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from nnparity.core import data as mnist
from nnparity.training import checkpoint, worker
from nnparity.training.networks import get, prepare
from nnparity.training.train import Diverged, Training
from nnparity.training.worker import WorkerError

REPO = Path(__file__).resolve().parents[1]
SIZES = {"mlp16": (96, 64), "cnn18k": (48, 32), "linear10": (96, 64)}  # train, test images: a few steps


@pytest.fixture(scope="module")
def raw():
    return mnist.load_mnist()


def _setup(raw, name, dtype, epochs=2):
    net = get(name)
    train, test = SIZES[name]
    recipe = net.recipe.replace(train_size=train, test_size=test, epochs=epochs)
    return net, recipe, prepare(net, recipe, raw, dtype, 0)


def _without_seconds(rows):
    return [{k: ({kk: vv for kk, vv in v.items() if kk != "seconds"} if isinstance(v, dict) else v)
             for k, v in row.items()} for row in rows]


def _trained(net, recipe, ds, dtype, concurrent, **kwargs):
    with Training(net, recipe, ds, dtype, 0, per_batch=True, drift_steps=3, concurrent=concurrent, **kwargs) as t:
        for epoch in range(1, recipe.epochs + 1):
            t.run_epoch(epoch, progress=False)
        chunks = t.evaluate_chunks(recipe.batch_size)
        states = {side.name: {k: np.array(v) for k, v in side.state().items()} for side in t.sides}
    return t, chunks, states


@pytest.mark.parametrize("name,dtype", [("mlp16", "float32"), ("cnn18k", "float32"), ("linear10", "float64")])
def test_concurrent_training_gives_the_sequential_numbers(raw, name, dtype):
    net, recipe, ds = _setup(raw, name, dtype)
    runs = {mode: _trained(net, recipe, ds, dtype, mode, record_ref=name == "linear10") for mode in (False, True)}
    (seq, seq_chunks, seq_states), (con, con_chunks, con_states) = runs[False], runs[True]
    assert getattr(con.ref, "remote", False) and not getattr(seq.ref, "remote", False)
    assert _without_seconds(con.history) == _without_seconds(seq.history)
    assert con.step_drift == seq.step_drift and len(seq.step_drift) == 3
    assert con_chunks == seq_chunks
    for side in ("scratch", "torch"):
        assert con_states[side].keys() == seq_states[side].keys()
        for k, a in seq_states[side].items():
            assert np.array_equal(con_states[side][k], a), (side, k)
    assert con.history[-1]["max_abs_weight_diff"] > 0  # the sides are compared, not one side with itself
    if name == "linear10":  # the torch tape a concurrent run records is the sequential one
        a, b = seq.ref_tape, con.ref_tape
        assert (list(a.loss), list(a.n), list(a.correct), a.checked, a.evaluations) == \
               (list(b.loss), list(b.n), list(b.correct), b.checked, b.evaluations)
        assert a.states.keys() == b.states.keys()
        assert all(np.array_equal(a.states[s][k], b.states[s][k]) for s in a.states for k in a.states[s])


def test_overlapped_epochs_give_the_sequential_numbers_and_refuse_a_late_evaluation(raw):
    """``overlap=True``: the worker trains each next epoch while this process closes the last
    (linear10's torch side takes no draws), its evaluations and the entry's per-epoch metric
    sent with the epoch; every row, metric, per-batch curve and final state is the
    sequential run's. Between two overlapped epochs the worker's state has moved on: an
    evaluation asked for there is refused, not answered from the wrong epoch."""
    from nnparity.reporting.linear10 import epoch_metric

    net, recipe, ds = _setup(raw, "linear10", "float64", epochs=3)
    runs = {}
    for mode in (False, True):
        with Training(net, recipe, ds, "float64", 0, per_batch=True, drift_steps=3, concurrent=mode,
                      overlap=mode, epoch_metric=epoch_metric, record_ref=True) as t:
            for epoch in range(1, 4):
                t.run_epoch(epoch, progress=False)
            runs[mode] = (t.history, t.ref_tape.metrics, {k: np.array(v) for k, v in t.ref.state().items()})
    (seq, seq_metrics, seq_state), (con, con_metrics, con_state) = runs[False], runs[True]
    assert _without_seconds(con) == _without_seconds(seq)
    assert all("metric" in row and "per_batch_val" in row for row in con)
    assert con_metrics == seq_metrics == [row["metric"]["torch"] for row in seq]
    assert all(np.array_equal(con_state[k], a) for k, a in seq_state.items())
    with Training(net, recipe, ds, "float64", 0, concurrent=True, overlap=True) as t:
        t.run_epoch(1, progress=False)
        with pytest.raises(RuntimeError, match="next epoch is under way"):
            t.evaluate()


def test_a_checkpoint_of_a_concurrent_run_resumes_to_the_same_numbers(raw, tmp_path):
    """cnn18k: momentum buffers, BatchNorm statistics and dropout generators, through a
    checkpoint whose torch state came back from the worker, into a new worker."""
    net, recipe, ds = _setup(raw, "cnn18k", "float32")
    ident = {"net": net.name, "dtype": "float32", "seed": 0,
             "recipe": {k: v for k, v in recipe.as_dict().items() if k != "epochs"}}
    with Training(net, recipe, ds, "float32", 0) as whole:
        for epoch in (1, 2):
            whole.run_epoch(epoch, progress=False)
    with Training(net, recipe, ds, "float32", 0, concurrent=True) as first:
        first.run_epoch(1, progress=False)
        path = checkpoint.save(tmp_path / "checkpoint.npz", first, ident)
    meta, arrays = checkpoint.load(path, ident, checkpoint.expected_state(net, recipe, "float32", 0))
    with Training(net, recipe, ds, "float32", 0, concurrent=True) as resumed:
        assert checkpoint.restore(resumed, meta, arrays) == 2
        resumed.run_epoch(2, progress=False)
    assert _without_seconds(resumed.history) == _without_seconds(whole.history)


NAN_FROM_STEP_3 = '''
"""mlp16 whose torch side's output turns NaN from its third training step on."""
from reference import mlp16 as reference
from scratch.nets import mlp16 as scratch

RECIPE = scratch.RECIPE.replace(net="mlp16_torch_nan")
build, loss, torch_loss = scratch.build, scratch.loss, reference.loss


def torch_build(recipe):
    model, forward, calls = reference.build(recipe), None, []
    forward = model.forward

    def nan_from_step_3(x):
        out = forward(x)
        if model.training:
            calls.append(1)
            if len(calls) >= 3:
                out = out * float("nan")
        return out

    model.forward = nan_from_step_3
    return model
'''


@pytest.mark.parametrize("side", ["torch", "scratch"])
def test_a_run_diverges_at_the_same_step_and_in_the_same_words(raw, tmp_path, monkeypatch, side):
    """The earliest non-finite step of either side stops the run, whichever side runs
    ahead: the torch side in the worker (a network file whose torch output turns NaN at
    step 3), or the scratch side here (its update leaves an infinite weight at step 2)."""
    if side == "torch":
        (tmp_path / "nan_net.py").write_text(textwrap.dedent(NAN_FROM_STEP_3))
        net = get(str(tmp_path / "nan_net.py"))
    else:
        net = get("mlp16")
    recipe = net.recipe.replace(train_size=320, test_size=64, epochs=1)
    ds = prepare(net, recipe, raw, "float32", 0)
    messages = {}
    for concurrent in (False, True):
        with Training(net, recipe, ds, "float32", 0, concurrent=concurrent) as t:
            if side == "scratch":
                update = t.scratch.optimizer.step

                def overflowing_update(t=t, update=update):
                    update()
                    if t.step_count == 2:
                        t.scratch.optimizer.params["fc3.weight"].data[1, 2] = np.inf

                monkeypatch.setattr(t.scratch.optimizer, "step", overflowing_update)
            with pytest.raises(Diverged) as e:
                t.run_epoch(1, progress=False)
        messages[concurrent] = (e.value.step, str(e.value))
    assert messages[True] == messages[False]
    step, message = messages[True]
    assert step == (3 if side == "torch" else 2) and f"{side} side non-finite" in message
    assert ("scratch side" in message) == (side == "scratch"), message


def test_a_killed_worker_is_one_error_not_a_wait(raw):
    net, recipe, ds = _setup(raw, "mlp16", "float32")
    with Training(net, recipe, ds, "float32", 0, concurrent=True) as t:
        t.run_epoch(1, progress=False)
        os.kill(t.ref.pid, signal.SIGKILL)
        with pytest.raises(WorkerError) as e:
            t.run_epoch(2, progress=False)
    assert str(e.value).startswith(f"the torch worker process (pid {t.ref.pid}) was killed by SIGKILL during epoch 2")
    assert "\n" not in str(e.value)


class _Running:
    """A worker process that is still there: the writer is tested on a bare pipe."""
    def is_alive(self):
        return True


def _interrupt_at(k: int):
    """A trace function that raises a SIGINT's ``KeyboardInterrupt`` before the ``k``-th
    bytecode the traced call runs (in this thread, callees included): a signal's handler can
    raise only between two bytecodes, so ``k = 1, 2, ...`` are all the places where one can."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
            if count == k:
                raise KeyboardInterrupt("SIGINT")
        return trace
    return trace


def interrupted_sends(writer_class, wait: float = 5.0) -> list:
    """For each place in ``writer_class(conn, process).send`` where a signal can land, one
    writer: two messages sent, a third cut by a ``KeyboardInterrupt`` there, then ``close``.
    Returns the places that went wrong: ``(k, "wedged")`` where ``close`` had not returned
    after ``wait`` seconds, ``(k, "lost")`` where the other end did not read whole messages in
    order, the two sent and at most the one cut. Ends at the first ``k`` past the end of a send."""
    wrong, k = [], 0

    def drain(conn, got):
        try:
            while True:
                got.append(conn.recv())
        except (EOFError, OSError):
            pass

    while True:
        k += 1
        ours, theirs = multiprocessing.Pipe()
        got = []
        reader = threading.Thread(target=drain, args=(theirs, got), daemon=True)
        reader.start()
        writer = writer_class(ours, _Running())
        writer.send(0)
        writer.send(1)
        cut = False
        sys.settrace(_interrupt_at(k))
        try:
            writer.send(2)
        except KeyboardInterrupt:
            cut = True
        finally:
            sys.settrace(None)
        closer = threading.Thread(target=writer.close, daemon=True)
        closer.start()
        closer.join(wait)
        if closer.is_alive():
            wrong.append((k, "wedged"))
            continue
        reader.join(wait)
        theirs.close()
        if got not in ([0, 1], [0, 1, 2]) or (not cut and got != [0, 1, 2]):
            wrong.append((k, "lost"))
        if not cut:
            return wrong


def test_a_signal_anywhere_in_a_send_leaves_the_worker_stoppable():
    """A Ctrl-C lands wherever the main thread is, inside ``send`` too. Wherever it lands, the
    writer thread must still end and the pipe close (``_stop``), with every message handed over
    written. With a ``queue.Queue`` between the two threads, a ``KeyboardInterrupt`` raised in
    its Python code could leave its lock held, and ending the worker then waited for ever: an
    interrupted ``nnparity run`` that never ends, which fits a CI run that hung in
    ``test_reproduce``'s interrupt test."""
    assert interrupted_sends(worker._Writer) == []


def test_a_network_made_in_this_process_is_refused_in_one_line(raw):
    import dataclasses

    net, recipe, ds = _setup(raw, "mlp16", "float32")
    mine = dataclasses.replace(net, name="mlp16_here", scratch_module="scratch.nets.mlp16",
                               reference_module="reference.mlp16")
    with pytest.raises(ValueError, match="a worker process cannot build this network"):
        Training(mine, recipe, ds, "float32", 0, concurrent=True)


_FORKABLE = """
import sys, torch
from nnparity.training import worker
{before}
print(worker._forkable())
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="a worker is forked only on Linux")
@pytest.mark.parametrize("before, forkable", [
    ("", True),  # torch imported, nothing run: the CLI's case
    ("torch.set_num_threads(2); x = torch.ones(1500, 1500); (x @ x).sum()", False),  # torch's pool is up
    ("torch.set_num_interop_threads(2)", False),  # the inter-op pool may no longer be set to one thread
    ("import threading, time; threading.Thread(target=time.sleep, args=(5,), daemon=True).start()", False),
])
def test_a_worker_is_forked_only_from_a_process_where_torch_has_started_no_pool(before, forkable):
    out = subprocess.run([sys.executable, "-c", _FORKABLE.format(before=before)], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == str(forkable)



_FORKED_RUN = """
import hashlib, json, sys
import numpy as np
from nnparity.training import worker
from nnparity.core import data as mnist
from nnparity.training.networks import get, prepare
from nnparity.training.train import Training
worker.warm_up(fork=True)  # first, as `nnparity run` does: this process has run no torch operation
kind = type(worker._IDLE[0].process._popen).__module__
net = get("cnn18k")
recipe = net.recipe.replace(train_size=48, test_size=32, epochs=2)
ds = prepare(net, recipe, mnist.load_mnist(), "float32", 0)
with Training(net, recipe, ds, "float32", 0, per_batch=True, drift_steps=3, concurrent=True) as t:
    for epoch in (1, 2):
        t.run_epoch(epoch, progress=False)
    h = hashlib.sha256()
    for k, v in t.ref.state().items():
        h.update(k.encode() + np.ascontiguousarray(v).tobytes())
    history = [{k: ({kk: vv for kk, vv in v.items() if kk != "seconds"} if isinstance(v, dict) else v)
                for k, v in row.items()} for row in t.history]
print(json.dumps({"worker": kind, "state": h.hexdigest(), "history": repr(history)}))
"""


def test_a_run_forks_its_worker_and_the_forked_worker_gives_the_same_numbers(raw):
    """``warm_up(fork=True)`` in a process that has run no torch operation (what ``nnparity
    run`` does first) forks the worker; its torch side is the in-process one, bit for bit."""
    out = subprocess.run([sys.executable, "-c", _FORKED_RUN], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["worker"].endswith("popen_fork"), got["worker"]
    net, recipe, ds = _setup(raw, "cnn18k", "float32")
    seq, _, states = _trained(net, recipe, ds, "float32", False)
    h = hashlib.sha256()
    for k, v in states["torch"].items():
        h.update(k.encode() + np.ascontiguousarray(v).tobytes())
    assert got["history"] == repr(_without_seconds(seq.history))
    assert got["state"] == h.hexdigest()
