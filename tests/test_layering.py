"""Layering you can test (issue 50): plcli's import graph has no cycle, no module imports another
module's private names, and docs/architecture.md's tree lists exactly the package's modules.

The graph is read from the source, not from ``sys.modules``: every ``import`` and ``from ... import``
anywhere in a module (at module level, and inside functions and classes, where plcli puts most of
its imports to keep start-up light) is an edge from the importing module to the module it names.
``from plcli import x`` / ``import plcli.x`` / ``from . import x`` all name ``plcli.x`` when it is a
module, and ``plcli`` (the package's ``__init__``) when ``x`` is a name in it. A package's
``__init__`` importing its submodules is an edge like any other; the import of a submodule's parent
package that Python does implicitly is not one (else every such ``__init__`` would be a cycle).
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = {"plcli": ROOT / "plcli"}
# with the benchmark (scripts/bench/, imported as ``bench``), which sits above plcli
WITH_BENCH = {**PACKAGE, "bench": ROOT / "scripts" / "bench"}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module the statement names (the longest first-party module in it)
    name: str | None  # the name taken from ``target`` when that name is not itself a module
    line: int
    nested: bool  # inside a function or class body

    def where(self, modules: dict) -> str:
        return f"{_shown(modules[self.source][0])}:{self.line}"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def modules(packages: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every ``.py`` file of ``packages``."""
    out = {}
    for top, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _walk(node: ast.AST, nested: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        yield child, nested
        inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))
        yield from _walk(child, inner)


def _owner(dotted: str, mods: dict) -> str | None:
    """The longest prefix of ``dotted`` that is one of ``mods``, or None (not first-party)."""
    parts = dotted.split(".")
    while parts and ".".join(parts) not in mods:
        parts.pop()
    return ".".join(parts) or None


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")
    if node.level - 1 > len(base) - 1:
        raise ValueError(f"relative import beyond the top-level package in {package}")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict[str, tuple[Path, bool]]) -> list[Import]:
    """Every first-party import statement of ``mods``, one ``Import`` per imported name."""
    out = []
    for source, (path, is_pkg) in mods.items():
        package = source if is_pkg else source.rpartition(".")[0]
        for node, nested in _walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if target := _owner(alias.name, mods):
                        out.append(Import(source, target, None, node.lineno, nested))
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, package)
                for alias in node.names:
                    if f"{base}.{alias.name}" in mods:
                        out.append(Import(source, f"{base}.{alias.name}", None, node.lineno, nested))
                    elif target := _owner(base, mods):
                        out.append(Import(source, target, alias.name, node.lineno, nested))
    return out


def graph(found: list[Import]) -> dict[str, dict[str, Import]]:
    """source -> {target: the first import of it}; a module naming itself is no edge."""
    out: dict[str, dict[str, Import]] = {}
    for imp in found:
        out.setdefault(imp.source, {})
        if imp.target != imp.source:
            out[imp.source].setdefault(imp.target, imp)
    return out


def cycles(edges: dict[str, dict[str, Import]]) -> list[tuple[list[str], list[str]]]:
    """Each strongly connected set of two or more modules (a tangle: every one imports every other,
    directly or not) as (a shortest cycle ``[a, b, ..., a]`` through its first module, its modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    out = []
    for comp in components:
        start = min(comp)
        prev: dict[str, str] = {}
        queue = deque([start])
        while queue:  # breadth first, within the component, back to the start
            v = queue.popleft()
            for w in sorted(edges.get(v, {})):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    out.append(([start, *reversed(path[:-1]), start], sorted(comp)))
                    queue.clear()
                    break
                if w in comp and w not in prev:
                    prev[w] = v
                    queue.append(w)
    return sorted(out)


def describe(tangle: tuple[list[str], list[str]], edges: dict, mods: dict) -> str:
    cycle, members = tangle
    steps = " ; ".join(f"{a} -> {b} ({edges[a][b].where(mods)})" for a, b in zip(cycle, cycle[1:]))
    rest = sorted(set(members) - set(cycle))
    return steps + (f" ; in the same tangle: {', '.join(rest)}" if rest else "")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(mods: dict[str, tuple[Path, bool]]) -> list[str]:
    """``from m import _x``, and ``m._x`` on a first-party module ``m`` bound by an import, where ``m``
    is another module: each as "file:line: module imports m._x"."""
    out = []
    for imp in imports(mods):
        if imp.name and _private(imp.name) and imp.target != imp.source:
            out.append(f"{imp.where(mods)}: {imp.source} imports {imp.target}.{imp.name}")
    for source, (path, is_pkg) in mods.items():
        package = source if is_pkg else source.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        bound: dict[str, str] = {}  # local name -> first-party module
        for node, _ in _walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in mods:
                        bound[alias.asname] = alias.name
                    elif not alias.asname and alias.name.split(".")[0] in mods:
                        bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, package)
                for alias in node.names:
                    if f"{base}.{alias.name}" in mods:
                        bound[alias.asname or alias.name] = f"{base}.{alias.name}"
        for node, _ in _walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if not (isinstance(value, ast.Name) and value.id in bound):
                continue
            owner = ".".join([bound[value.id], *reversed(chain)])
            if owner in mods and owner != source:
                out.append(f"{_shown(path)}:{node.lineno}: {source} uses {owner}.{node.attr}")
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# The checks on plcli
# ---------------------------------------------------------------------------------------------


def test_the_graph_holds_module_and_function_level_imports():
    mods = modules(PACKAGE)
    found = imports(mods)
    edges = graph(found)
    assert "plcli.cli" in mods and "plcli.data" in mods and "plcli.data.exports.whatsapp" in mods
    assert sum(i.nested for i in found) > 50  # most of plcli's imports sit inside functions
    nested = {(i.source, i.target) for i in found if i.nested}
    assert ("plcli.inference", "plcli.ranking") in nested  # infer_ranked's
    assert "plcli.models.encoders" in edges["plcli.models"]  # a package's __init__ counts
    assert "plcli" in edges["plcli.runs"]  # ``from plcli import __version__``: the package itself


def test_no_import_cycles():
    mods = modules(WITH_BENCH)
    edges = graph(imports(mods))
    found = cycles(edges)
    assert not found, "import cycles (move the shared helper down a layer):\n" + "\n".join(
        describe(c, edges, mods) for c in found
    )


def test_no_module_imports_another_modules_private_names():
    # the scripts too
    scripts = {f"scripts.{f.stem}": (f, False) for f in sorted((ROOT / "scripts").glob("*.py"))}
    found = private_uses({**modules(WITH_BENCH), **scripts})
    assert not found, "private names used across modules (make them public where they live):\n" + "\n".join(
        found
    )


def test_the_package_imports_nothing_from_the_benchmark():
    mods = modules(WITH_BENCH)
    up = [
        f"{i.where(mods)}: {i.source} imports {i.target}"
        for i in imports(mods)
        if i.source.split(".")[0] == "plcli" and i.target.split(".")[0] == "bench"
    ]
    assert "bench.grid" in mods and "bench.common" in mods and not up, "\n".join(up)


# ---------------------------------------------------------------------------------------------
# The checks themselves, on a made-up package
# ---------------------------------------------------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> dict[str, tuple[Path, bool]]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return modules({"pkg": root / "pkg"})


def test_cycles_are_found_through_function_level_and_relative_imports(tmp_path):
    mods = _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg import a\n",  # the package imports its submodule: no cycle by itself
            "pkg/a.py": "import os\n\ndef f():\n    from pkg.sub.b import g\n    return g\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/b.py": "from .. import a\nfrom .c import h\n\ng = h\n",
            "pkg/sub/c.py": "def h():\n    import pkg.sub.b\n",
            "pkg/d.py": "from pkg import VERSION\nfrom pkg.a import f\n",
        },
    )
    edges = graph(imports(mods))
    assert edges["pkg"] == {"pkg.a": edges["pkg"]["pkg.a"]} and "pkg" in edges["pkg.d"]
    found = cycles(edges)
    assert found == [(["pkg.a", "pkg.sub.b", "pkg.a"], ["pkg.a", "pkg.sub.b", "pkg.sub.c"])]
    text = describe(found[0], edges, mods)
    assert text.startswith("pkg.a -> pkg.sub.b (") and "pkg/a.py:4)" in text and "pkg/sub/b.py:1)" in text
    assert text.endswith("in the same tangle: pkg.sub.c")


def test_a_cycle_of_three_is_reported_as_one_path(tmp_path):
    mods = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/x.py": "from pkg.y import f\n",
            "pkg/y.py": "def f():\n    from pkg import z\n",
            "pkg/z.py": "class C:\n    def m(self):\n        from . import x\n",
        },
    )
    assert cycles(graph(imports(mods))) == [
        (["pkg.x", "pkg.y", "pkg.z", "pkg.x"], ["pkg.x", "pkg.y", "pkg.z"])
    ]


def test_private_names_are_found_in_imports_and_attributes(tmp_path):
    mods = _package(
        tmp_path,
        {
            "pkg/__init__.py": "__version__ = '1'\n",
            "pkg/a.py": "_hidden = 1\n\ndef _f():\n    return _hidden\n",
            "pkg/b.py": "from pkg import __version__\nfrom pkg.a import _f\n",
            "pkg/c.py": "def g(self):\n    from pkg import a\n    import pkg.a as m\n"
            "    return a._hidden, m._f, self._x\n",
            "pkg/d.py": "import pkg.a\n\nx = pkg.a._hidden\n",
        },
    )
    found = private_uses(mods)
    assert [f.split(": ", 1)[1] for f in found] == [
        "pkg.b imports pkg.a._f",
        "pkg.c uses pkg.a._f",
        "pkg.c uses pkg.a._hidden",
        "pkg.d uses pkg.a._hidden",
    ]


# ---------------------------------------------------------------------------------------------
# docs/architecture.md's tree
# ---------------------------------------------------------------------------------------------

ENTRY = re.compile(r"[\w.-]+(?:\.py|/)(?:, [\w.-]+(?:\.py|/))*(?=\s{2,}|$)")


def doc_tree(text: str) -> list[str]:
    """The paths the first code block under "## The tree" lists: a line is ``name  description`` (or
    ``a.py, b.py  description``) indented two spaces per folder level (a folder ends with ``/``); a line
    that is no entry continues the description above it and is indented deeper than that entry."""
    block = text.split("## The tree", 1)[1].split("```", 2)[1]
    paths: list[str] = []
    folders: list[str] = []  # the folder of each open level
    last = -1
    for n, line in enumerate(block.splitlines(), 1):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        m = ENTRY.match(line[indent:])
        if not m:
            assert indent > last >= 0, f"tree line {n} is neither an entry nor a continuation: {line!r}"
            continue
        assert indent % 2 == 0 and indent // 2 <= len(folders), f"tree line {n}: bad indentation: {line!r}"
        del folders[indent // 2 :]
        for name in m.group(0).split(", "):
            paths.append("".join(folders) + name)
        if m.group(0).endswith("/"):
            folders.append(m.group(0))
        last = indent
    return paths


def test_the_doc_tree_parser(tmp_path):
    text = """# X\n\n## The tree\n\n```\npkg/\n  a.py      one\n  sub/      a folder\n    __init__.py  init
    b.py, c.py   two; a description that goes on
                 on the next line, sub/ named in it
  d.py      back up\nscripts/\n  e.py  x\n```\n\n```\nother.py  not the tree\n```\n"""
    assert doc_tree(text) == [
        "pkg/",
        "pkg/a.py",
        "pkg/sub/",
        "pkg/sub/__init__.py",
        "pkg/sub/b.py",
        "pkg/sub/c.py",
        "pkg/d.py",
        "scripts/",
        "scripts/e.py",
    ]


def test_architecture_tree_lists_every_module_of_the_package():
    """Every plcli/**/*.py (``__init__`` and ``__main__`` included) and every scripts/bench/*.py is in
    docs/architecture.md's tree, and every file or folder the tree names under plcli/ and scripts/ exists."""
    listed = doc_tree((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    assert len(listed) == len(set(listed)), "listed twice: " + ", ".join(
        p for p in set(listed) if listed.count(p) > 1
    )
    code = {
        str(p.relative_to(ROOT)) for top in ("plcli", "scripts/bench") for p in (ROOT / top).rglob("*.py")
    }
    missing = sorted(code - set(listed))
    assert not missing, "modules the tree in docs/architecture.md does not list: " + ", ".join(missing)
    gone = sorted(p for p in listed if p.startswith(("plcli/", "scripts/")) and not (ROOT / p).exists())
    assert not gone, "the tree in docs/architecture.md lists what does not exist: " + ", ".join(gone)
    assert not any(p.startswith("plcli/bench") for p in listed)
