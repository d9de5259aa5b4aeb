"""The layer rules of the package, read from the source (issue 16): no import cycles, nothing but the
registration point imports the wgpu aten handlers, engines never reach up, and kernel parameters are
declared by name (codegen.ParamBlock), never as word numbers.

Imports are counted wherever they are written, inside functions too: a function-level import that
closes a cycle still makes the two modules depend on each other, it only hides it from import time."""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "navitrain"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, modules: dict) -> set[str]:
    """The navitrain modules `name` imports. `from pkg import x` counts as importing pkg.x when that is a
    module, else as importing pkg (its __init__ runs and x comes from there)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in modules else source)
    return {m for m in found if m in modules and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _describe(cycle: list[str], graph: dict[str, set[str]]) -> str:
    members = set(cycle)
    return "\n".join(f"  {m} -> {sorted(graph[m] & members)}" for m in cycle)


def test_the_cycle_finder_finds_a_cycle():
    """The check below is only as good as this: a planted three-module loop must be reported."""
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(planted) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph):
    cycles = _cycles(graph)
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n\n".join(
        _describe(c, graph) for c in cycles)


def test_only_the_registration_point_imports_wgpu_handlers(graph):
    """wgpu/ops/ holds the @implements handlers; everything else sits below them. Only the package
    facade (navitrain.wgpu, which registers them) may import them."""
    handlers = "navitrain.wgpu.ops"
    offenders = {
        name: sorted(t for t in targets if t == handlers or t.startswith(handlers + "."))
        for name, targets in graph.items()
        if not (name == handlers or name.startswith(handlers + ".")) and name != "navitrain.wgpu"
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"modules outside wgpu/ops/ importing handlers: {offenders}"


def test_engines_do_not_import_the_facade_or_handlers(graph):
    """wgpu/kernels/ (engines) depend only on plumbing and each other, not on the `navitrain.wgpu` facade
    (which imports everything) nor on handlers."""
    bad = {
        name: sorted(t for t in targets if t == "navitrain.wgpu" or t.startswith("navitrain.wgpu.ops"))
        for name, targets in graph.items() if name.startswith("navitrain.wgpu.kernels")
    }
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"engines importing the facade or handlers: {bad}"


# pu(3u), pf({base + d}u), pi(k): any read of the parameter block by word number. Only codegen.py, which
# defines pu/pi/pf and ParamBlock, may write one.
_WORD_READ = re.compile(r"\bp[ufi]\(")


def test_the_word_read_pattern_matches_what_it_must():
    for text in ('b0[pu(3u)]', 'f"pu({base + d}u)"', "let e = pf(7u);", "pi(k)"):
        assert _WORD_READ.search(text), text
    for text in ("to_cpu(x)", "from_cpu(t)", "_lenient_cpu(f)", "let e = eps;"):
        assert not _WORD_READ.search(text), text


def test_no_parameter_word_numbers_in_kernel_sources():
    allowed = PACKAGE / "wgpu" / "kernels" / "codegen.py"
    hits = []
    for path in sorted((PACKAGE / "wgpu").rglob("*.py")):
        if path == allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _WORD_READ.search(line):
                hits.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not hits, ("kernel parameters read by word number; declare them with codegen.ParamBlock:\n"
                      + "\n".join(hits[:40]) + (f"\n... and {len(hits) - 40} more" if len(hits) > 40 else ""))
