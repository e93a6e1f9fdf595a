"""nnparity/'s folders are layers: a module imports only from its own folder or from a
folder below it (``LAYERS``, bottom first), never upward, not even inside a function.
``core`` is NumPy and the standard library only, so the comparison of two tensors
(``nnparity.core.parity``) works where torch is not installed."""

import ast
import subprocess
import sys
from pathlib import Path

import nnparity

PKG = Path(nnparity.__file__).parent
LAYERS = ("core", "training", "diagnosis", "selftest", "reporting", "api", "cli")


def modules():
    """{dotted name: path} of every module of the package."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer(name: str) -> int:
    """A module's layer: its folder's rank; the package's own __init__ sits on top."""
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else len(LAYERS)


def imported(name: str, path: Path) -> list:
    """(line, module) for every nnparity module ``name`` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            known = modules()
            for a in node.names:  # ``from nnparity.core import io`` imports nnparity.core.io
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if sub in known else base))
    return [(line, m) for line, m in out if m == "nnparity" or m.startswith("nnparity.")]


def test_every_folder_has_a_layer_and_no_module_lies_outside_them():
    folders = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(LAYERS), f"a folder of nnparity/ is not in LAYERS: {folders}"
    loose = sorted(p.name for p in PKG.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside the layer folders: {loose}"


def test_imports_run_downward_only():
    upward = []
    for name, path in modules().items():
        for line, target in imported(name, path):
            if layer(target) > layer(name):
                upward.append(f"{path.relative_to(PKG.parent)}:{line} ({LAYERS[layer(name)] if layer(name) < len(LAYERS) else 'nnparity'}) "
                              f"imports {target} ({LAYERS[layer(target)] if layer(target) < len(LAYERS) else 'nnparity'})")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_the_order_test_sees_an_upward_import(tmp_path):
    """The check above is not vacuous: an upward import is found."""
    fake = tmp_path / "nnparity" / "core" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from ..cli.main import main\n")
    assert imported("nnparity.core.x", fake) == [(2, "nnparity.cli.main")]
    assert layer("nnparity.cli.main") > layer("nnparity.core.x")


def test_core_imports_no_torch_and_compares_without_it():
    core = sorted(m for m in modules() if m.startswith("nnparity.core"))
    assert "nnparity.core.parity" in core
    code = ("import sys\n"
            "sys.modules['torch'] = None  # as if torch were not installed: 'import torch' fails\n"
            "import importlib, numpy as np\n"
            f"for m in {core!r}: importlib.import_module(m)\n"
            "from nnparity.core.parity import compare, tolerance_for\n"
            "a = np.linspace(0, 1, 7)\n"
            "assert compare('grad/w', a, a * (1 + 1e-12), tolerance_for('float64')).passed\n"
            "assert not compare('grad/w', a, a + 1e-3, tolerance_for('float64')).passed\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
