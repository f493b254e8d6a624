"""Dependencies run one way (issue 14 item 1): an AST-level import graph of the package.

Units are the top-level modules and subpackages of ``relaxedortho`` (``relaxedortho.training``, ``relaxedortho.cli``,
``relaxedortho.linalg``, ...). Imports at module level form the load-time graph; imports inside functions are the
lazy ones (they run at first use)."""
import ast
import pathlib

import relaxedortho

ROOT = pathlib.Path(relaxedortho.__file__).parent
TOP = {"relaxedortho.cli", "relaxedortho.demo", "relaxedortho.__main__"}
#: the bottom layer: imported by everything, imports nothing of the package at load time but each other
BOTTOM = {"relaxedortho._checks", "relaxedortho._lazy", "relaxedortho.exceptions", "relaxedortho.files",
          "relaxedortho.linalg"}


def _unit(name: str) -> str:
    return ".".join(name.split(".")[:2])


def _imports():
    """(importing unit, imported module, imported names, at module level?) for every import of the package."""
    out = []
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mod = ".".join(parts[:-1] if is_pkg else parts)
        pkg = mod if is_pkg else mod.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    if node.module:
                        targets = [(".".join(base + [node.module]), [a.name for a in node.names])]
                    else:  # from .. import losses: submodules
                        targets = [(".".join(base + [a.name]), []) for a in node.names]
                else:
                    targets = [(node.module or "", [a.name for a in node.names])]
            elif isinstance(node, ast.Import):
                targets = [(a.name, []) for a in node.names]
            else:
                continue
            for target, names in targets:
                if target.startswith("relaxedortho"):
                    out.append((mod, target, names, id(node) in top))
    return out


IMPORTS = _imports()


def test_the_graph_was_read():
    assert len(IMPORTS) > 100
    assert any(m.startswith("relaxedortho.cli.") and t.startswith("relaxedortho.training") for m, t, _, _ in IMPORTS)


def test_no_load_time_cycle_between_units():
    edges = {}
    for mod, target, _, top in IMPORTS:
        a, b = _unit(mod), _unit(target)
        if top and a != b and b != "relaxedortho":
            edges.setdefault(a, set()).add(b)

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(a for a in edges if a in reach(a))
    assert not cycles, f"units on a load-time import cycle: {cycles}"


def test_nothing_below_imports_the_cli_or_the_demo():
    upward = sorted({(m, t) for m, t, _, _ in IMPORTS if _unit(t) in TOP and _unit(m) not in TOP})
    assert not upward, f"imports of the command line or the demo from below them: {upward}"
    assert not any(_unit(m) == "relaxedortho.demo" and _unit(t) == "relaxedortho.cli" for m, t, _, _ in IMPORTS)


def test_the_cli_uses_only_the_public_api_of_the_demo():
    private = sorted({(m, n) for m, t, names, _ in IMPORTS if _unit(m) == "relaxedortho.cli"
                      and _unit(t) == "relaxedortho.demo" for n in names if n.startswith("_")})
    assert not private, f"the CLI imports private helpers of the demo: {private}"


def test_the_bottom_layer_imports_nothing_above_it_at_load_time():
    upward = sorted({(m, t) for m, t, _, top in IMPORTS if top and _unit(m) in BOTTOM
                     and _unit(t) not in BOTTOM | {_unit(m)}})
    assert not upward, f"bottom-layer modules importing upward at load time: {upward}"
