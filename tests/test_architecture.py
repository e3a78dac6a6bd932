"""The package's shape: small modules, no import cycles, no dispatch on concrete classes or on
``_target_`` strings. These are what keep adding a method, operator, task or stopping rule to one
Python file plus one YAML file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dip_lightning"
MAX_MODULE_LINES = 400
# Packages whose concrete classes must not be dispatched on from outside the package.
PLUGIN_PACKAGES = ("methods", "stopping", "physics")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def runtime_imports(tree: ast.Module, name: str, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports when it runs (``if TYPE_CHECKING:`` blocks left out;
    imports inside functions count: a cycle through a deferred import is still a cycle)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: runtime_imports(parse(path), name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            # A package's __init__ importing its own submodules is not a cycle of concepts.
            if child.startswith(node + "."):
                continue
            if state.get(child) == 1:
                return [*stack[stack.index(child) :], child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def concrete_classes(package: str) -> set[str]:
    """Names of the classes defined in a plugin package (its methods, criteria or operators)."""
    names: set[str] = set()
    for path in (PACKAGE / package).rglob("*.py"):
        names.update(node.name for node in ast.walk(parse(path)) if isinstance(node, ast.ClassDef))
    return names


def isinstance_targets(call: ast.Call) -> set[str]:
    """The class names an ``isinstance(x, ...)`` call tests against."""
    if len(call.args) != 2:
        return set()
    spec = call.args[1]
    elements = spec.elts if isinstance(spec, ast.Tuple) else [spec]
    names = set()
    for element in elements:
        if isinstance(element, ast.Name):
            names.add(element.id)
        elif isinstance(element, ast.Attribute):
            names.add(element.attr)
    return names


def dispatch_violations(package: str) -> list[str]:
    classes = concrete_classes(package)
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / package):
            continue
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
                hits = isinstance_targets(node) & classes
                if hits:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {sorted(hits)}")
    return found


@pytest.mark.parametrize("package", PLUGIN_PACKAGES)
def test_no_isinstance_dispatch_on_a_plugin_package_from_outside(package: str) -> None:
    assert dispatch_violations(package) == []


def target_string_uses(tree: ast.Module) -> list[int]:
    """Lines where a ``_target_`` value is compared, searched or assigned (not merely read to
    instantiate it or checked for presence)."""
    lines = []

    def is_key(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value == "_target_"

    def mentions_target(node: ast.AST) -> bool:
        """Whether ``node`` reads a ``_target_`` value: ``x._target_``, ``x["_target_"]`` or
        ``x.get("_target_", ...)`` (the key name alone, as in ``"_target_" in cfg``, is not)."""
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and sub.attr == "_target_":
                return True
            if isinstance(sub, ast.Subscript) and is_key(sub.slice):
                return True
            reads = isinstance(sub, ast.Call) and getattr(sub.func, "attr", None) == "get"
            if reads and sub.args and is_key(sub.args[0]):
                return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            if mentions_target(node):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "str":
            # A class path is turned into a string only to compare or search it.
            if node.args and mentions_target(node.args[0]):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            searches = node.func.attr in ("endswith", "startswith", "rpartition", "split", "replace")
            if searches and mentions_target(node.func.value):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(mentions_target(t) for t in targets):
                lines.append(node.lineno)
    return sorted(set(lines))


def test_no_target_string_is_compared_or_rewritten() -> None:
    found = {}
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), ROOT / "launch.py"]:
        lines = target_string_uses(parse(path))
        if lines:
            found[str(path.relative_to(ROOT))] = lines
    assert found == {}


def test_the_target_scanner_sees_a_comparison_and_a_rewrite() -> None:
    code = (
        "a = str(cfg._target_) == 'x.Y'\n"
        "cfg._target_ = 'x.Z'\n"
        "b = str(node['_target_']).endswith('Grid')\n"
        "ok = '_target_' in cfg and key != '_target_'\n"
        "c = 'joblib' in str(launcher.get('_target_', ''))\n"
        "t = str(cfg.method._target_)\n"
    )
    assert target_string_uses(ast.parse(code)) == [1, 2, 3, 5, 6]
