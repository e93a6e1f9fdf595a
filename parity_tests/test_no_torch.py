"""scratch/ is NumPy only: importing every scratch module never imports torch."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import scratch

SCRATCH = Path(scratch.__file__).parent


def all_scratch_modules():
    return sorted(m.name for m in pkgutil.walk_packages([str(SCRATCH)], prefix="scratch."))


def test_every_scratch_module_imports_without_torch():
    modules = all_scratch_modules()
    assert "scratch.nets.mlp1000" in modules and "scratch.layers" in modules
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.'))\n"
            "print(len(bad)); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=SCRATCH.parent)
    assert proc.returncode == 0, f"importing scratch pulled in torch: {proc.stdout} {proc.stderr}"


def test_no_scratch_source_mentions_torch_imports():
    offenders = []
    for path in SCRATCH.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] in ("torch", "torchvision", "nnparity", "reference")]
    assert not offenders, offenders
