"""The house rules of the layout: the device library imports nothing from the tooling, no module
imports run in a circle, imports inside functions are the few with a stated reason, and the device's
C extension carries none of the tooling's code."""
from __future__ import annotations

import ast
from pathlib import Path

import vnetbe
from vnetbe import _native as device_native

PKG = Path(vnetbe.__file__).resolve().parent
# Imports inside functions, each with its reason in the code.
ALLOWED_LOCAL = {
    ("vnetbe", "vnetbe.tools.guest"),          # vnetbe.GuestDriver, resolved on first use
    ("vnetbe.tools.benchcli", "vnetbe.tools.plot"),   # matplotlib loads only when a chart is drawn
    ("vnetbe.tools.report", "vnetbe.tools.plot"),
    ("vnetbe.tools.plot", "matplotlib"),
    ("vnetbe.tools.plot", "matplotlib.pyplot"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if node.level:
        base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def _imports(mod: str, path: Path) -> tuple[set[str], set[str]]:
    """(module-level imports, imports inside functions) of one module, as dotted names."""
    is_pkg = path.name == "__init__.py"
    top: set[str] = set()
    local: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                names = _resolve(mod, is_pkg, child)
            (local if in_function else top).update(names)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text()), False)
    return top, local


MODULES = _modules()
GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _known(names: set[str]) -> set[str]:
    return {n for n in names if n in MODULES}


def test_the_device_library_imports_nothing_from_the_tooling():
    library = [m for m in MODULES if not m.startswith("vnetbe.tools")
               and m not in ("vnetbe.cli", "vnetbe.__main__", "vnetbe._build_ffi")]
    assert "vnetbe.device" in library and "vnetbe.datapath.user" in library
    for m in library:
        top, _ = GRAPH[m]
        bad = {n for n in top if n.startswith("vnetbe.tools") or n == "vnetbe.cli"}
        assert not bad, f"{m} imports {bad}"


def test_only_the_cli_imports_the_subcommands():
    subcommands = {"vnetbe.tools.benchcli", "vnetbe.tools.serve", "vnetbe.tools.costs", "vnetbe.tools.report", "vnetbe.tools.lab",
                   "vnetbe.tools.cleanup", "vnetbe.tools.provision"}
    for m, (top, _) in GRAPH.items():
        if m in subcommands or m == "vnetbe.cli":
            continue
        users = top & subcommands
        # report builds on the bench's arguments and the cost model; the bench prices with costs and
        # runs in the lab; setup installs what the lab declares it needs: tool-to-tool uses, not registrations.
        if m in ("vnetbe.tools.report", "vnetbe.tools.benchcli", "vnetbe.tools.provision"):
            continue
        assert not users, f"{m} imports subcommand modules {users}"


def test_no_module_level_import_cycle():
    graph = {m: _known(top) - {m} for m, (top, _) in GRAPH.items()}
    # A package importing its own submodules is how packages work; a submodule importing its package
    # back is the cycle to catch, so drop parent-package edges.
    graph = {m: {n for n in deps if not m.startswith(n + ".")} for m, deps in graph.items()}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            visit(n)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, cycles


def test_imports_inside_functions_are_the_ones_with_a_stated_reason():
    found = {(m, n) for m, (_, local) in GRAPH.items() for n in local
             if n.startswith(("vnetbe", "matplotlib")) and (n in MODULES or n.startswith("matplotlib"))}
    assert found <= ALLOWED_LOCAL, found - ALLOWED_LOCAL


def test_the_device_extension_carries_none_of_the_tooling():
    names = dir(device_native.lib)
    assert "vnb_vq_pop" in names and "vnb_dp_start" in names
    tooling = [n for n in names if n.startswith(("vnb_peer", "vnb_drv", "vnb_guest", "vnb_raw", "vnb_cost"))]
    assert tooling == []


CSRC = PKG.parent / "csrc"


def _c_call_graph(folder: Path) -> dict[str, set[str]]:
    """file -> the files in ``folder`` whose externally visible functions it calls."""
    import re   # noqa: PLC0415 (only this test parses C)
    strip = re.compile(r"/\*.*?\*/|//[^\n]*|\"(?:\\.|[^\"\\])*\"", re.S)
    defined, text = {}, {}
    for c in sorted(folder.glob("*.c")):
        src = strip.sub(" ", c.read_text())
        text[c.name] = src
        for m in re.finditer(r"^(?!static\b)[A-Za-z_][\w \t*]*?\b(\w+)\([^;{]*\)\s*\{", src, re.M):
            defined.setdefault(m.group(1), c.name)
    graph = {}
    for name, src in text.items():
        called = set(re.findall(r"\b(\w+)\s*\(", src))
        graph[name] = {defined[f] for f in called if f in defined and defined[f] != name}
    return graph


def test_no_c_file_of_the_device_calls_into_a_file_that_calls_it_back():
    """The datapath loop calls a tap I/O mode, a mode calls the shared steps, never back (the
    shared steps reach a mode only through dp->io): a change to one step is made in one place."""
    graph = _c_call_graph(CSRC / "device")
    assert graph["vnb_dp_core.c"] and graph["vnb_datapath.c"] >= {"vnb_dp_core.c"}, graph   # the parse works
    def reaches(start, goal, seen):
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen))
                   for n in graph.get(start, ()))
    cycles = sorted(f for f in graph if reaches(f, f, set()))
    assert not cycles, {f: graph[f] for f in cycles}
