"""The layers, stated: which package of corra may import which, and no import cycles.

As trio's ``test_exports`` pins its namespace, this pins the architecture
(docs/architecture.md): the actor kernel stands alone, the process domain sits on the kernel
and persistence, the host-side chaperone imports nothing of corra, backends know the process
domain's protocol and not each other, and ``api`` and ``cli`` sit on top. Every import counts,
also those inside functions and under ``TYPE_CHECKING``: a layer that needs a name from above it
only for its type hints still depends on it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import corra

ROOT = Path(corra.__file__).parent

#: The layer of each part of corra (a package, or a top-level module), bottom first.
#: A part may import its own layer's modules and those of ALLOWED[part].
ALLOWED: dict[str, set[str]] = {
    "corra._errors": set(),
    "corra._statedir": {"corra._errors"},
    "corra.chaperone": set(),
    "corra.actors": {"corra._errors"},
    "corra.persistence": {"corra._errors", "corra._statedir"},
    "corra.processes": {"corra._errors", "corra._statedir", "corra.actors", "corra.persistence"},
    "corra.backends": {
        "corra._errors",
        "corra._statedir",
        "corra.actors",
        "corra.persistence",
        "corra.processes",
        "corra.chaperone",
    },
    "corra.workflows": {
        "corra._errors",
        "corra._statedir",
        "corra.actors",
        "corra.persistence",
        "corra.processes",
    },
}
#: Above every layer: they may import anything of corra (but nothing imports them, except
#: each other as listed).
TOP = {
    "corra._jobfile": {"corra._runtime", "corra._remote"},
    "corra._remote": set(),
    "corra._runtime": {"corra._remote"},
    "corra._readonly": {"corra._runtime", "corra._remote"},
    "corra.api": {"corra._runtime", "corra._remote", "corra._jobfile"},
    "corra.cli": {
        "corra._runtime",
        "corra._remote",
        "corra._jobfile",
        "corra._readonly",
        "corra.api",
    },
    "corra.testing": {"corra._runtime", "corra._remote", "corra._jobfile"},
    "corra": set(),
}
#: The built-in backends (their modules), which know the process domain and the shared
#: backend infrastructure (transports, pollers, staging), never each other.
BACKENDS: dict[str, tuple[str, ...]] = {
    "local": ("corra.backends.local",),
    "ssh": ("corra.backends.ssh",),
    "slurm": ("corra.backends.slurm", "corra.backends.batch", "corra.backends.scheduler"),
}


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(name: str, path: Path) -> set[str]:
    """Every corra module ``name`` imports, anywhere in it, resolved to absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module == "corra" or module.startswith("corra.")}


def part_of(module: str) -> str:
    """The layer (a key of ALLOWED or TOP) a module belongs to."""
    for part in sorted([*ALLOWED, *TOP], key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    raise AssertionError(f"{module} is in no layer: add it to tests/test_layering.py")


def known(module: str) -> bool:
    """Whether ``module`` is a module of corra (not a name imported from one)."""
    path = ROOT.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_every_module_is_in_a_layer() -> None:
    for name, _ in modules():
        part_of(name)


@pytest.mark.parametrize("name,path", list(modules()), ids=lambda value: str(value))
def test_a_layer_imports_only_what_is_below_it(name: str, path: Path) -> None:
    part = part_of(name)
    if part == "corra":
        return  # the namespace re-exports from every layer
    allowed = ALLOWED.get(part, set()) | TOP.get(part, set())
    if part in TOP:
        allowed |= {*ALLOWED, "corra"}
    wrong = sorted(
        module
        for module in imports(name, path)
        if known(module) and part_of(module) != part and part_of(module) not in allowed
    )
    assert not wrong, f"{name} ({part}) imports {wrong}: not allowed by the layers"


@pytest.mark.parametrize(
    "backend",
    ["local", "ssh", "slurm"],
)
def test_a_backend_does_not_import_another(backend: str) -> None:
    others = tuple(m for other, ms in BACKENDS.items() if other != backend for m in ms)
    for name, path in modules():
        if within(name, BACKENDS[backend]):
            wrong = sorted(module for module in imports(name, path) if within(module, others))
            assert not wrong, f"{name} imports another backend: {wrong}"


def test_the_core_names_no_backend() -> None:
    """Backends are found through the ``corra.backends`` entry points, never by name."""
    core = [name for name, _ in modules() if part_of(name) in {"corra.processes", "corra._runtime"}]
    for name, path in modules():
        if name in core:
            every = tuple(m for ms in BACKENDS.values() for m in ms)
            wrong = sorted(module for module in imports(name, path) if within(module, every))
            assert not wrong, f"{name} names a backend: {wrong}"


def test_the_chaperone_is_standard_library_only() -> None:
    for name, path in modules():
        if part_of(name) == "corra.chaperone":
            outside = sorted(m for m in imports(name, path) if part_of(m) != "corra.chaperone")
            assert not outside, f"{name} imports {outside}"


def test_there_are_no_import_cycles() -> None:
    graph = {
        name: {module for module in imports(name, path) if known(module) and module != name}
        for name, path in modules()
    }
    # A package's __init__ re-exports its modules; importing a module imports its package
    # first, so edges into a package's own __init__ from inside it are not cycles of design.
    for name, edges in graph.items():
        graph[name] = {m for m in edges if not name.startswith(m + ".")}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
