"""The package's surface: the stubs describe exactly what the module exports, and every public
object has a docstring."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gimp_rs
from gimp_rs import _native


def stub_names() -> set[str]:
    tree = ast.parse((Path(gimp_rs.__file__).parent / "_native.pyi").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_stubs_match_the_native_module():
    exported = {n for n in dir(_native) if not n.startswith("__")} | {"__version__"}
    helpers = {"Estimate", "Report", "TrainResult"}  # TypedDicts that exist only for typing
    assert stub_names() - helpers == exported


def test_every_public_object_has_a_docstring():
    assert (Path(gimp_rs.__file__).parent / "py.typed").is_file()
    for name in gimp_rs.__all__:
        obj = getattr(gimp_rs, name)
        if name != "__version__":
            assert obj.__doc__ and len(obj.__doc__) > 20, name
    for cls in (gimp_rs.Cohort, gimp_rs.Model):
        for attr, member in vars(cls).items():
            if not attr.startswith("_"):
                assert member.__doc__, f"{cls.__name__}.{attr}"


def test_exception_hierarchy():
    assert issubclass(gimp_rs.GimpError, Exception)
    for cls in (gimp_rs.DataError, gimp_rs.ModelError, gimp_rs.InternalError):
        assert issubclass(cls, gimp_rs.GimpError)
    assert issubclass(gimp_rs.CohortError, gimp_rs.DataError)
    assert gimp_rs.DataError.__module__ == "gimp_rs"


def test_set_threads_before_the_first_computation_only():
    code = (
        "import gimp_rs\n"
        "gimp_rs.set_threads(1)\n"
        "try:\n"
        "    gimp_rs.set_threads(2)\n"
        "except gimp_rs.GimpError as e:\n"
        "    print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("refused: cannot set the thread count"), out.stdout + out.stderr
