"""The package's layout: data flows one way (no import circle, no package importing one above
it, counting imports inside functions), and the torch-free modules stay torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vqtool"
# Lower packages first: each may import the ground floor and the packages before it.
ORDER = ("models", "images", "data", "vq", "codes", "prior", "reports", "cli")
# What a package must never import, whatever the order says (the coder below the loader).
LOWER = ("models", "images", "data", "codes")
UPPER = ("vq", "prior", "reports", "cli")
# The ground floor's one look upwards: profiles build the one config tree, whose [model] and
# [prior] sections are the networks' own (torch-free) configurations.
GROUND_MAY_IMPORT = {"vqtool.models.config"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every vqtool module that `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from vqtool.codes import entropy` imports the module vqtool.codes.entropy;
            # `from vqtool.cli import app` takes a name from the package's __init__
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    # the root package only names its public API lazily (importlib at attribute access)
    return found - {"vqtool"}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) for name, path in mods.items()}


def package_of(module: str) -> str | None:
    if module == "vqtool.__main__":  # `python -m vqtool` is the command line
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from vqtool.codes import entropy\n    import vqtool.errors\n"
        "    from vqtool.cli import app\n"
    )
    known = {"vqtool.codes.entropy", "vqtool.errors", "vqtool.codes", "vqtool.cli"}
    assert imports_of(source, known) == {"vqtool.codes.entropy", "vqtool.errors", "vqtool.cli"}


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_import_circle() -> None:
    assert find_cycle(graph()) is None


def test_packages_import_only_downwards() -> None:
    wrong = []
    for module, targets in graph().items():
        here = package_of(module)
        for target in targets:
            there = package_of(target)
            if there is None or here is None or there == here:
                if here is None and there is not None and target not in GROUND_MAY_IMPORT:
                    wrong.append(f"ground floor {module} imports {target}")
                continue
            if ORDER.index(there) > ORDER.index(here) or (here in LOWER and there in UPPER):
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_configs_and_profiles_load_without_torch() -> None:
    code = (
        "import sys, vqtool.models.config, vqtool.profiles; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("package", ORDER)
def test_every_package_is_documented(package: str) -> None:
    init = PACKAGE / package / "__init__.py"
    assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


def documented_modules(text: str) -> set[str]:
    """The files the 'Every module' tree of docs/architecture.md names, as vqtool/... paths."""
    block = text.split("## Every module", 1)[1].split("```")[1]
    found: set[str] = set()
    folders: list[tuple[int, str]] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        name = line.split()[0]
        folders = [(i, f) for i, f in folders if i < indent]
        if name.endswith("/"):
            folders.append((indent, name.rstrip("/")))
        else:
            found.add("/".join([f for _, f in folders] + [name]))
    return found


def test_architecture_page_names_every_module_and_no_other() -> None:
    listed = documented_modules((ROOT / "docs" / "architecture.md").read_text())
    actual = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}
    actual -= {p for p in actual if p.endswith("__init__.py") and p != "vqtool/__init__.py"}
    assert sorted(actual - listed) == [] and sorted(listed - actual) == []


def test_every_public_name_resolves() -> None:
    import vqtool

    missing = [name for name in vqtool.__all__ if not hasattr(vqtool, name)]
    assert missing == []


def test_the_readme_python_api_imports_work() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    imports = [line for line in block.splitlines() if line.startswith("from vqtool import")]
    assert len(imports) >= 2
    for line in imports:
        exec(line, {})  # the import lines alone: names that moved would fail here
