"""``nnparity bench``: what it measures and what it says about the machine it ran on
(structure and honesty only: speed is measured by the command, never asserted here)."""

import json
import os
import subprocess
import sys

import pytest

from nnparity.reporting import bench, results
from nnparity.reporting.bench import epochs_projections, judge_load, reproduction_bound
from nnparity.training.networks import NETWORKS


def test_mlp16_run_projection_states_the_floor_and_misses_it_when_slow():
    rows = [{"net": "mlp16", "dtype": "float32", "scratch_s": 0.5},
            {"net": "mlp1000", "dtype": "float32", "scratch_s": 9.0}]
    fast = epochs_projections(rows)
    assert fast == ["mlp16 float32: 100 epochs on the scratch side = 100 x 0.50 s = 50 s (floor < 120 s: ok)"]
    slow = epochs_projections([dict(rows[0], scratch_s=1.3)])
    assert slow[0].endswith("(floor < 120 s: MISSED)")


def documented_rows(scratch_s: float, torch_s: float, skip=()):
    return [{"net": name, "dtype": net.recipe.dtype, "s_per_epoch": {"scratch_one": scratch_s, "torch_one": torch_s}}
            for name, net in NETWORKS.items() if net.claim and net.mnist and name not in skip]


def test_the_reproduction_bound_adds_each_documented_run_as_nnparity_run_trains_it():
    """Core-seconds per run: epochs x seeds x (variants x scratch + torch), the torch side of a
    sweep once per seed; shared out over the cores, never below the slowest side of one run."""
    nets = {n: net for n, net in NETWORKS.items() if net.claim and net.mnist}
    runs = {n: net.recipe.epochs * (net.seeds if "seeds" in net.sweep else 1) for n, net in nets.items()}
    variants = {n: len(net.variants) if "variants" in net.sweep else 1 for n, net in nets.items()}
    b = reproduction_bound(documented_rows(0.01, 0.02), 2)
    want = sum(runs[n] * (variants[n] * 0.01 + 0.02) for n in nets)
    assert b["core_seconds"] == pytest.approx(want) and b["bound_s"] == pytest.approx(want / 2)
    assert b["ok"] and b["text"].endswith("(floor < 30 min: ok)")
    assert "linear10 float64 200 x 5 seeds x (2 variants x 0.01 + 0.02 s)" in b["text"]
    slow = reproduction_bound(documented_rows(1.0, 2.0), 2)
    assert not slow["ok"] and slow["text"].endswith("MISSED)")
    # one core per side: a run is never faster than its slower side, however many cores there are
    many = reproduction_bound(documented_rows(0.01, 0.02), 1000)
    assert many["bound_s"] == pytest.approx(max(runs[n] * max(variants[n] * 0.01, 0.02) for n in nets))


def test_a_reproduction_bound_with_a_run_not_measured_is_not_judged():
    b = reproduction_bound(documented_rows(0.01, 0.02, skip=("cnn18k",)), 2)
    assert not b["ok"] and b["text"].endswith("(floor < 30 min: not judged: cnn18k float32 not measured)")
    assert reproduction_bound([{"net": "mine", "dtype": "float32", "s_per_epoch": {}}], 2) is None


def readings(*loads):
    return [{"when": w, "loadavg": [v, v, v]} for w, v in zip(("before", "after mlp16 float32", "after"), loads)]


def test_a_load_at_half_a_core_or_more_anywhere_is_a_warning_in_words():
    quiet = judge_load(readings(0.1, 1.8, 1.9), [{"during": "mlp16 float32", "cores": 0.1, "seconds": 9.0}], 2)
    assert not quiet["under_load"] and quiet["warning"] is None  # the readings after count the bench itself
    busy_before = judge_load(readings(1.2, 1.8, 1.9), [{"during": "mlp16 float32", "cores": 0.1, "seconds": 9}], 2)
    assert busy_before["under_load"] and busy_before["warning"].startswith(bench.UNDER_LOAD)
    assert "1-minute load 1.20 before" in busy_before["warning"]
    others = judge_load(readings(0.1, 1.8), [{"during": "cnn18k float32", "cores": 1.3, "seconds": 60.0}], 2)
    assert others["under_load"] and "other processes used 1.30 cores during cnn18k float32" in others["warning"]
    # without a measure of the other processes, every reading is judged as it is (it can only err towards a warning)
    unmeasured = judge_load(readings(0.1, 1.8), [], 2)
    assert unmeasured["under_load"] and "after mlp16 float32" in unmeasured["warning"]


def test_the_bench_records_every_measurement_and_the_load_and_warns_under_a_faked_high_load(tmp_path, monkeypatch,
                                                                                             capsys):
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (3.0, 2.5, 2.0))
    out = tmp_path / "bench.md"
    status = bench.bench(["mlp16"], dtypes=("float32",), repeats=2, steps=3, out=str(out), command="test",
                         gemm_n=128)
    assert status in (0, 1)  # 1: a floor missed (speed is not asserted here)
    md, record = out.read_text(), json.loads((tmp_path / "bench.json").read_text())
    assert f"**Warning: {bench.UNDER_LOAD}" in md and "WARNING: " + bench.UNDER_LOAD in capsys.readouterr().out
    load = record["load"]
    assert load["under_load"] and load["readings"][0] == {"when": "before", "loadavg": [3.0, 2.5, 2.0]}
    assert load["readings"][-1]["when"] == "after"
    assert record["statistic"] == "minimum" and record["repeats"] == 2 and record["machine"]["cores"] >= 1
    assert any(p["user_api"] == "blas" for p in record["machine"]["threadpools"])
    (row,) = record["rows"]
    assert (row["net"], row["window_steps"], row["steps_per_epoch"]) == ("mlp16", 3, 1875)
    modes = ["alternating"] + (["concurrent"] if bench.concurrent_available() else [])
    assert set(row["ms_per_step"]) == set(bench.SIDE_CONFIGS) | set(modes)
    assert set(row["gemm_gflops"]) == {f"{d}_{t}" for d in ("float32", "float64") for t in ("whole", "one")}
    assert all(len(v) == 2 for v in row["rounds"].values())  # every measurement in every round
    # the figure is the minimum of its rounds, and each ratio is between figures of this run
    assert row["ms_per_step"]["scratch_whole"] == 1000 * min(row["rounds"]["scratch_whole"]) / 3
    assert row["ratio_whole"] == row["ms_per_step"]["scratch_whole"] / row["ms_per_step"]["torch_whole"]
    if not bench.concurrent_available():
        assert "not available" in md and record["concurrent"]["why"]
    # nnparity results reads it, warning included
    summary = results.bench_summary_json(tmp_path)
    assert "| `mlp16` | float32 | 32 |" in summary and bench.UNDER_LOAD in summary


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the children's CPU time in /proc")
def test_a_child_still_running_counts_as_the_commands_own_cpu_not_another_process():
    """``nnparity reproduce`` keeps one torch worker for all its runs, waited for only at the
    end: its CPU must count as the command's own (it did not, and each concurrent run said
    other processes had taken ~0.6-1.0 cores on a quiet machine)."""
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile time.process_time() < 1.0: pass\n"
                              "print('busy', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        before = bench._own_cpu_seconds()
        assert child.stdout.readline() == "busy\n"  # the child has used 1 s of CPU, and lives on
        assert bench._own_cpu_seconds() - before >= 0.9
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="resets the peak through /proc")
def test_the_peak_memory_starts_afresh_for_each_run_in_one_process():
    """``nnparity reproduce`` makes five runs in one process: each report's peak memory must be
    that run's (cnn18k's said 1913 MiB, the linear10 run's peak before it)."""
    import numpy as np

    spike = np.ones(400 * 2**20 // 8)  # 400 MiB touched, then given back
    del spike
    before = bench.peak_rss_mib()
    if not bench.reset_peak_memory():
        pytest.skip("this kernel does not reset the peak (clear_refs 5 needs Linux 4.0)")
    assert bench.peak_rss_mib() < before - 300


@pytest.mark.skipif(not os.path.isdir("/proc/self") or not os.path.exists("/bin/sleep"), reason="a process in /proc")
def test_a_process_whose_name_is_not_ascii_does_not_stop_the_load_watch(tmp_path):
    """Every process's ``/proc/PID/stat`` is read to find this one's children: a name like
    ``sl€ep`` (cut at 15 bytes, perhaps mid-character) made each reading raise."""
    named = tmp_path / "sl\u20acep\u20ac\u20ac\u20ac\u20ac"  # 15 bytes cut through the last €
    named.symlink_to("/bin/sleep")
    other = subprocess.Popen([str(named), "30"], start_new_session=True)
    try:
        assert bench._own_cpu_seconds() >= 0
    finally:
        other.kill()
        other.wait()
