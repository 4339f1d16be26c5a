"""The direction of the house: which package may import which, no import loops, and a registry (and
policy loading) that needs neither torch nor Triton.

Layers, ground floor first (docs/package.md): a package imports only the packages listed for it.
Imports are read from the source (module level and inside functions alike), so a lazy import is
held to the same rule as any other.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dsv4_tune"
ALLOWED: dict[str, set[str]] = {
    "env": {"errors"},
    "errors": set(),
    "files": set(),
    "registry": {"errors"},
    "runtime": {"env", "errors", "registry"},
    "kernels": {"env", "errors", "registry", "runtime"},
    "cache": {"errors", "files", "registry"},
    "policies": {"env", "errors", "files", "registry"},
    "serving": {"env", "errors", "registry", "runtime", "kernels", "policies"},
    "compat": {"env", "errors", "registry", "runtime", "kernels", "policies", "serving"},
    "tuner": {"env", "errors", "files", "registry", "runtime", "kernels", "policies", "serving", "cache"},
    "report": {"errors", "files", "registry", "policies", "cache", "tuner"},
    "cli": {"env", "errors", "files", "registry", "runtime", "kernels", "policies", "serving", "cache", "tuner",
            "report"},
    "__init__": {"errors", "registry", "policies", "serving"},
}
# No torch / triton at module level (policies: only inside functions).
PURE = ("env", "errors", "files", "registry", "policies")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, module: str, top_level_only: bool = False) -> set[str]:
    """The absolute names this file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")[: -node.level + (1 if path.name == "__init__.py" else 0) or None]
                base = ".".join([*pkg, base] if base else pkg)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


MODULES = _modules()


def _internal(names: set[str]) -> set[str]:
    return {n for n in names if n in MODULES}


def test_every_module_belongs_to_a_layer() -> None:
    assert {_layer(m) for m in MODULES} <= set(ALLOWED), sorted({_layer(m) for m in MODULES} - set(ALLOWED))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_direction(module: str) -> None:
    layer = _layer(module)
    bad = sorted(n for n in _internal(_imports(MODULES[module], module))
                 if _layer(n) != layer and _layer(n) not in ALLOWED[layer])
    assert not bad, f"{module} ({layer}) may import only {sorted(ALLOWED[layer])}, imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in PURE))
def test_ground_floor_imports_no_torch_or_triton(module: str) -> None:
    found = _imports(MODULES[module], module, top_level_only=True)
    heavy = {n for n in found if n.split(".")[0] in ("torch", "triton")}
    assert not heavy, f"{module} imports {sorted(heavy)} at module level"


def test_no_import_loops() -> None:
    graph = {m: _internal(_imports(p, m)) - {m} for m, p in MODULES.items()}
    # A package's __init__ is imported with each of its modules; edges to it are edges to the package.
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import loop: " + " -> ".join([*path[path.index(m):], m]))
        if m in done:
            return
        for n in graph.get(m, ()):
            visit(n, [*path, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_nothing_is_imported_by_name_string() -> None:
    """Launchers and runners are reached by direct calls: no ``"module:function"`` strings, and no
    ``import_module`` but the package face's lazy public names (which point down, never up)."""
    for module, path in MODULES.items():
        text = path.read_text()
        named = [n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 and re.fullmatch(r"dsv4_tune(\.\w+)+:\w+", n.value)]
        assert not named, f"{module} names {named}"
        assert "import_module(" not in text or module == "dsv4_tune", f"{module} imports by name"


def test_loading_every_shipped_policy_imports_neither_torch_nor_triton() -> None:
    code = """
import json, sys
import dsv4_tune.registry.variants, dsv4_tune.registry.ops, dsv4_tune.registry.arch, dsv4_tune.registry.buckets
from dsv4_tune.policies.dispatcher import Dispatcher, shipped_policies
from dsv4_tune.policies.schema import load_policy
from dsv4_tune.registry.workload import OpWorkload, Workload
for path in shipped_policies():
    d = Dispatcher(load_policy(path), str(path))
    d.lookup(Workload(64, 128, 128, 1024)); d.lookup(Workload(3, 64, 128), eager=True)
    d.lookup_op(OpWorkload.make("compress", 8, ratio=4, head_dim=512, mode="decode"))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "triton", "numpy"))))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_every_decode_variant_has_a_launcher_and_no_launcher_lacks_a_variant() -> None:
    from dsv4_tune.registry.variants import VARIANTS
    from dsv4_tune.serving.variants import LAUNCHERS

    assert set(LAUNCHERS) == set(VARIANTS)
