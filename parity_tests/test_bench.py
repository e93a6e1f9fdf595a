"""The benchmark's whole-run projection (no timing here: speed is measured by `nnparity bench`)."""

from nnparity.reporting.bench import epochs_projections


def test_mlp16_run_projection_states_the_floor_and_misses_it_when_slow():
    rows = [{"net": "mlp16", "dtype": "float32", "scratch_s": 0.5},
            {"net": "mlp1000", "dtype": "float32", "scratch_s": 9.0}]
    fast = epochs_projections(rows)
    assert fast == ["mlp16 float32: 100 epochs on the scratch side = 100 x 0.50 s = 50 s (floor < 120 s: ok)"]
    slow = epochs_projections([dict(rows[0], scratch_s=1.3)])
    assert slow[0].endswith("(floor < 120 s: MISSED)")
