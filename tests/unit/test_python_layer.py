"""The Python layer's structure: no import cycle, no private reach-ins, and one
MachineCore shared by a machine, its processes and its device.

The structural checks read the sources (ast), so they hold without
import-linter installed; ``lint-imports`` checks the same layering from
pyproject.toml.
"""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

import pytest

import migengine as me

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "migengine"
SOURCES = sorted(PKG.rglob("*.py"))
# namedtuple's public API is spelt with a leading underscore.
NAMEDTUPLE_API = {"_fields", "_asdict", "_replace", "_make", "_field_defaults"}


def _module(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.Module, module: str) -> set[str]:
    """migengine modules (outside migengine.kernels) imported at module level,
    not counting ``if TYPE_CHECKING:`` blocks."""
    out: set[str] = set()
    modules = {_module(p) for p in SOURCES}
    for node in tree.body:
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                pkg = module.rsplit(".", node.level)[0]
                base = f"{pkg}.{base}"
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and name != "migengine":
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    return {_module(p): _runtime_imports(ast.parse(p.read_text()), _module(p)) for p in SOURCES}


def test_module_level_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, node, dep]))
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_api_modules_import_each_other_downward_only():
    graph = _graph()
    assert "migengine.machine" not in graph["migengine.process"]
    assert "migengine.machine" not in graph["migengine.device"]
    assert "migengine.device" not in graph["migengine.migrate"]
    assert "migengine.migrate" not in graph["migengine.device"]
    assert {"migengine.device", "migengine.process", "migengine._core"} <= graph[
        "migengine.machine"
    ]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_level_import_of_migengine(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    assert not (inner.module or "").startswith("migengine") and not inner.level, (
                        f"{path.name}:{inner.lineno} imports migengine inside {node.name}()"
                    )
                if isinstance(inner, ast.Import):
                    assert not any(a.name.startswith("migengine") for a in inner.names)


def _own_private_names(tree: ast.Module) -> set[str]:
    """Underscored names this module defines: functions, methods, classes and
    attributes it assigns through ``self``/``cls``."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
                own.add(node.attr)
    return {name for name in own if name.startswith("_")}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_names_of_other_modules(path):
    """No ``m._handle``, ``machine._need_data()``, ``from x import _y``: a module
    touches only the underscored names it defines itself."""
    tree = ast.parse(path.read_text())
    own = _own_private_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            private = [a.name for a in node.names if a.name.startswith("_")]
            private = [name for name in private if not name.startswith("__")]
            assert not private, f"{path.name}:{node.lineno} imports private {private}"
        if isinstance(node, ast.Attribute):
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__") or attr in NAMEDTUPLE_API:
                continue
            assert attr in own, f"{path.name}:{node.lineno} reaches into another module's .{attr}"


@pytest.mark.parametrize(
    "module",
    [
        "migengine.process",
        "migengine.device",
        "migengine.migrate",
        "migengine.machine",
        "migengine.bench",
        "migengine.cli",
    ],
)
def test_each_module_imports_first_in_a_fresh_interpreter(module):
    """No import order matters: a cycle would fail for some first import."""
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_pyproject_ships_every_package_of_migengine():
    """A non-editable install ships only the packages pyproject lists: every
    package of migengine/ and of kernels/ (installed as migengine.kernels)."""
    text = (ROOT / "pyproject.toml").read_text()  # no tomllib before Python 3.11
    match = re.search(r"^packages = \[(.*?)\]$", text, re.MULTILINE | re.DOTALL)
    assert match is not None
    listed = set(re.findall(r'"([^"]+)"', match.group(1)))
    on_disk = {_module(p.parent / "__init__.py") for p in PKG.rglob("__init__.py")}
    on_disk |= {
        "migengine." + _module(p.parent / "__init__.py")
        for p in (ROOT / "kernels").rglob("__init__.py")
    }
    assert "migengine.kernels.device" in on_disk
    assert on_disk <= listed, on_disk - listed


def test_machine_process_and_device_share_one_core(make_machine):
    m = make_machine(64, 16, page_size=4096)
    p = m.new_process()
    core = m.core
    assert m.state is core.state
    handle = core.handle
    for _ in range(8):  # enough VMAs to outgrow the first tables
        p.mmap(64)
    assert m.state is core.state  # the machine sees the state the core reallocated
    assert core.page_size == m.page_size == 4096
    assert isinstance(handle, int) and isinstance(core.handle, int)
    child = p.fork()
    assert len(child.vmas()) == len(p.vmas()) and m.state is core.state
    assert m.device.ops == me.MigrateOps(m.device.ops.alloc_and_copy, m.device.ops.finalize_and_map)


def test_need_data_refuses_a_metadata_only_machine(make_machine):
    m = make_machine(8, store_data=False)
    with pytest.raises(me.MigengineError, match="metadata only"):
        m.core.need_data()
    p = m.new_process()
    vma = p.mmap(1)
    with pytest.raises(me.MigengineError, match="metadata only"):
        p.read(vma.start, 1)
