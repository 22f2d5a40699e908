"""The repository is self-contained: it cites no document a reader does not have, the package has
no import cycles, and the training configs name no folder of one particular machine."""

from __future__ import annotations

import ast
import json
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "metaportrait"

# Built from parts so that this file does not match what it looks for.
OUTSIDE_DOCUMENT = "DESIGN"
FORBIDDEN = (OUTSIDE_DOCUMENT + ".md", OUTSIDE_DOCUMENT + " §")
# Used when the repository is not a git work tree (e.g. an unpacked archive): folders that are not
# part of the repository's content.
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".gradio", "build", "dist", "data", "runs",
                "outputs", ".cache", "flagged"}


def repo_files() -> list[Path]:
    """Every file of the repository: tracked and untracked-but-not-ignored files when this is a git
    work tree, else every file outside :data:`SKIPPED_DIRS`. ``.git`` and ``.venv`` are never included."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO, capture_output=True, check=True, timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None:
        paths = [REPO / p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]
    else:
        paths = []
        for path in REPO.rglob("*"):
            rel = path.relative_to(REPO).parts
            if not any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in rel[:-1]):
                paths.append(path)
    return [p for p in paths if p.is_file() and p.relative_to(REPO).parts[0] not in (".git", ".venv")]


def test_no_file_cites_a_document_outside_the_repository():
    files = repo_files()
    assert any(p.name == "METHOD.md" for p in files), "the file listing found none of the docs"
    needles = [s.encode() for s in FORBIDDEN]
    offenders = []
    for path in files:
        data = path.read_bytes()
        for needle, text in zip(needles, FORBIDDEN):
            if needle in data:
                line = data[: data.index(needle)].count(b"\n") + 1
                offenders.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert not offenders, (
        "these files cite a design document that is not part of the repository; cite the paper or "
        "docs/METHOD.md instead:\n" + "\n".join(offenders)
    )


# -- import cycles -----------------------------------------------------------------------------------
def package_modules(root: Path = REPO, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """``{dotted module name: (file, is_package)}`` of every module of ``package`` under ``root``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def imported_modules(name: str, path: Path, is_package: bool, modules: Iterable[str]) -> set[str]:
    """The package modules that module ``name`` imports anywhere in its source: at the top, inside
    functions and classes, under ``if TYPE_CHECKING`` — every ``import`` statement of the file.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``.
    Relative imports are resolved against ``name``.
    """
    known = set(modules)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known and m != name}


def import_graph(root: Path = REPO, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = package_modules(root, package)
    return {name: imported_modules(name, path, is_pkg, modules) for name, (path, is_pkg) in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Tarjan's algorithm (iterative): the strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    yield sorted(component)


def cycle_through(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete import cycle inside a strongly connected component (a shortest one through its
    first module), for the failure message: ``[a, b, ..., a]``."""
    members = set(component)
    start = component[0]
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    for node in queue:
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                path = [node]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])  # type: ignore[arg-type]
                return path[::-1] + [start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return component  # not reached: every module of a strongly connected component is on a cycle


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    components = list(strongly_connected(graph))
    assert sorted(components) == [["a", "b", "c"], ["e", "f"]]
    assert cycle_through(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_the_import_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert len(graph) > 50
    # personalize imports the few-shot pipeline only inside main(); the graph must see that edge
    assert "metaportrait.fewshot_pipeline" in graph["metaportrait.personalize"]
    # relative or package-level imports resolve to modules: the face package imports its submodules
    assert "metaportrait.face.crop" in graph["metaportrait.face"]


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    cycles = [" -> ".join(cycle_through(graph, c)) for c in strongly_connected(graph)]
    assert not cycles, (
        "import cycles between metaportrait modules (move the shared code to a module below both):\n"
        + "\n".join(cycles)
    )


# -- configs ---------------------------------------------------------------------------------------
def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.json")))
def test_configs_name_no_absolute_paths(config):
    """Paths in the recipes are relative (to the directory training is started from), so they work
    on any machine; a folder of one machine (``/work/...``, ``~/...``) does not."""
    data = json.loads((REPO / "configs" / config).read_text())
    absolute = [s for s in _strings(data)
                if s.startswith(("/", "~", "\\")) or (len(s) > 2 and s[1] == ":" and s[2] in "/\\")]
    assert not absolute, f"configs/{config} names absolute paths: {absolute}"
