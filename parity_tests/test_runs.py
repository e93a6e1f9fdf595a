"""Whole runs on a small slice of MNIST: determinism, checkpoints and resume,
divergence, interruption, and what a bad output folder does."""

import json
import signal
import time

import numpy as np
import pytest

from nnparity.training.checkpoint import CheckpointError, load
from nnparity.cli.main import main

SMALL = ["--train-size", "1000", "--test-size", "300", "--no-progress"]


def run(out, *extra):
    return main(["run", "mlp1000", "--out", str(out), "--dtype", "float32", *SMALL, *extra])


def metrics(out, folder="mlp1000"):
    """A run's metrics.json: ``OUT/mlp1000`` if it completed, ``OUT/mlp1000.incomplete`` if not."""
    return json.loads((out / folder / "metrics.json").read_text())


def without_timing(obj):
    """A metrics document with its timing fields (seconds, command, paths) removed."""
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items()
                if not k.endswith("seconds") and k not in ("command", "resumed_from", "epochs_planned", "peak_rss_mib")}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert run(out, "--epochs", "3", "--parity-steps", "2") == 0
    return metrics(out)


def test_same_seed_same_metrics(three_epochs, tmp_path):
    assert run(tmp_path, "--epochs", "3", "--parity-steps", "2") == 0
    assert without_timing(metrics(tmp_path)) == without_timing(three_epochs)


def test_other_seed_other_metrics(three_epochs, tmp_path):
    assert run(tmp_path, "--epochs", "1", "--parity-steps", "0", "--seed", "1") == 0
    assert metrics(tmp_path)["epochs"][0]["scratch"]["train_loss"] != three_epochs["epochs"][0]["scratch"]["train_loss"]


def test_resume_gives_the_uninterrupted_metrics(three_epochs, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert run(first, "--epochs", "2", "--parity-steps", "2", "--save-every", "1") == 0
    ck = first / "mlp1000" / "checkpoint.npz"
    with np.load(ck, allow_pickle=False) as z:  # plain arrays, no pickle
        assert "scratch/param/U.weight" in z.files and "torch/param/U.weight" in z.files
    assert run(second, "--epochs", "3", "--parity-steps", "2", "--resume", str(first / "mlp1000")) == 0
    resumed = metrics(second)
    assert resumed["status"] == "complete" and "after epoch 2" in resumed["resumed_from"]
    assert without_timing(resumed["epochs"]) == without_timing(three_epochs["epochs"])


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, capsys):
    assert run(tmp_path / "a", "--epochs", "1", "--parity-steps", "0", "--save-every", "1") == 0
    capsys.readouterr()
    assert run(tmp_path / "b", "--epochs", "2", "--parity-steps", "0", "--seed", "5",
               "--resume", str(tmp_path / "a" / "mlp1000")) == 2
    assert "checkpoint was made with seed 0; this run asks for seed 5 (resume with --seed 0)" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before anything was written


@pytest.mark.parametrize("content,expected", [
    (b"not a zip at all", "corrupt or not an nn-parity checkpoint"),
    (None, "not an nn-parity checkpoint"),
])
def test_resume_refuses_corrupt_or_foreign_files(tmp_path, cli_process, content, expected):
    bad = tmp_path / "checkpoint.npz"
    if content is None:
        np.savez(bad, weights=np.ones(3))  # a valid .npz, but not ours
    else:
        bad.write_bytes(content)
    proc = cli_process.run(["run", "mlp1000", "--out", str(tmp_path / "o"), "--parity-steps", "0", "--resume", str(bad),
                            *SMALL])
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_truncated_checkpoint_is_refused(tmp_path):
    assert run(tmp_path / "a", "--epochs", "1", "--parity-steps", "0", "--save-every", "1") == 0
    ck = tmp_path / "a" / "mlp1000" / "checkpoint.npz"
    ck.write_bytes(ck.read_bytes()[: len(ck.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load(ck, {}, None)  # refused from the zip structure, before identity or state are looked at


def test_divergence_stops_at_once_and_writes_a_diverged_report(tmp_path):
    status = run(tmp_path, "--epochs", "3", "--parity-steps", "0", "--lr", "1e6")
    m = metrics(tmp_path, "mlp1000.incomplete")
    assert status == 3 and m["status"] == "diverged"
    assert "step" in m["status_detail"] and ("loss" in m["status_detail"] or "param/" in m["status_detail"])
    assert "**diverged**" in (tmp_path / "mlp1000.incomplete" / "report.md").read_text()
    assert not (tmp_path / "mlp1000").exists()  # OUT/NET only ever holds a complete run


def test_sigint_leaves_complete_files_marked_incomplete(tmp_path, cli_process):
    proc = cli_process.popen(["run", "mlp1000", "--out", str(tmp_path), "--epochs", "50", "--parity-steps", "0",
                              "--envelope-steps", "0", "--dtype", "float32", *SMALL])
    for line in proc.stdout:  # wait for the first finished epoch
        if line.startswith("epoch   1/"):
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    m = metrics(tmp_path, "mlp1000.incomplete")
    assert m["status"] == "incomplete" and len(m["epochs"]) >= 1
    assert "**incomplete**" in (tmp_path / "mlp1000.incomplete" / "report.md").read_text()
    leftovers = [p.name for p in (tmp_path / "mlp1000.incomplete").iterdir()
                 if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not leftovers and sorted(p.name for p in tmp_path.iterdir()) == ["mlp1000.incomplete"]


def test_unusable_output_folder_is_one_clear_line(tmp_path, cli_process):
    blocker = tmp_path / "reports"
    blocker.write_text("a file where the output folder should go")  # fails even for root
    proc = cli_process.run(["run", "mlp1000", "--out", str(blocker), *SMALL])
    assert proc.returncode == 2 and f"cannot create output directory {blocker / 'mlp1000'}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert blocker.read_text().startswith("a file")


def test_cnn18k_resume_restores_batchnorm_momentum_and_dropout_state(tmp_path):
    """cnn18k's checkpoint carries what mlp1000's has not: BatchNorm buffers, momentum
    buffers and the dropout generators. Resumed after epoch 1, epoch 2 must be the
    uninterrupted run's epoch 2 exactly (same masks, same running statistics)."""
    tiny = ["--train-size", "48", "--test-size", "32", "--no-progress", "--parity-steps", "0",
            "--envelope-steps", "0"]

    def cnn(out, *extra):
        return main(["run", "cnn18k", "--out", str(out), *tiny, *extra])

    whole, first, second = tmp_path / "whole", tmp_path / "a", tmp_path / "b"
    assert cnn(whole, "--epochs", "2") == 0
    assert cnn(first, "--epochs", "1", "--save-every", "1") == 0
    with np.load(first / "cnn18k" / "checkpoint.npz", allow_pickle=False) as z:
        names = set(z.files)
    assert {"scratch/buffer/bn1.running_var", "torch/buffer/bn1.running_var",
            "scratch/state/conv1.weight.momentum_buffer"} <= names, sorted(names)[:20]
    assert cnn(second, "--epochs", "2", "--resume", str(first / "cnn18k")) == 0
    done = json.loads((whole / "cnn18k" / "metrics.json").read_text())
    resumed = json.loads((second / "cnn18k" / "metrics.json").read_text())
    assert resumed["status"] == "complete"
    assert without_timing(resumed["epochs"]) == without_timing(done["epochs"])
