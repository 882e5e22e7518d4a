"""The import rules of docs/architecture.md, checked on the source of reid/ without importing it.

Every module under ``reid/`` is parsed with ``ast``; every import statement anywhere in it (module
level, inside functions, under ``if TYPE_CHECKING:``) and every ``importlib.import_module`` /
``__import__`` call with a literal name is resolved to an absolute module name, relative imports
included. The rules:

(a) no module of a library layer (``reid.metrics``, ``reid.data``, ``reid.models``,
    ``reid.explain``, ``reid.losses``, ``reid.vis``) imports ``reid.engine``, ``reid.config``,
    ``reid.builders`` or ``reid.cli``;
(b) a library layer imports only the library layers that ``ALLOWED_LIBRARY_IMPORTS`` lists for it
    (the table in docs/architecture.md, checked to be the same), and of ``reid.explain`` only the
    workflows (the dump's ``ranking``, ``explainer``, ``run_stats``, ``dump``; ``quality``) import
    other layers; the upper layers import downwards only
    (engine < config < builders < cli); ``reid.io`` imports nothing from ``reid``; the package root
    ``reid/__init__.py`` imports nothing from ``reid``; nothing in ``reid`` imports the scripts
    ``tools`` or ``benchmarks``; every module of ``reid`` belongs to a layer the document names;
(c) nothing in ``reid/`` touches ``sys.path`` (or ``site.addsitedir``);
(d) no import circle among the modules of ``reid`` (inside a package or across packages); imports
    inside functions and under ``if TYPE_CHECKING:`` count, the implicit import of a parent
    package does not (:func:`import_graph`). The checker is tested on fixture packages with and
    without circles written to ``tmp_path``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "reid"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

LIBRARY_LAYERS = ("metrics", "data", "models", "explain", "losses", "vis")
"""Subpackages of ``reid`` that are libraries: plain keyword arguments, no config, no engine."""

UPPER_LAYERS = ("engine", "config", "builders", "cli")
"""Bottom-up: ``reid.engine`` (package), ``reid.config`` and ``reid.builders`` (modules),
``reid.cli`` (package; ``reid/__main__.py`` belongs to it)."""

UTILITY_LAYERS = ("io",)
"""Modules every layer may import; they import nothing from ``reid`` (``reid/io.py``)."""

ALLOWED_LIBRARY_IMPORTS: dict[str, frozenset[str]] = {
    "metrics": frozenset(),
    "data": frozenset(),
    "vis": frozenset(),
    "models": frozenset({"metrics"}),
    "explain": frozenset({"data", "metrics", "vis"}),
    "losses": frozenset({"explain", "metrics"}),
}
"""Library layer -> the other library layers it may import (docs/architecture.md, same table)."""

EXPLAIN_WORKFLOWS = frozenset({
    # explanation dumps (reid explain): ranking -> explainer -> run's statistics -> dump
    "reid.explain.ranking", "reid.explain.explainer", "reid.explain.run_stats", "reid.explain.dump",
    # explanation quality (reid eval-explanations)
    "reid.explain.quality",
})
"""The only modules of ``reid.explain`` that may import other library layers (the two workflows
over a model and a dataset); the rest of the package (the explainers themselves) imports none, so
it works on any embedding model."""

MAY_NOT_IMPORT_UPPER: dict[str, frozenset[str]] = {
    **{layer: frozenset(UPPER_LAYERS) for layer in LIBRARY_LAYERS},
    "engine": frozenset({"config", "builders", "cli"}),
    "config": frozenset({"builders", "cli"}),
    "builders": frozenset({"cli"}),
    "cli": frozenset(),
}
"""Layer -> the upper layers it must not import."""

SCRIPTS = ("tools", "benchmarks")
"""Top-level script folders outside the package; nothing in ``reid`` imports them."""


@dataclass(frozen=True)
class Import:
    """One import found in a module.

    Attributes:
        path: the file, relative to the repository root.
        line: its line number.
        statement: the statement's source text (one line).
        target: the absolute name imported, e.g. ``reid.engine.base`` or ``reid.config``.
    """

    path: str
    line: int
    statement: str
    target: str

    def where(self) -> str:
        return f"{self.path}:{self.line}: `{self.statement}`"


def module_name(path: Path, root: Path = ROOT) -> str:
    """``reid/engine/base.py`` -> ``reid.engine.base``; ``reid/data/__init__.py`` -> ``reid.data``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> str | None:
    """The layer of an absolute module name inside ``reid`` (``""`` for the root), else None."""
    parts = name.split(".")
    if parts[0] != "reid":
        return None
    if len(parts) > 1 and parts[1] == "__main__":
        return "cli"
    return parts[1] if len(parts) > 1 else ""


def _statement_text(source: str, node: ast.AST) -> str:
    text = ast.get_source_segment(source, node) or ast.unparse(node)
    return " ".join(text.split())


def _sys_aliases(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.asname or alias.name for alias in node.names if alias.name == "sys")
    return names


def find_imports(
    source: str, module: str, is_package: bool, path: str, modules: Collection[str] | None = None
) -> list[Import]:
    """Every import in ``source`` (the module ``module``), resolved to absolute names.

    ``from X import a, b`` yields ``X.a`` and ``X.b`` when ``X`` is the package ``reid`` itself or
    a relative package (``from . import a``, ``from .. import config``), since ``a`` is then a
    module; otherwise it yields ``X``. Given ``modules`` (the names of every module there is),
    ``from X import a`` yields ``X.a`` exactly when that is a module (``from reid.data import
    render``: ``reid.data.render``), else ``X``.

    Raises:
        ValueError: a relative import that goes above the top-level package.
    """
    tree = ast.parse(source, filename=path)
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts) - 1:
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if modules is not None:
                targets = [
                    f"{name}.{alias.name}" if f"{name}.{alias.name}" in modules else name
                    for alias in node.names
                ]
            elif not node.module or name == "reid":
                targets = [f"{name}.{alias.name}" for alias in node.names if alias.name != "*"] or [name]
            else:
                targets = [name]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            targets = [node.args[0].value]
        for target in targets:
            found.append(Import(path, node.lineno, _statement_text(source, node), target))
    return sorted(found, key=lambda imp: imp.line)


def find_sys_path_uses(source: str, path: str) -> list[str]:
    """``path:line: text`` of every use of ``sys.path``, ``from sys import path`` or ``addsitedir``."""
    tree = ast.parse(source, filename=path)
    aliases = _sys_aliases(tree)
    hits = []
    for node in ast.walk(tree):
        bad = (
            (isinstance(node, ast.Attribute) and node.attr == "path"
             and isinstance(node.value, ast.Name) and node.value.id in aliases)
            or (isinstance(node, ast.ImportFrom) and node.module == "sys"
                and any(alias.name == "path" for alias in node.names))
            or (isinstance(node, ast.Attribute) and node.attr == "addsitedir")
            or (isinstance(node, ast.ImportFrom) and node.module == "site"
                and any(alias.name == "addsitedir" for alias in node.names))
        )
        if bad:
            hits.append((node.lineno, f"{path}:{node.lineno}: `{_statement_text(source, node)}`"))
    return [text for _, text in sorted(hits)]


def package_modules(package: Path = PACKAGE) -> list[Path]:
    return sorted(package.rglob("*.py"))


def all_imports() -> list[tuple[str, Import]]:
    """``(importing module, import)`` for every module of ``reid``."""
    result = []
    for path in package_modules():
        module = module_name(path)
        rel = path.relative_to(ROOT).as_posix()
        for imp in find_imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", rel):
            result.append((module, imp))
    return result


def import_graph(package: Path = PACKAGE, root: Path = ROOT) -> dict[str, list[Import]]:
    """Module of ``package`` -> its imports of other modules of ``package`` (every import
    statement, wherever it stands, ``if TYPE_CHECKING:`` included; a module importing itself
    is left out). ``from X import a`` counts as importing ``X.a`` where that is a module.

    Importing ``X.a`` also runs ``X/__init__.py`` first; that implicit import of the parent
    package is not an edge (else every module would form a circle with its package's
    ``__init__``), but an explicit ``import X`` or ``from X import f`` is.
    """
    paths = {module_name(path, root): path for path in package_modules(package)}
    graph = {}
    for module, path in paths.items():
        rel = path.relative_to(root).as_posix()
        found = find_imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", rel, paths)
        graph[module] = [imp for imp in found if imp.target in paths and imp.target != module]
    return graph


def import_circles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """One circle of imports per strongly connected group of modules (Tarjan's algorithm), each
    the shortest circle through the group's first module by name, as the imports that form it;
    empty when the graph has no circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(module: str) -> None:  # recursive: the package is a few hundred modules deep at most
        index[module] = low[module] = len(index)
        stack.append(module)
        for imp in graph[module]:
            if imp.target not in index:
                visit(imp.target)
                low[module] = min(low[module], low[imp.target])
            elif imp.target in stack:
                low[module] = min(low[module], index[imp.target])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    circles = []
    for group in sorted(groups, key=min):
        start = min(group)
        paths: dict[str, list[Import]] = {start: []}  # breadth-first inside the group
        frontier = [start]
        circle = None
        while frontier and circle is None:
            following = []
            for module in frontier:
                for imp in graph[module]:
                    if imp.target == start:
                        circle = paths[module] + [imp]
                        break
                    if imp.target in group and imp.target not in paths:
                        paths[imp.target] = paths[module] + [imp]
                        following.append(imp.target)
                if circle is not None:
                    break
            frontier = following
        circles.append(circle)
    return circles


def describe_circle(circle: list[Import]) -> str:
    """``a -> b -> a`` and, indented, the statement of each import of the circle."""
    modules = [circle[-1].target] + [imp.target for imp in circle]  # it ends where it starts
    return " -> ".join(modules) + "".join(f"\n    {imp.where()}" for imp in circle)


def _fail(violations: list[str], rule: str) -> None:
    if violations:
        pytest.fail(f"{rule} (see docs/architecture.md):\n  " + "\n  ".join(violations))


# -- the rules --------------------------------------------------------------------------------


def test_every_module_belongs_to_a_documented_layer():
    known = set(LIBRARY_LAYERS) | set(UPPER_LAYERS) | set(UTILITY_LAYERS) | {""}
    strays = [
        path.relative_to(ROOT).as_posix()
        for path in package_modules()
        if layer_of(module_name(path)) not in known
    ]
    _fail(strays, "modules outside every layer; add their package to docs/architecture.md and this test")


def test_library_layers_do_not_import_the_upper_layers():
    """Rule (a)."""
    violations = []
    for module, imp in all_imports():
        source, target = layer_of(module), layer_of(imp.target)
        if source in LIBRARY_LAYERS and target in UPPER_LAYERS:
            violations.append(f"{imp.where()} imports reid.{target}")
    _fail(violations, "a library layer imports reid.engine, reid.config, reid.builders or reid.cli")


def test_library_layers_import_only_the_allowed_library_layers():
    """Rule (b), between library layers."""
    violations = []
    for module, imp in all_imports():
        source, target = layer_of(module), layer_of(imp.target)
        if source not in ALLOWED_LIBRARY_IMPORTS or target not in LIBRARY_LAYERS or target == source:
            continue
        if target not in ALLOWED_LIBRARY_IMPORTS[source]:
            allowed = ", ".join(f"reid.{name}" for name in sorted(ALLOWED_LIBRARY_IMPORTS[source])) or "no other layer"
            violations.append(f"{imp.where()} imports reid.{target}; reid.{source} may import {allowed}")
    _fail(violations, "a library layer imports a library layer it may not")


def test_explainers_import_no_other_layer():
    """Rule (b): only the explanation workflows of reid.explain import other library layers."""
    violations = []
    for module, imp in all_imports():
        target = layer_of(imp.target)
        if layer_of(module) == "explain" and module not in EXPLAIN_WORKFLOWS and target in LIBRARY_LAYERS:
            if target != "explain":
                violations.append(f"{imp.where()} imports reid.{target}")
    _fail(violations, f"an explainer imports another library layer (only {sorted(EXPLAIN_WORKFLOWS)} may)")


@pytest.mark.parametrize("layer", UPPER_LAYERS)
def test_upper_layers_import_only_downwards(layer):
    """Rule (b): engine imports neither config, builders nor cli; config neither builders nor cli;
    builders not cli."""
    violations = []
    for module, imp in all_imports():
        target = layer_of(imp.target)
        if layer_of(module) == layer and target in MAY_NOT_IMPORT_UPPER[layer]:
            violations.append(f"{imp.where()} imports reid.{target}")
    _fail(violations, f"reid.{layer} imports a layer above it")


def test_no_import_circle():
    """Rule (d): no circle of imports among the modules of ``reid``, inside a package (``base`` ->
    ``hooks`` -> ``base``) or across packages. Every import counts, at module level, inside a
    function or under ``if TYPE_CHECKING:``: a type-only import still ties the two modules together
    (neither can be read, tested or moved without the other); what a module needs of a higher one
    it receives as an argument, typed with a Protocol of a lower module (``reid/engine/state.py``)."""
    _fail([describe_circle(circle) for circle in import_circles(import_graph())], "import circle")


def test_package_root_and_utilities_import_nothing_from_reid():
    """Rule (b): ``import reid.metrics`` must not pull in any other layer through reid/__init__.py,
    and the utility modules (``reid.io``) stand below every layer."""
    violations = [
        f"{imp.where()} imports {imp.target}"
        for module, imp in all_imports()
        if layer_of(module) in ("", *UTILITY_LAYERS) and layer_of(imp.target) is not None
    ]
    _fail(violations, "reid/__init__.py or a utility module imports from reid")


def test_nothing_in_reid_imports_the_scripts():
    """Rule (b): tools/ and benchmarks/ are scripts outside the package."""
    violations = [
        f"{imp.where()} imports {imp.target}"
        for _, imp in all_imports()
        if imp.target.split(".")[0] in SCRIPTS
    ]
    _fail(violations, "reid imports tools or benchmarks")


def test_no_sys_path_manipulation_in_reid():
    """Rule (c)."""
    violations = []
    for path in package_modules():
        violations += find_sys_path_uses(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    _fail(violations, "reid/ touches sys.path")


def test_architecture_document_states_the_same_allowed_graph():
    """docs/architecture.md's table ``| `reid.X` | `reid.Y`, ... |`` equals ALLOWED_LIBRARY_IMPORTS."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("\n## Which library layer may import which\n", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for line in section.splitlines():
        match = re.match(r"\| `reid\.([a-z_]+)` \| (.*?) \|", line)
        if match and match.group(1) in LIBRARY_LAYERS:
            documented[match.group(1)] = frozenset(re.findall(r"`reid\.([a-z_]+)`", match.group(2)))
    assert documented == ALLOWED_LIBRARY_IMPORTS


# -- the checker itself -----------------------------------------------------------------------


def test_checker_resolves_relative_local_and_dynamic_imports():
    source = (
        "import os\n"
        "from .. import config\n"
        "from ..engine.base import ReidEngine\n"
        "from . import hooks\n"
        "from .weights import pair_weights\n"
        "from reid import cli\n"
        "import reid.vis.panels as panels\n"
        "def late():\n"
        "    from reid.engine import builders\n"
        "    return importlib.import_module('reid.config')\n"
    )
    found = find_imports(source, "reid.explain.attention", False, "reid/explain/attention.py")
    assert [(imp.line, imp.target) for imp in found] == [
        (1, "os"),
        (2, "reid.config"),
        (3, "reid.engine.base"),
        (4, "reid.explain.hooks"),
        (5, "reid.explain.weights"),
        (6, "reid.cli"),
        (7, "reid.vis.panels"),
        (9, "reid.engine"),
        (10, "reid.config"),
    ]
    in_package = find_imports("from . import synthetic\n", "reid.data", True, "reid/data/__init__.py")
    assert [imp.target for imp in in_package] == ["reid.data.synthetic"]
    with pytest.raises(ValueError, match="beyond the top-level package"):
        find_imports("from ... import x\n", "reid.data.base", False, "reid/data/base.py")


def test_checker_finds_sys_path_uses():
    source = (
        "import sys as system\n"
        "system.path.insert(0, '.')\n"
        "from sys import path\n"
        "import site\n"
        "site.addsitedir('.')\n"
        "import os\n"
        "os.path.join('a', 'b')\n"
    )
    hits = find_sys_path_uses(source, "m.py")
    assert [hit.split(":")[1] for hit in hits] == ["2", "3", "5"]


def test_checker_sees_the_package():
    modules = {module_name(path) for path in package_modules()}
    expected = {"reid", "reid.config", "reid.engine", "reid.builders", "reid.cli", "reid.io"} | {
        f"reid.{layer}" for layer in LIBRARY_LAYERS
    }
    assert expected <= modules, sorted(expected - modules)


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_checker_finds_import_circles_in_a_fixture_package(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": "from .engine import Engine\n",
        "engine.py": "from .hooks import Hook\nclass Engine: ...\n",
        # a function-level import and a TYPE_CHECKING-only import both close circles
        "hooks.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from .engine import Engine\n"
            "class Hook: ...\n"
        ),
        "data/__init__.py": "from . import validation\n",
        "data/validation.py": "def check():\n    import pkg.data\n",
        "data/images.py": "",
    })
    graph = import_graph(package, tmp_path)
    circles = sorted(describe_circle(circle) for circle in import_circles(graph))
    assert [text.splitlines()[0] for text in circles] == [
        "pkg.data -> pkg.data.validation -> pkg.data",
        "pkg.engine -> pkg.hooks -> pkg.engine",
    ]
    assert "pkg/hooks.py:3: `from .engine import Engine`" in circles[1]
    assert "pkg/data/validation.py:2: `import pkg.data`" in circles[0]


def test_checker_finds_no_circle_in_a_layered_fixture_package(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": "from .engine import Engine\n",
        "state.py": "from typing import Protocol\nclass TrainingState(Protocol): ...\n",
        "engine.py": "from .hooks import Hook\nfrom . import state\nclass Engine: ...\n",
        "hooks.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from .state import TrainingState\n"
            "class Hook: ...\n"
        ),
        # a submodule importing a sibling runs its package's __init__ first: not an edge
        "data/__init__.py": "from .validation import check\nfrom .checked import Checked\n",
        "data/images.py": "def read(): ...\n",
        "data/validation.py": "from .images import read\ndef check(): ...\n",
        "data/checked.py": "from .images import read\nfrom .validation import check\nclass Checked: ...\n",
        "data/base.py": "from pkg.data import checked\n",
    })
    graph = import_graph(package, tmp_path)
    assert import_circles(graph) == []
    # ``from pkg.data import checked`` is an import of the module pkg.data.checked, not of pkg.data
    assert [imp.target for imp in graph["pkg.data.base"]] == ["pkg.data.checked"]
    assert sorted(imp.target for imp in graph["pkg.engine"]) == ["pkg.hooks", "pkg.state"]
