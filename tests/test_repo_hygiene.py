"""The repository is self-contained: it cites no document a reader does not have, the package has
no import cycles, and the training configs name no folder of one particular machine."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
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
    # personalization imports the few-shot fine-tuning only inside main(); the graph must see that edge
    assert "metaportrait.training.fewshot_finetune" in graph["metaportrait.training.personalize"]
    # relative or package-level imports resolve to modules: the face package imports its submodules
    assert "metaportrait.face.crop" in graph["metaportrait.face"]


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    cycles = [" -> ".join(cycle_through(graph, c)) for c in strongly_connected(graph)]
    assert not cycles, (
        "import cycles between metaportrait modules (move the shared code to a module below both):\n"
        + "\n".join(cycles)
    )


# -- module size -------------------------------------------------------------------------------------
MAX_MODULE_LINES = 600


def test_no_module_is_over_600_lines():
    """A module a reader can hold in their head: split a longer one along a real seam (and re-export
    the moved names where callers import them)."""
    modules = package_modules()
    assert len(modules) > 50
    long = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, (path, _) in modules.items()}
    long = {name: n for name, n in long.items() if n > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {dict(sorted(long.items()))}"


# -- layering: inference does not import training ----------------------------------------------------
# Modules that are not inference: the training code, the evaluation protocols (they read prepared
# training data) and the module that re-exports personalization's old names.
NOT_INFERENCE = ("metaportrait.training", "metaportrait.evaluation", "metaportrait.personalize")
# What a user of the package imports to run it; each is imported alone in a fresh interpreter.
INFERENCE_ENTRY_POINTS = ("metaportrait.pipeline", "metaportrait.fewshot_pipeline", "metaportrait.live",
                          "metaportrait.render", "metaportrait.superres", "metaportrait.cli", "metaportrait.adapters",
                          "metaportrait.weights", "metaportrait.person", "metaportrait.video", "metaportrait.models",
                          "metaportrait.face")


def is_inference(module: str) -> bool:
    return not any(module == m or module.startswith(m + ".") for m in NOT_INFERENCE)


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str | None]:
    """``{module: the module that imports it}`` for every module ``start`` imports, directly or not."""
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    for node in queue:
        for nxt in sorted(graph.get(node, ())):
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return parent


def test_inference_code_never_imports_training_code():
    """Anywhere in its source, inside functions too: no inference module reaches metaportrait.training
    through any chain of imports (app.py and the CLI, the top layer, call training directly)."""
    graph = import_graph()
    inference = [m for m in graph if is_inference(m)]
    assert "metaportrait.pipeline" in inference and "metaportrait.fewshot_pipeline" in inference
    offenders = []
    for module in inference:
        parent = reachable(graph, module)
        for hit in sorted(m for m in parent if not is_inference(m)):
            chain = [hit]
            while parent[chain[-1]] is not None:
                chain.append(parent[chain[-1]])  # type: ignore[arg-type]
            offenders.append(" -> ".join(chain[::-1]))
            break
    assert not offenders, "inference modules import training code:\n" + "\n".join(offenders)


def test_the_reachability_check_sees_chains():
    graph = {"metaportrait.pipeline": {"metaportrait.a"}, "metaportrait.a": {"metaportrait.training.x"},
             "metaportrait.training.x": set()}
    assert reachable(graph, "metaportrait.pipeline")["metaportrait.training.x"] == "metaportrait.a"
    assert not is_inference("metaportrait.training.x") and is_inference("metaportrait.a")


@pytest.mark.parametrize("module", INFERENCE_ENTRY_POINTS)
def test_importing_inference_loads_no_training_module(module):
    """At run time as well: importing an inference entry point in a fresh interpreter puts no
    metaportrait.training (or evaluation) module in ``sys.modules``."""
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('metaportrait'))))")
    out = subprocess.run([sys.executable, "-c", code, module], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert module in loaded
    assert not [m for m in loaded if not is_inference(m)], f"importing {module} loaded {loaded}"


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
