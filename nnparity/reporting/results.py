"""``nnparity results``: the README's results table and bench summary, written from the
committed reports, so that no figure in them is copied by hand.

Two blocks of README.md are generated, each between HTML comment markers that a
markdown viewer does not show::

    <!-- results:begin -->     one row per registered network, from reports/NET/metrics.json
    <!-- bench:begin -->       the float32 rows of the benchmark, its GEMM peak and its load:
                               reports/bench.json (``nnparity bench``'s figures)

``nnparity results`` prints them, ``--write README.md`` rewrites them in place (the text
around the markers is left as it is) and ``--check`` exits 1 naming the first cell where
the README and the reports disagree (``parity_tests/test_results.py`` runs it on the
committed files).

What a row shows is data of the network's registry entry (``Network.claim``, what the
source document reports, and ``Network.results_row``): templates in ``str.format``
syntax over the report's ``metrics.json``, read through ``Figures``. Only the JSON is
read: this module imports neither torch nor the plotting code.
"""

from __future__ import annotations

import json
import math
import re
from itertools import zip_longest
from pathlib import Path

from nnparity.core import io
from nnparity.training.networks import NETWORKS, Network

SIDES = ("scratch", "torch")

# The results table: (key, header). ``document`` is the network's ``claim``; the others are
# templates of ``Network.results_row`` or, where the entry has none, of DEFAULT_ROW.
COLUMNS = (
    ("network", "network"),
    ("document", "source document reports"),
    ("scratch", "scratch (NumPy)"),
    ("torch", "PyTorch"),
    ("epochs", "epochs"),
    ("seconds", "seconds scratch / torch"),
    ("command", "command"),
)

# A generic MNIST run's report (``run.run_network``): final and best test accuracy per side.
# A ``side`` template is the template of both side columns, SIDE standing for scratch, then torch.
DEFAULT_ROW = {
    "network": "`{net}`",
    "side": "test {headline.SIDE.final_test_accuracy:.2f}% (best {headline.SIDE.best_test_accuracy:.2f}, "
            "epoch {headline.SIDE.best_epoch})",
    "epochs": "{epochs.count}",
    "seconds": "{headline.scratch.seconds:.0f} / {headline.torch.seconds:.0f}",
    "command": "`{command}`",
}

# The bench summary: the rows of this dtype in reports/bench.json, these of its figures.
BENCH_FILE = "bench.md"
BENCH_JSON = "bench.json"
BENCH_DTYPE = "float32"


def _both(a: str, b: str, fmt: str = ".2f"):
    """A cell "a / b" of two figures of a bench.json row (``b`` may be absent: "n/a")."""
    def cell(row: dict) -> str:
        first = format(row["s_per_epoch"][a], fmt)
        return f"{first} / {format(row['s_per_epoch'][b], fmt) if b in row['s_per_epoch'] else 'n/a'}"
    return cell


BENCH_FIGURES = (  # (README header, cell of a bench.json row)
    ("network", lambda r: f"`{r['net']}`"),
    ("dtype", lambda r: r["dtype"]),
    ("batch", lambda r: str(r["batch_size"])),
    ("s/epoch alone, whole machine: scratch / torch", _both("scratch_whole", "torch_whole")),
    ("ratio", lambda r: f"{r['ratio_whole']:.2f}"),
    ("s/epoch alone, one core: scratch / torch", _both("scratch_one", "torch_one")),
    ("ratio, one core", lambda r: f"{r['ratio_one']:.2f}"),
    ("s/epoch of a run: alternating / concurrent", _both("alternating", "concurrent")),
    ("scratch % of GEMM peak", lambda r: f"{r['pct_peak_whole']:.0f}%"),
    ("peak memory MiB", lambda r: f"{r['peak_rss_mib']:.0f}"),
)
BLOCKS = ("results", "bench")
REWRITE = "nnparity results --write README.md"


class ResultsError(Exception):
    """A report, a template or the README cannot give the tables: one line naming it."""


def begin_marker(block: str) -> str:
    return f"<!-- {block}:begin -->"


def end_marker(block: str) -> str:
    return f"<!-- {block}:end -->"


class Figures:
    """A value of a report's JSON, as ``str.format`` templates read it.

    ``{a.b}`` and ``{a[b]}`` read key ``b`` of a dict (``{summary[as-documented].scratch}``
    for keys that are not names). On a list, ``{runs[2]}`` takes an element, ``.count``,
    ``.first``, ``.last``, ``.min`` and ``.max`` reduce it, ``.at_min`` / ``.at_max`` give the
    record (the list's element) where the minimum / maximum first occurs, and any other name
    maps over the elements: ``{epochs.scratch.train_error.at_min.epoch}`` is the first epoch
    with the scratch side's lowest training error. A missing key is a ``ResultsError`` naming
    the path, never a blank cell.
    """

    REDUCERS = ("count", "first", "last", "min", "max", "at_min", "at_max")

    def __init__(self, value, path: str = "", records=None):
        self._value = value
        self._path = path
        self._records = records  # the elements a mapped list's values were read from

    def _at(self, key):
        v, path = self._value, f"{self._path}[{key}]" if isinstance(key, int) else _join(self._path, key)
        if isinstance(v, dict):
            if key not in v:
                raise ResultsError(f"has no {path}")
            return Figures(v[key], path)
        if isinstance(v, list):
            if isinstance(key, int):
                if not -len(v) <= key < len(v):
                    raise ResultsError(f"has no {path} ({self._path} has {len(v)} elements)")
                return Figures(v[key], path)
            if key in self.REDUCERS:
                return self._reduce(key, path)
            records = self._records if self._records is not None else v
            return Figures([Figures(e, self._path)._at(key)._value for e in v], path, records)
        raise ResultsError(f"has no {path} ({self._path or 'the report'} is {v!r}, not a record)")

    def _reduce(self, how: str, path: str) -> "Figures":
        v = self._value
        if how == "count":
            return Figures(len(v), path)
        if not v:
            raise ResultsError(f"has an empty {self._path}: {how} of nothing")
        if how in ("first", "last"):
            return Figures(v[0 if how == "first" else -1], path)
        if not all(isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) for e in v):
            raise ResultsError(f"has values in {self._path} that are not finite numbers: {how} undefined")
        best = (min if how.endswith("min") else max)(v)
        if how in ("min", "max"):
            return Figures(best, path)
        records = self._records if self._records is not None else v
        return Figures(records[v.index(best)], path)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._at(name)

    def __getitem__(self, key):
        return self._at(key)

    def __format__(self, spec: str) -> str:
        if isinstance(self._value, (dict, list)):
            raise ResultsError(f"has a {type(self._value).__name__} at {self._path}, not a figure")
        try:
            return format(self._value, spec)
        except (ValueError, TypeError) as e:
            raise ResultsError(f"has {self._value!r} at {self._path}, which format {spec!r} cannot show: {e}") from None

    def __repr__(self) -> str:  # ``{x!r}``: a float with every digit it has
        return format(self, "") if isinstance(self._value, (dict, list)) else repr(self._value)

    __str__ = __repr__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def fill(template: str, metrics: dict) -> str:
    """``template`` with its fields read from ``metrics`` (see ``Figures``); raises
    ``ResultsError`` ('has no ...') when the report lacks a field."""
    root = Figures(metrics)
    try:
        return template.format_map(root)
    except (KeyError, IndexError, AttributeError, ValueError) as e:  # a malformed template
        raise ResultsError(f"cannot fill the template {template!r}: {e}") from None


def read_report(reports: Path, name: str) -> dict:
    """``reports/NAME/metrics.json`` of a complete run, or a ``ResultsError`` naming the file."""
    path = reports / name / "metrics.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{path} is missing: {name} has no committed report "
                           f"(make it: nnparity run {name} --out {reports})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path} cannot be read: {e}") from None
    try:
        metrics = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is not valid JSON ({e}): re-make the report "
                           f"(nnparity run {name} --out {reports})") from None
    if not isinstance(metrics, dict):
        raise ResultsError(f"{path} holds a {type(metrics).__name__}, not a report's record")
    if metrics.get("status") != "complete":
        raise ResultsError(f"{path} is a run with status {metrics.get('status')!r}; the table shows complete runs")
    return metrics


def row_templates(net: Network) -> dict:
    """Column key -> template of ``net``'s row: its entry's ``results_row`` over DEFAULT_ROW."""
    if not net.claim:
        raise ResultsError(f"the registry entry of {net.name} (nnparity/training/networks.py) has no claim: what its "
                           "source document reports, for the README's results table")
    given = dict(net.results_row)
    unknown = set(given) - {k for k, _ in COLUMNS} - {"side"}
    if unknown:
        raise ResultsError(f"the results_row of {net.name} names unknown columns {sorted(unknown)}; "
                           f"columns: side, {', '.join(k for k, _ in COLUMNS)}")
    merged = {**DEFAULT_ROW, "document": net.claim, **given}
    for side in SIDES:
        merged.setdefault(side, merged["side"].replace("SIDE", side))
    return merged


def network_row(net: Network, reports: Path) -> list:
    """The cells of ``net``'s row, from its committed report."""
    metrics = read_report(reports, net.name)
    templates = row_templates(net)
    cells = []
    for key, header in COLUMNS:
        try:
            cells.append(fill(templates[key], metrics))
        except ResultsError as e:
            raise ResultsError(f"{reports / net.name / 'metrics.json'} {e} (the {header!r} column of {net.name}'s "
                               "results_row in nnparity/training/networks.py reads it)") from None
    return cells


def markdown_table(headers, rows) -> str:
    """A markdown table; a ``|`` inside a cell is escaped, as markdown wants it."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in rows]
    return "\n".join(lines)


def results_table(reports: Path, names=None) -> str:
    """The README's results table: one row per registered network (or per network of
    ``names``), in registry order."""
    nets = [net for net in NETWORKS.values() if names is None or net.name in names]
    return markdown_table([h for _, h in COLUMNS], [network_row(net, reports) for net in nets])


def _cells(line: str) -> list:
    """The cells of a markdown table line (an escaped ``\\|`` stays inside its cell)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def bench_summary(reports: Path) -> str:
    """The README's bench summary: the float32 rows of ``reports/bench.json`` and where they come from."""
    return bench_summary_json(reports)


def read_bench_json(reports: Path) -> dict:
    """``reports/bench.json``, the figures of ``nnparity bench``, or a ``ResultsError`` naming it."""
    path = reports / BENCH_JSON
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path} is missing (make it: nnparity bench --out {reports / BENCH_FILE})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is not valid JSON ({e}): re-make it with nnparity bench") from None
    if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
        raise ResultsError(f"{path} has no rows: re-make it with nnparity bench")
    return record


def bench_summary_json(reports: Path) -> str:
    record = read_bench_json(reports)
    path = reports / BENCH_JSON
    picked = [r for r in record["rows"] if r.get("dtype") == BENCH_DTYPE]
    if not picked:
        raise ResultsError(f"{path} has no {BENCH_DTYPE} rows")
    try:
        cells = [[cell(r) for _, cell in BENCH_FIGURES] for r in picked]
        load, m = record["load"], record["machine"]
        before, after = load["readings"][0]["loadavg"][0], load["readings"][-1]["loadavg"][0]
        peak = max(r["gemm_gflops"][f"{BENCH_DTYPE}_whole"] for r in picked)
        facts = (f"(Made by `{record['command']}` on {m['cpu']}, {m['cores']} cores; the {record['statistic']} of "
                 f"{record['repeats']} interleaved rounds; 1-minute load {before} before, {after} after; NumPy's "
                 f"{BENCH_DTYPE} GEMM peak on the whole machine, measured in the same run: {peak:.0f} GFLOP/s.)")
        if load["under_load"]:
            facts = f"**Warning: {load['warning']}.**\n\n{facts}"
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ResultsError(f"{path} lacks a figure the summary shows ({type(e).__name__}: {e}): re-make it with "
                           "nnparity bench") from None
    return f"{markdown_table([h for h, _ in BENCH_FIGURES], cells)}\n\n{facts}"


def has_bench(reports: Path) -> bool:
    return (reports / BENCH_JSON).exists()


def generate(reports, need_bench: bool = True) -> dict:
    """Block name -> its generated text, from the reports in ``reports``; without
    ``need_bench``, a folder with no benchmark (``nnparity reproduce``'s) gives no bench block."""
    reports = Path(reports)
    if not reports.is_dir():
        raise ResultsError(f"--reports {reports}: {'not a folder' if reports.exists() else 'no such folder'} "
                           "(the committed reports are in reports/ at the repository root)")
    blocks = {"results": results_table(reports)}
    if need_bench or has_bench(reports):
        blocks["bench"] = bench_summary(reports)
    return blocks


def _span(text: str, block: str, where: str) -> tuple[int, int]:
    """Start and end of the text between ``block``'s markers in ``text``."""
    begin, end = begin_marker(block), end_marker(block)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ResultsError(f"{where} needs exactly one {begin} ... {end} pair around its {block} table")
    return text.index(begin) + len(begin), text.index(end)


def read_readme(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path} cannot be read: {e}") from None


def rewrite(text: str, blocks: dict, where: str = "README.md") -> str:
    """``text`` with each block's markers holding its generated text (blank lines around it)."""
    for block in BLOCKS:
        start, stop = _span(text, block, where)
        text = text[:start] + "\n\n" + blocks[block] + "\n\n" + text[stop:]
    return text


def first_difference(text: str, blocks: dict, where: str = "README.md", reports="reports") -> str | None:
    """One line naming the first row (and cell) where ``text``'s blocks differ from the
    generated ones, or None when they agree."""
    for block in BLOCKS:
        start, stop = _span(text, block, where)
        have = [line for line in text[start:stop].splitlines() if line.strip()]
        want = [line for line in blocks[block].splitlines() if line.strip()]
        if have != want:
            problem = _difference(have, want, reports)
            return f"{where}: the {block} table {problem} (the reports are the truth: {REWRITE})"
    return None


def _difference(have: list, want: list, reports) -> str:
    """What differs between the README's lines of a block and the generated ones, in words."""
    headers = _cells(want[0])

    def rows(lines):
        return {_cells(line)[0]: _cells(line) for line in lines[2:] if line.startswith("|")}

    if have[:2] != want[:2]:
        return f"starts {' '.join(have[:2])!r}; {reports} gives {' '.join(want[:2])!r}"
    have_rows, want_rows = rows(have), rows(want)
    for name, cells in want_rows.items():
        if name not in have_rows:
            return f"lacks the row {name} that {reports} gives"
        if have_rows[name] != cells:
            if len(have_rows[name]) != len(cells):
                return f"row {name} has {len(have_rows[name])} cells; {reports} gives {len(cells)}"
            col = next(j for j in range(len(cells)) if have_rows[name][j] != cells[j])
            return (f"row {name}, column {headers[col]!r}, says {have_rows[name][col]!r}; "
                    f"{reports} gives {cells[col]!r}")
    extra = [name for name in have_rows if name not in want_rows]
    if extra:
        return f"has a row {extra[0]} that no report in {reports} gives"
    if list(have_rows) != list(want_rows):
        return f"has its rows in the order {', '.join(have_rows)}; {reports} gives {', '.join(want_rows)}"
    line, wanted = next((h, w) for h, w in zip_longest(have, want, fillvalue="") if h != w)
    return f"says {line!r} where {reports} gives {wanted!r}"


def command(reports="reports", check=None, write=None, out=print, err=print) -> int:
    """``nnparity results``: print the blocks (exit 0), or check a README's against them (exit 1
    and one line to ``err`` at the first difference), or rewrite them. Raises ``ResultsError``
    when the reports or the README cannot give the tables (the CLI's exit 2)."""
    blocks = generate(reports, need_bench=bool(check or write))
    if check:
        problem = first_difference(read_readme(check), blocks, str(check), str(reports))
        if problem:
            err(problem)
            return 1
        out(f"{check}: the results and bench tables agree with {reports}")
        return 0
    if write:
        text = read_readme(write)
        new = rewrite(text, blocks, str(write))
        if new != text:
            io.write_text(write, new)
        out(f"{write}: the results and bench tables {'rewritten' if new != text else 'already agree'} "
            f"from {reports}")
        return 0
    for block in BLOCKS:
        if block in blocks:
            out(f"{begin_marker(block)}\n\n{blocks[block]}\n\n{end_marker(block)}\n")
        else:
            out(f"(no benchmark in {reports}: nnparity bench --out {Path(reports) / BENCH_FILE} makes one)")
    return 0
