"""``nnparity results``: the README's results table and bench summary are the committed
reports' figures, and a disagreement between them fails here, naming the cell."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nnparity.cli import main as cli

from nnparity.reporting import results
from nnparity.training.networks import NETWORKS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REPORTS = ROOT / "reports"


def test_readme_tables_are_the_committed_reports():
    problem = results.first_difference(README.read_text(encoding="utf-8"), results.generate(REPORTS))
    assert problem is None, problem


def test_check_passes_on_the_committed_files(capsys):
    assert cli.main(["results", "--check", str(README), "--reports", str(REPORTS)]) == 0
    assert "agree" in capsys.readouterr().out


def test_every_registered_network_has_its_row():
    table = results.generate(REPORTS)["results"].splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == [f"| `{name}`" for name in NETWORKS]


def copy_reports(tmp_path) -> Path:
    """The committed reports' JSON and the bench's (not their plots) in tmp_path/reports."""
    out = tmp_path / "reports"
    for name in NETWORKS:
        (out / name).mkdir(parents=True)
        shutil.copy(REPORTS / name / "metrics.json", out / name / "metrics.json")
    shutil.copy(REPORTS / results.BENCH_JSON, out / results.BENCH_JSON)
    return out


def edit_metrics(reports: Path, name: str, change) -> None:
    path = reports / name / "metrics.json"
    metrics = json.loads(path.read_text())
    change(metrics)
    path.write_text(json.dumps(metrics))


def test_an_untouched_copy_of_the_reports_agrees(tmp_path, capsys):
    reports = copy_reports(tmp_path)
    assert cli.main(["results", "--check", str(README), "--reports", str(reports)]) == 0, capsys.readouterr().err


def _set(path: tuple, value):
    def change(metrics):
        node = metrics
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


# One figure changed in one report: the row and the column it shows up in.
CORRUPTIONS = [
    ("mlp1000", ("epochs", 97, "scratch", "train_error"), 0.005, "`mlp1000`", "scratch (NumPy)"),
    ("mlp16", ("headline", "torch", "final_test_accuracy"), 95.83, "`mlp16`", "PyTorch"),
    ("linear10", ("runs", 3, "final", "torch", "seconds"), 120.0, "`linear10`", "seconds scratch / torch"),
    ("linear10", ("document", "val_accuracy"), 92.5, "`linear10`", "source document reports"),
    ("toy221", ("command",), "nnparity run toy221 --lr 0.5", "`toy221`", "command"),
    ("cnn18k", ("headline", "scratch", "best_epoch"), 12, "`cnn18k`", "scratch (NumPy)"),
]


@pytest.mark.parametrize("name,path,value,row,column", CORRUPTIONS,
                         ids=[f"{c[0]}-{'.'.join(map(str, c[1]))}" for c in CORRUPTIONS])
def test_a_changed_report_fails_the_check_naming_its_cell(name, path, value, row, column, tmp_path, capsys):
    reports = copy_reports(tmp_path)
    edit_metrics(reports, name, _set(path, value))
    assert cli.main(["results", "--check", str(README), "--reports", str(reports)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"row {row}, column {column!r}" in err, err
    assert results.REWRITE in err


def test_a_changed_bench_figure_fails_the_check(tmp_path, capsys):
    reports = copy_reports(tmp_path)
    path = reports / results.BENCH_JSON
    record = json.loads(path.read_text())
    row = next(r for r in record["rows"] if (r["net"], r["dtype"]) == ("cnn18k", "float32"))
    row["s_per_epoch"]["torch_whole"] = 99.99
    path.write_text(json.dumps(record))
    assert cli.main(["results", "--check", str(README), "--reports", str(reports)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "row `cnn18k`, column 's/epoch alone, whole machine: scratch / torch'" in err, err
    assert "/ 99.99'" in err, err


def test_a_readme_missing_a_row_or_with_a_stray_one_fails_naming_it(tmp_path, capsys):
    readme = tmp_path / "README.md"
    lines = README.read_text().splitlines(keepends=True)
    toy = next(i for i, line in enumerate(lines) if line.startswith("| `toy221` |"))
    readme.write_text("".join(lines[:toy] + lines[toy + 1:]))
    assert cli.main(["results", "--check", str(readme), "--reports", str(REPORTS)]) == 1
    assert "lacks the row `toy221`" in capsys.readouterr().err
    readme.write_text("".join(lines[:toy] + [lines[toy].replace("`toy221`", "`toy222`")] + lines[toy:]))
    assert cli.main(["results", "--check", str(readme), "--reports", str(REPORTS)]) == 1
    assert "has a row `toy222` that no report" in capsys.readouterr().err


def test_write_makes_a_stale_readme_agree_and_leaves_the_rest(tmp_path, capsys):
    reports = copy_reports(tmp_path)
    edit_metrics(reports, "mlp16", _set(("headline", "scratch", "final_test_accuracy"), 12.34))
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)
    assert cli.main(["results", "--check", str(readme), "--reports", str(reports)]) == 1
    assert cli.main(["results", "--write", str(readme), "--reports", str(reports)]) == 0
    assert cli.main(["results", "--check", str(readme), "--reports", str(reports)]) == 0
    before, after = README.read_text(), readme.read_text()
    assert "test 12.34% (best 95.92, epoch 62)" in after
    outside = [line for line in before.splitlines() if not line.startswith("| `mlp16`")]
    assert outside == [line for line in after.splitlines() if not line.startswith("| `mlp16`")]
    written = readme.read_bytes()
    assert cli.main(["results", "--write", str(readme), "--reports", str(reports)]) == 0
    assert readme.read_bytes() == written and "already agree" in capsys.readouterr().out


def one_line_error(argv, capsys) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("nnparity results: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_a_missing_reports_folder_is_one_line(tmp_path, capsys):
    err = one_line_error(["results", "--check", str(README), "--reports", str(tmp_path / "nowhere")], capsys)
    assert "nowhere: no such folder" in err
    (tmp_path / "file").write_text("")
    assert "not a folder" in one_line_error(["results", "--reports", str(tmp_path / "file")], capsys)


def test_a_missing_or_broken_report_is_one_line_naming_the_file(tmp_path, capsys):
    reports = copy_reports(tmp_path)
    (reports / "toy221" / "metrics.json").write_text('{"net": "toy221", ')
    err = one_line_error(["results", "--check", str(README), "--reports", str(reports)], capsys)
    assert "toy221/metrics.json is not valid JSON" in err
    (reports / "toy221" / "metrics.json").unlink()
    err = one_line_error(["results", "--reports", str(reports)], capsys)
    assert "toy221/metrics.json is missing" in err and "nnparity run toy221" in err
    (reports / results.BENCH_JSON).unlink()
    shutil.copy(REPORTS / "toy221" / "metrics.json", reports / "toy221" / "metrics.json")
    err = one_line_error(["results", "--check", str(README), "--reports", str(reports)], capsys)
    assert "bench.json is missing" in err


def test_a_folder_without_a_benchmark_prints_the_results_table_and_says_so(tmp_path, capsys):
    """``nnparity results --reports DIR`` of a folder that ``nnparity reproduce`` wrote: the
    results table, and one line saying there is no benchmark (checking a README needs one)."""
    reports = copy_reports(tmp_path)
    (reports / results.BENCH_JSON).unlink()
    assert cli.main(["results", "--reports", str(reports)]) == 0
    out = capsys.readouterr().out
    assert results.begin_marker("results") in out and results.begin_marker("bench") not in out
    assert f"no benchmark in {reports}" in out


def bench_record() -> dict:
    """A bench.json as ``nnparity bench`` writes it (``bench.summarize`` over made-up rounds:
    the figures are arithmetic here, nothing is timed)."""
    from nnparity.reporting import bench

    rounds = {"scratch_whole": [2.0, 1.5], "torch_whole": [1.0, 1.2], "scratch_one": [3.0, 2.5],
              "torch_one": [2.0, 2.2], "alternating": [4.0, 4.5],
              **{f"gemm_{d}_{t}": [100.0, 120.0] for d in ("float32", "float64") for t in ("whole", "one")}}
    row = bench.summarize("mlp1000", "float32", 100, 600, 600, 60000, 4.8e8, rounds, {}, 2) | {"peak_rss_mib": 900.0}
    load = bench.judge_load([{"when": "before", "loadavg": [0.2, 0.3, 0.3]},
                             {"when": "after", "loadavg": [1.9, 0.9, 0.5]}],
                            [{"during": "mlp1000 float32", "cores": 0.05, "seconds": 30.0}], 2)
    return {"command": "nnparity bench mlp1000", "machine": {"cpu": "Some CPU", "cores": 2}, "statistic": "minimum",
            "repeats": 2, "load": load, "rows": [row]}


def test_a_bench_json_gives_the_bench_summary_and_a_changed_figure_fails_the_check(tmp_path, capsys):
    reports = copy_reports(tmp_path)
    record = bench_record()
    (reports / results.BENCH_JSON).write_text(json.dumps(record))
    summary = results.generate(reports)["bench"]
    # the minimum of the rounds, per full epoch: 1.5 s / 1.0 s alone on the whole machine, ratio 1.50
    assert "| `mlp1000` | float32 | 100 | 1.50 / 1.00 | 1.50 | 2.50 / 2.00 | 1.25 | 4.00 / n/a |" in summary, summary
    assert "1-minute load 0.2 before, 1.9 after" in summary and "Warning" not in summary
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)
    assert cli.main(["results", "--write", str(readme), "--reports", str(reports)]) == 0
    assert cli.main(["results", "--check", str(readme), "--reports", str(reports)]) == 0
    record["rows"][0]["s_per_epoch"]["torch_whole"] = 1.25
    (reports / results.BENCH_JSON).write_text(json.dumps(record))
    assert cli.main(["results", "--check", str(readme), "--reports", str(reports)]) == 1
    err = capsys.readouterr().err
    assert "row `mlp1000`, column 's/epoch alone, whole machine: scratch / torch', says '1.50 / 1.00'" in err, err


def test_a_bench_taken_under_load_carries_its_warning_into_the_summary(tmp_path):
    reports = copy_reports(tmp_path)
    record = bench_record()
    from nnparity.reporting.bench import judge_load

    record["load"] = judge_load([{"when": "before", "loadavg": [1.6, 1.0, 0.5]},
                                 {"when": "after", "loadavg": [2.0, 1.2, 0.6]}], [], 2)
    assert record["load"]["under_load"]
    (reports / results.BENCH_JSON).write_text(json.dumps(record))
    assert "not a clean figure" in results.generate(reports)["bench"]


def test_a_broken_bench_json_is_one_line(tmp_path, capsys):
    reports = copy_reports(tmp_path)
    (reports / results.BENCH_JSON).write_text('{"rows": ')
    assert "bench.json is not valid JSON" in one_line_error(["results", "--reports", str(reports)], capsys)
    (reports / results.BENCH_JSON).write_text('{"rows": [{"dtype": "float32"}]}')
    assert "bench.json lacks a figure" in one_line_error(["results", "--reports", str(reports)], capsys)


def test_a_report_without_a_figure_a_template_reads_names_it(tmp_path, capsys):
    reports = copy_reports(tmp_path)
    edit_metrics(reports, "cnn18k", lambda m: m["headline"]["torch"].pop("seconds"))
    err = one_line_error(["results", "--check", str(README), "--reports", str(reports)], capsys)
    assert "cnn18k/metrics.json has no headline.torch.seconds" in err and "'seconds scratch / torch'" in err, err


def test_an_unfinished_run_is_refused(tmp_path, capsys):
    reports = copy_reports(tmp_path)
    edit_metrics(reports, "mlp16", _set(("status",), "diverged"))
    assert "status 'diverged'" in one_line_error(["results", "--reports", str(reports)], capsys)


def test_a_readme_without_the_markers_is_one_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README.read_text().replace(results.end_marker("bench"), ""))
    err = one_line_error(["results", "--check", str(readme), "--reports", str(REPORTS)], capsys)
    assert results.begin_marker("bench") in err


def test_figures_read_paths_map_over_lists_and_name_what_is_missing():
    m = {"epochs": [{"epoch": 1, "s": {"err": 3.0}}, {"epoch": 2, "s": {"err": 1.0}}, {"epoch": 3, "s": {"err": 1.0}}],
         "runs": {"as-documented": {"x": 0.1}}}
    assert results.fill("{epochs.s.err.min} at {epochs.s.err.at_min.epoch}, last {epochs.last.epoch}", m) == \
        "1.0 at 2, last 3"
    assert results.fill("{epochs.count} {epochs[0].s.err:.2f} {runs[as-documented].x!r}", m) == "3 3.00 0.1"
    with pytest.raises(results.ResultsError, match=r"has no epochs\.s\.loss"):
        results.fill("{epochs.s.loss.max}", m)
    with pytest.raises(results.ResultsError, match="not a figure"):
        results.fill("{runs}", m)


def test_results_imports_no_torch():
    code = "import sys, nnparity.reporting.results; sys.exit(1 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr or "importing nnparity.reporting.results imported torch"
