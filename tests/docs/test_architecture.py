"""docs/architecture.md names files and functions along one liquidation's path: each must exist, so the page
follows the code; and the boundaries it draws hold: the core imports no other layer (nor pydantic), and no module
or benchmark reads another's private state."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).parents[2]
PAGE = REPO / "docs" / "architecture.md"
ROW = re.compile(r"^\| \d+ \| `(?P<file>[^`]+)` \| `(?P<name>[^`]+)` \|", re.MULTILINE)


def _defines(source: str, name: str) -> bool:
    *owner, function = name.split(".")
    if owner and not re.search(rf"^class {re.escape(owner[0])}\b", source, re.MULTILINE):
        return False
    pattern = rf"^\s*(async def|def|class) {re.escape(function)}\b"
    return re.search(pattern, source, re.MULTILINE) is not None


def test_every_step_names_a_file_and_a_function_that_exist() -> None:
    rows = ROW.findall(PAGE.read_text())
    assert len(rows) >= 20, "the trace lost its steps"
    missing = [f"{file}: {name}" for file, name in rows
               if not (REPO / file).is_file() or not _defines((REPO / file).read_text(), name)]
    assert missing == []


def test_a_step_naming_what_does_not_exist_is_caught() -> None:
    source = (REPO / "services/backstop/pipeline/merge.py").read_text()
    assert _defines(source, "Merger.release")
    assert not _defines(source, "Merger.release_everything")
    assert not _defines(source, "Unmerger.release")


# ------------------------------------------------------------------------------------------------ layering
PACKAGE = REPO / "services" / "backstop"
# What the core may import besides itself: the standard library and two libraries of plain computation.
CORE_LIBRARIES = frozenset({"numpy", "orjson"})


def _imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in a module, those inside functions included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            if node.module == "backstop":  # from backstop import wire
                yield from ((node.lineno, f"backstop.{alias.name}") for alias in node.names)
            else:
                yield node.lineno, node.module


def core_crossings(package: Path) -> list[str]:
    """Imports of the core (backstop.core) that leave it: anything but itself, the standard library, numpy and
    orjson. The wire models (pydantic), the pipeline, the adapters and the command line all stay outside."""
    found = []
    for path in sorted((package / "core").rglob("*.py")):
        for line, module in sorted(_imports(ast.parse(path.read_text()))):
            top = module.split(".")[0]
            if module == "backstop.core" or module.startswith("backstop.core."):
                continue
            if top in sys.stdlib_module_names or top in CORE_LIBRARIES:
                continue
            found.append(f"{path.relative_to(package.parent)}:{line}: imports {module}")
    return found


def test_the_core_imports_neither_the_wire_layer_nor_pydantic_nor_any_adapter() -> None:
    assert core_crossings(PACKAGE) == []


def test_a_core_module_importing_the_wire_models_is_caught(tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "fine.py").write_text("import decimal\nimport orjson\nfrom backstop.core import ledger\n")
    (tmp_path / "core" / "bad.py").write_text(
        "from pydantic import BaseModel\n\ndef late():\n    from backstop.wire.inputs import FillRecord\n"
        "from backstop import wire\n")
    assert core_crossings(tmp_path) == [f"{tmp_path.name}/core/bad.py:1: imports pydantic",
                                        f"{tmp_path.name}/core/bad.py:4: imports backstop.wire.inputs",
                                        f"{tmp_path.name}/core/bad.py:5: imports backstop.wire"]


# ------------------------------------------------------------------------------------------------ private state
def _private_names(tree: ast.AST) -> set[str]:
    """The private names (one leading underscore) a module's classes define: methods, class attributes and
    attributes set on self."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(item.name)
                targets = item.targets if isinstance(item, ast.Assign) else (
                    [item.target] if isinstance(item, ast.AnnAssign) else [])
                names.update(target.id for target in targets if isinstance(target, ast.Name))
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name)
              and node.value.id == "self"):
            names.add(node.attr)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def private_reaches(package: Path, readers: list[Path]) -> list[str]:
    """Reads of a private attribute of the package's classes (an engine's `_open`, an id store's `_runs`) from
    outside the module that defines it, by `readers` (the package itself, the benchmarks): each need has a public,
    documented method instead. `self._x` and `cls._x` are a class's own business."""
    defined: dict[str, set[Path]] = {}
    for path in package.rglob("*.py"):
        for name in _private_names(ast.parse(path.read_text())):
            defined.setdefault(name, set()).add(path)
    found = []
    for path in sorted(readers):
        for node in sorted(ast.walk(ast.parse(path.read_text())), key=lambda n: getattr(n, "lineno", 0)):
            if (isinstance(node, ast.Attribute) and node.attr in defined and path not in defined[node.attr]
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{path.relative_to(package.parent.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_or_benchmark_reaches_into_the_private_state_of_another() -> None:
    readers = [*PACKAGE.rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]
    assert private_reaches(PACKAGE, readers) == []


def test_a_benchmark_reaching_into_the_engine_is_caught(tmp_path: Path) -> None:
    package = tmp_path / "services" / "backstop"
    package.mkdir(parents=True)
    (package / "engine.py").write_text(
        "class Engine:\n    def __init__(self):\n        self._index = {}\n\n    def _open(self):\n"
        "        return self._index\n\n    def top(self):\n        return self._open()\n")
    bench = tmp_path / "bench.py"
    bench.write_text("def run(engine):\n    engine.top()\n    engine._open()\n    return engine._index, engine.x._y\n")
    assert private_reaches(package, [package / "engine.py", bench]) == [
        "bench.py:3: engine._open", "bench.py:4: engine._index"]
