"""Every import points down: the import graph of aria_hpc/, built from the code, against the layer
order written in docs/design.md section 3. No circle, no import that goes up, no unplaced module."""

import ast
import re

from conftest import ROOT

PACKAGE = ROOT / "aria_hpc"


def modules(package=PACKAGE) -> dict[str, object]:
    """'bank/reader' -> its path, for every module; a package is named by its directory."""
    found = {}
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found["/".join(parts) or "aria_hpc"] = path
    return found


def imports(mods: dict) -> dict[str, set[str]]:
    """module -> the aria_hpc modules it imports anywhere in its code (inside functions too)."""
    graph = {}
    for name, path in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                bases = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import; aria_hpc imports absolutely"
                base = node.module or ""
                bases = [(base, [a.name for a in node.names])]
            else:
                continue
            for base, names in bases:
                if base != "aria_hpc" and not base.startswith("aria_hpc."):
                    continue
                stem = base.removeprefix("aria_hpc").removeprefix(".").replace(".", "/") or "aria_hpc"
                subs = [f"{stem}/{n}".removeprefix("aria_hpc/") for n in names]
                hits = [s for s in subs if s in mods]  # `from aria_hpc.bank import reader` imports the module
                if hits:
                    targets.update(hits)
                elif stem in mods:
                    targets.add(stem)
        graph[name] = targets - {name}
    return graph


def layers() -> list[list[str]]:
    """The paths of each numbered layer in docs/design.md section 3, from the bottom."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("## 3.", 1)[1].split("\n## ", 1)[0]
    items = re.split(r"\n(?=\d+\. \*\*)", section)[1:]
    assert items, "docs/design.md section 3 lists no layers"
    return [re.findall(r"`([A-Za-z0-9_/]+)`", item.split("\n\n")[0]) for item in items]


def placement(mods: dict, order: list[list[str]]) -> dict[str, int]:
    paths = {p: i for i, layer in enumerate(order) for p in layer}
    unknown = sorted(p for p in paths if p not in mods)
    assert not unknown, f"docs/design.md section 3 names modules that do not exist: {unknown}"
    place = {}
    for name in mods:
        matches = [p for p in paths if name == p or name.startswith(p + "/")]
        if matches:
            place[name] = paths[max(matches, key=len)]
    return place


def upward(graph: dict, place: dict) -> list[str]:
    return sorted(f"{a} (layer {place[a] + 1}) imports {b} (layer {place[b] + 1})"
                  for a, targets in graph.items() for b in targets
                  if a in place and b in place and place[b] > place[a])


def circles(graph: dict) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_design_places_every_module():
    mods = modules()
    place = placement(mods, layers())
    assert sorted(set(mods) - set(place)) == [], "place these modules in docs/design.md section 3"


def test_every_import_points_down_or_sideways():
    mods = modules()
    assert upward(imports(mods), placement(mods, layers())) == []


def test_no_import_circle():
    assert circles(imports(modules())) == []


def test_the_checks_catch_what_they_guard(tmp_path):
    """On a package written here: a function-level upward import, a from-package import of a
    module, and a circle through two modules are all found."""
    pkg = tmp_path / "aria_hpc"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from aria_hpc.high import g\n")
    (pkg / "low" / "b.py").write_text("from aria_hpc.low import a\n")
    (pkg / "high.py").write_text("import aria_hpc.low.b\n\ndef g():\n    pass\n")
    mods = modules(pkg)
    graph = imports(mods)
    assert graph["low/a"] == {"high"} and graph["low/b"] == {"low/a"} and graph["high"] == {"low/b"}
    place = placement(mods, [["aria_hpc", "low"], ["high"]])
    assert upward(graph, place) == ["low/a (layer 1) imports high (layer 2)"]
    assert circles(graph) == [["high", "low/a", "low/b"]]
    assert circles(imports(modules())) == [] and "errors" in imports(modules())["fsio"]
