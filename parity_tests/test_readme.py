"""The README, read as a newcomer reads it: every snippet and command in it works as written.

* Every ```python block is **executed**, from the repository root, as written: fed to
  ``python -`` with the root as working directory and no PYTHONPATH (what a reader at the
  root gets). A block that defines a pytest test (``def test_``) is run by pytest instead,
  with the plugin that provides the ``nnparity`` fixture. Each is a process of its own,
  forked from a Python that has imported NumPy and torch and nothing of this repository
  (``preloaded.py``): the block imports nnparity afresh, as a reader's interpreter does.
* The ``## Commands`` block must list every option of every subcommand of
  ``nnparity.cli.main.build_parser()``, and no option that does not exist.
* Every ``nnparity ...`` command line (in the ```bash block and in inline code) is
  **parsed** by ``build_parser().parse_args`` and the CLI's option checks (placeholders
  NET / NAME become ``mlp1000``, COMMAND becomes ``run``, ``...`` values of ``--weights`` / ``--biases`` become real
  ones). Commands the README shows as ``python -m ...`` (the test suite itself, ``--rerender``
  of the committed reports) are not run here: ``--rerender`` has its own tests
  (``test_plots.py``).
* A representative subset is **executed** (in-process ``nnparity.cli.main.main``, small settings,
  each stated below next to the README's command): ``list``; the quick start's ``run mlp1000``;
  the README's ``check ... --inject`` example (documented exit status 1); ``gradcheck mlp1000``;
  ``selftest`` of one network; and (``EXECUTED``) every documented run, the noise-floor check
  and ``gradcheck cnn18k`` with small settings appended, against their documented exit
  status. Only parsed: ``bench`` (full-MNIST epochs, no subset option), ``selftest`` of all
  networks, and ``run mlp1000 --lr 1e6`` (its collapse needs more steps than a small run has;
  ``run mlp16 --lr 1e6`` runs and collapses).
"""

import argparse
import os
import re
import shlex
from pathlib import Path

import pytest

from nnparity.cli import main as cli
from preloaded import PreloadedPython

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)


def fenced(lang: str) -> list:
    out = []
    for indent, tag, body in FENCE.findall(README):
        if tag == lang:
            out.append("\n".join(line[len(indent):] for line in body.splitlines()) + "\n")
    return out


def commands_block() -> str:
    section = README[README.index("## Commands"):]
    return FENCE.search(section).group(3)


def documented_commands() -> list:
    """Every ``nnparity ...`` command line of the README, outside the synopsis block."""
    found = []
    for block in fenced("bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("nnparity "):
                    found.append(part)
    for line in commands_block().splitlines():  # synopsis lines without options to fill in
        line = line.split("#")[0].strip()
        if line.startswith("nnparity ") and "[" not in line and line.split()[-1] not in ("NET", "NET]"):
            found.append(line)
    for span in re.findall(r"`([^`]+)`", FENCE.sub("", README)):
        span = " ".join(span.split())
        if span.startswith("nnparity ") and "[" not in span:
            found.append(span)
    return sorted(set(found))


SUBSTITUTE = {"NET": "mlp1000", "NAME": "mlp1000", "COMMAND": "run"}
VALUES = {"--weights": "0.15,0.2,0.25,0.3,0.4,0.45,0.5,0.55", "--biases": "0.35,0.6"}


def argv_of(command: str) -> list:
    words = shlex.split(command)[1:]
    out = []
    for i, w in enumerate(words):
        if w == "..." and i and words[i - 1] in VALUES:
            w = VALUES[words[i - 1]]
        out.append(SUBSTITUTE.get(w, w))
    return out


def test_readme_has_the_snippets_this_test_reads():
    assert len(fenced("python")) >= 2 and fenced("bash")
    assert len(documented_commands()) >= 15


@pytest.fixture(scope="module")
def readers_python():
    """A reader's interpreter at the repository root, without PYTHONPATH, with NumPy and torch
    imported: ``readers_python.run(ARGS, code=...)`` is ``python - ARGS``, ``module=`` ``python -m``."""
    server = PreloadedPython("import numpy, torch", cwd=ROOT,
                             env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    yield server
    server.close()


@pytest.mark.parametrize("index", range(len(fenced("python"))))
def test_python_block_runs_from_the_repository_root(index, tmp_path, readers_python):
    code = fenced("python")[index]
    if "def test_" in code:
        test_file = tmp_path / "test_snippet.py"
        test_file.write_text(code)
        args = ["-q", "-p", "nnparity.api.plugin", "-c", str(tmp_path / "none.ini"), "--rootdir", str(tmp_path),
                str(test_file)]
        (tmp_path / "none.ini").write_text("[pytest]\n")
        proc = readers_python.run(args, module="pytest", timeout=120)
        assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr
    else:
        proc = readers_python.run([], code=code, timeout=120)
        assert proc.returncode == 0, f"README python block {index} fails:\n{code}\n{proc.stderr}"


def _parser_options() -> dict:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {}
    for name, sp in sub.choices.items():
        if name == "parity":  # the old name of check: the same parser
            continue
        options[name] = {s for a in sp._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    return options


def _readme_options() -> dict:
    options, current = {}, None
    for line in commands_block().splitlines():
        head = re.match(r"nnparity (\w+)", line)
        if head:
            current = head.group(1)
        elif line.startswith("python "):
            current = None
        if current:
            options.setdefault(current, set()).update(re.findall(r"--[a-z][a-z0-9-]*", line.split("#")[0]))
    return options


def test_commands_block_lists_every_option_of_every_subcommand():
    parser, readme = _parser_options(), _readme_options()
    assert set(readme) == set(parser), "every subcommand has its line in the Commands block"
    for name in parser:
        assert parser[name] - readme[name] == set(), f"nnparity {name}: options missing from the README"
        assert readme[name] - parser[name] == set(), f"nnparity {name}: the README lists options that do not exist"


@pytest.mark.parametrize("command", documented_commands())
def test_documented_command_parses(command):
    parser = cli.build_parser()
    argv = argv_of(command)
    if len(argv) == 1 and argv[0] in _parser_options() and argv[0] != "list":
        return  # prose naming a subcommand ("`nnparity run` writes ..."): that it exists is the check
    if "--help" in argv:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(argv)
        assert exit_.value.code == 0
        return
    args = parser.parse_args(argv)
    assert cli._option_problem(parser, args) is None, command


def test_documented_commands_execute_with_small_settings(tmp_path, capsys):
    documented = documented_commands()

    def run(readme_command, argv):
        assert readme_command in documented, f"the README no longer shows {readme_command!r}"
        status = cli.main(argv)
        return status, capsys.readouterr().out

    status, out = run("nnparity list", ["list"])
    assert status == 0 and "mlp1000" in out
    # the quick start's main job, on 200 training / 100 test images, 1 epoch
    status, _ = run("nnparity run mlp1000 --epochs 2 --out runs",
                    ["run", "mlp1000", "--epochs", "1", "--train-size", "200", "--test-size", "100", "--parity-steps",
                     "2", "--envelope-steps", "5", "--no-progress", "--out", str(tmp_path)])
    assert status == 0 and (tmp_path / "mlp1000" / "report.md").is_file()
    # the README's check example, over 2 steps instead of 3: documented to exit 1 and name the culprit
    status, out = run("nnparity check mlp1000 --steps 3 --inject relu-straight-through",
                      ["check", "mlp1000", "--steps", "2", "--inject", "relu-straight-through"])
    assert status == 1 and "FIRST DIVERGENCE: step 1" in out and "CULPRIT" in out
    status, out = run("nnparity gradcheck mlp1000", ["gradcheck", "mlp1000", "--samples", "3"])
    assert status == 0, out
    # the kill matrix, of one network
    status, out = run("nnparity selftest", ["selftest", "mlp16"])
    assert status == 0 and "PASS" in out


# Every other documented command that can run in a few seconds, run with small settings
# (appended to the README's own arguments) and its documented exit status. Only `bench`
# (full-MNIST epochs by design: it has no subset option) and `selftest` of all networks in
# float32 (documented exit 1; 20 s here) stay parse-only; `selftest` of one network runs above.
SMALL = ["--epochs", "1", "--train-size", "96", "--test-size", "48", "--parity-steps", "2", "--envelope-steps", "3",
         "--no-progress"]
EXECUTED = [
    # the results table's commands, as the committed reports record them (run into tmp_path here)
    ("nnparity run mlp1000 --no-progress", SMALL, 0),
    ("nnparity run mlp16 --no-progress", SMALL, 0),
    ("nnparity run cnn18k --no-progress", SMALL, 0),
    ("nnparity run linear10 --no-progress", [*SMALL, "--seeds", "1"], 0),
    ("nnparity run toy221", ["--steps", "2"], 0),
    ("nnparity run toy221 --weights ... --biases ...", ["--steps", "2"], 0),
    ("nnparity run mlp16 --lr 1e300", ["--train-size", "96", "--test-size", "48", "--no-progress"], 3),
    ("nnparity run mlp16 --lr 1e6", [*SMALL[2:], "--epochs", "2", "--train-size", "500"], 4),
    ("nnparity check NET --noise-floor", ["--steps", "2"], 0),
    ("nnparity gradcheck cnn18k", ["--samples", "2", "--no-progress"], 0),
    ("nnparity run examples/tanh_mlp.py --no-progress --out reports", SMALL, 0),   # a network by path
    ("nnparity check examples/tanh_mlp_wrong.py --steps 3", ["--steps", "1"], 1),
]


@pytest.mark.parametrize("readme_command,small,expected", EXECUTED, ids=[c for c, _, _ in EXECUTED])
def test_documented_command_runs_with_small_settings(readme_command, small, expected, tmp_path, monkeypatch, capsys):
    assert readme_command in documented_commands(), f"the README no longer shows {readme_command!r}"
    argv = argv_of(readme_command)
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(tmp_path)
    elif argv[0] == "run":
        argv += ["--out", str(tmp_path)]
    # later options win in argparse: the small settings replace the README's long ones
    assert cli.main(argv + small) == expected, capsys.readouterr()
