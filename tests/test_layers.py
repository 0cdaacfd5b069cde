"""The package layers: nothing imports from a package above it, and packages form no cycle.

    errors/atomic/configs/threads/losses -> kernels, distributed -> sae -> data, activations
        -> train -> eval, scaling, sweep, steer -> dashboard, reproduce -> commands -> cli

Every import in every module counts, including the ones inside functions. ``commands/`` is a
leaf: only the CLI imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import saescale

LAYERS = [
    {"errors", "atomic", "configs", "threads", "losses"},
    {"kernels", "distributed"},
    {"sae"},
    {"data", "activations"},
    {"train"},
    {"eval", "scaling", "sweep", "steer"},
    {"dashboard", "reproduce"},
    {"commands"},
    {"cli", "cliargs", "__main__", "__init__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def package_of(parts: list[str]) -> str:
    """'saescale.sae.topk' -> 'sae'; 'saescale.losses' -> 'losses'; 'saescale' -> '__init__'."""
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, module: list[str]) -> set[str]:
    """The saescale packages a module imports (absolute and relative, anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (module[: len(module) - node.level] if node.level else []) + (node.module or "").split(".")
            names = [[p for p in [*base, a.name] if p] for a in node.names]  # a name may be a module
        else:
            continue
        found |= {package_of(n) for n in names if n and n[0] == "saescale"}
    return found


def violations(root: Path) -> list[str]:
    """Upward imports, unknown packages and package cycles under the package folder ``root``."""
    problems, edges = [], {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("").parts
        module = [p for p in rel if p != "__init__"] if rel[-1] == "__init__" else list(rel)
        pkg = package_of(list(rel))
        for dep in imports(path, module if rel[-1] != "__init__" else [*module, "__init__"]):
            if pkg not in LAYER or dep not in LAYER:
                problems.append(f"{'/'.join(rel)}.py: package {pkg if pkg not in LAYER else dep!r} has no layer")
            elif dep != pkg:
                edges.setdefault(pkg, set()).add(dep)
                if LAYER[dep] > LAYER[pkg]:
                    problems.append(f"{'/'.join(rel)}.py imports saescale.{dep}, a layer above {pkg}")
    problems += [f"package cycle: {' -> '.join(c)}" for c in cycles(edges)]
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each package that is on one (depth-first search)."""
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            found.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, path + [node])
        done.add(node)

    for start in sorted(edges):
        visit(start, [])
    return found


def test_no_upward_import_and_no_package_cycle():
    assert violations(Path(saescale.__file__).parent) == []


def test_the_check_catches_an_upward_import_and_a_cycle(tmp_path):
    pkg = tmp_path / "saescale"
    for f, text in {"__init__.py": "", "errors.py": "", "sae/__init__.py": "", "train/__init__.py": "",
                    "sae/base.py": "def f():\n    from saescale.train import run\n",
                    "train/run.py": "from ..sae import base\n", "kernels/x.py": "import saescale.kernels.y\n"}.items():
        (pkg / f).parent.mkdir(parents=True, exist_ok=True)
        (pkg / f).write_text(text)
    got = violations(pkg)
    assert "saescale/sae/base.py imports saescale.train, a layer above sae" in got
    assert any(p.startswith("package cycle: ") and "sae" in p and "train" in p for p in got)
    assert len(got) == 2  # the relative import is resolved; a package importing itself is fine
