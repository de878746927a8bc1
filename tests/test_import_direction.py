"""Which part of raftlite may import which (docs/architecture.md, "Layers").

The package's parts form layers; an import may only point down:

    core                      pure Raft, codecs, formats: imports nothing of raftlite
    actors                    the deterministic actors: core
    client                    the dqlite-protocol client: core
    sim                       the simulator: actors, core, client
    io                        the real runtime: actors, core
    process_cluster           local node processes for tools and tests: io, client, core
    jepsen_like               everything above, but not the commands
    commands                  everything below them
    cli, __main__, __init__   the entry points: anything
    argument_types            argparse value types: a leaf anyone may use

Besides the direction, two rules keep the graph honest: no cycle between parts, and no
import of a raftlite module inside a function (the usual way to hide a cycle from the
interpreter, and from this test). An import inside a function of a third-party module
(matplotlib, say, imported only when a plot is asked for) is fine.
"""

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "raftlite"

LEAVES = {"argument_types"}
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "actors": {"core"},
    "client": {"core"},
    "sim": {"actors", "core", "client"},
    "io": {"actors", "core"},
    "process_cluster": {"io", "client", "core"},
    "argument_types": set(),
}
ALLOWED["jepsen_like"] = {"core", "actors", "client", "sim", "io", "process_cluster"}
ALLOWED["commands"] = ALLOWED["jepsen_like"] | {"jepsen_like"}
for _part in ALLOWED:
    ALLOWED[_part] |= LEAVES - {_part}
ENTRY_POINTS = {"cli", "__main__", "__init__"}

SKIPPED_FOLDERS = {"tests", "bench", "examples", ".venv", "build"}
SKIPPED_FILES = {"setup.py"}


def _part_of(module: str) -> str:
    """'raftlite.core.raft' -> 'core'; 'raftlite.cli' -> 'cli'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: pathlib.Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def package_imports(path: pathlib.Path) -> list[tuple[str, int, bool]]:
    """(imported raftlite module, line, inside a function) for every import in `path`."""
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                target = _absolute(child, module, is_package)
                if target is not None:
                    names = [target]
            for name in names:
                if name == PACKAGE or name.startswith(PACKAGE + "."):
                    found.append((name, child.lineno, in_function))
            visit(child, inside)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def _package_files() -> list[pathlib.Path]:
    files = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in SKIPPED_FOLDERS or relative.parts[0].startswith(".") or relative.name in SKIPPED_FILES:
            continue
        files.append(path)
    return files


def _edges() -> list[tuple[str, str, str, int, bool]]:
    """(importing part, imported part, file, line, inside a function) across the package."""
    edges = []
    for path in _package_files():
        source = _part_of(_module_name(path))
        for target, line, in_function in package_imports(path):
            edges.append((source, _part_of(target), str(path.relative_to(ROOT)), line, in_function))
    return edges


def test_imports_point_down_the_layers():
    wrong = []
    for source, target, file, line, _ in _edges():
        if source == target or source in ENTRY_POINTS:
            continue
        allowed = ALLOWED.get(source)
        if allowed is None:
            wrong.append(f"{file}: part '{source}' has no place in the layers (add it to ALLOWED and to "
                         f"docs/architecture.md)")
        elif target not in allowed:
            wrong.append(f"{file}:{line}: {source} -> {target}")
    assert wrong == []


# Function-local imports that hide no cycle, each with its reason.
LAZY_IMPORTS_ALLOWED = {
    # `raftlite.Node` and `raftlite.connect` load the runtime and the client on first use,
    # so `import raftlite` (and the simulator's command line) does not pay for them.
    "__init__.py": {"io", "client"},
    # The compiled io_submit extension is optional: a machine without it still runs the
    # portable disk backend (the ImportError is the signal).
    "io/native/__init__.py": {"io"},
}


def test_no_raftlite_import_inside_a_function():
    hidden = [f"{file}:{line}: imports {target} inside a function"
              for source, target, file, line, in_function in _edges()
              if in_function and target not in LAZY_IMPORTS_ALLOWED.get(file, set())]
    assert hidden == []


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    cycles = []

    def walk(node: str, trail: list[str]) -> None:
        for successor in sorted(graph.get(node, ())):
            if successor in trail:
                cycles.append(" -> ".join(trail[trail.index(successor):] + [successor]))
            else:
                walk(successor, trail + [successor])

    for start in sorted(graph):
        walk(start, [start])
    return cycles


def test_no_cycle_between_parts():
    graph: dict[str, set[str]] = {}
    for source, target, *_ in _edges():
        if source != target and source not in ENTRY_POINTS:
            graph.setdefault(source, set()).add(target)
    assert find_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert "a -> b -> a" in find_cycles({"a": {"b"}, "b": {"a"}})


def test_the_walker_sees_relative_and_function_local_imports(tmp_path, monkeypatch):
    # A fake package file: a relative import at the top and an absolute one in a function.
    folder = tmp_path / "sim"
    folder.mkdir()
    sample = folder / "sample.py"
    sample.write_text("from ..core import raft\nfrom . import other\n\ndef f():\n    import raftlite.io.node\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert package_imports(sample) == [("raftlite.core", 1, False), ("raftlite.sim", 2, False),
                                       ("raftlite.io.node", 5, True)]


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_every_layer_named_here_exists(part):
    assert (ROOT / part).is_dir() or (ROOT / f"{part}.py").is_file(), f"{part} is in ALLOWED but not in the package"
