"""The import structure of the project (docs/architecture.md): no import circle among
compute/, ingest/ and app_lib/, nothing in ingest/ imports compute/, and each layer of
compute/ imports only its own layer and the ones below it (LAYERS).

Every .py file is parsed (AST), nothing is imported: an import anywhere in a module
counts, at its top, inside a function or in its `if __name__ == "__main__":` block (a
command whose entry reaches up belongs in a module above: `python -m ingest.publish`),
except under `if TYPE_CHECKING:` (annotations only, never executed).

    python -m pytest -q tests/test_architecture.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("compute", "ingest", "app_lib")
# compute's layers, lowest first: a module may import from its own layer and from
# those before it. compute/*.py beside them are the `python -m compute.X` entry
# modules, the top; ingest/ is the floor under all of compute.
LAYERS = ("arch", "linalg", "io", "fixtures", "plan", "behaviour", "pairs", "run",
          "lora", "attribution")
ENTRY = len(LAYERS)  # compute/*.py


def module_name(path: Path, root: Path = ROOT) -> str:
    """compute/run/cli.py -> compute.run.cli (a package: its folder's name)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _skipped(node: ast.If) -> bool:
    """`if TYPE_CHECKING:`."""
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports_of(source: str, name: str, is_package: bool,
               known: set[str]) -> set[str]:
    """The project modules `source` (module `name`) imports."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _skipped(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            out.add(mod)
            for alias in node.names:  # `from compute.linalg import spectra`
                out.add(f"{mod}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    found = set()
    for mod in out:  # the deepest project module each import names
        while mod and mod not in known:
            mod = mod.rpartition(".")[0]
        if mod and mod != name:
            found.add(mod)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports, for every .py under PACKAGES."""
    files = {module_name(p, root): p
             for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}
    known = set(files)
    return {name: imports_of(path.read_text(), name, path.name == "__init__.py", known)
            for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def layer(module: str) -> int | None:
    """compute's layer of `module` (its index in LAYERS, ENTRY for compute/*.py);
    None outside compute or for compute/__init__.py."""
    parts = module.split(".")
    if parts[0] != "compute" or len(parts) == 1:
        return None
    if len(parts) == 2 and parts[1] not in LAYERS:
        return ENTRY
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: compute/{parts[1]}/ is not a layer; add it "
                             "to LAYERS in tests/test_architecture.py and to "
                             "docs/architecture.md")
    return LAYERS.index(parts[1])


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports that go up: ingest -> compute, or a compute layer -> a higher one."""
    bad = []
    for src, targets in sorted(edges.items()):
        for dst in sorted(targets):
            top_src, top_dst = src.split(".")[0], dst.split(".")[0]
            if top_src == "ingest" and top_dst == "compute":
                bad.append(f"{src} imports {dst} (ingest is below compute)")
            ls, ld = layer(src), layer(dst)
            if ls is not None and ld is not None and ld > ls:
                bad.append(f"{src} (layer {LAYERS[ls] if ls < ENTRY else 'entry'}) "
                           f"imports {dst} (layer "
                           f"{LAYERS[ld] if ld < ENTRY else 'entry'}, higher)")
    return bad


EDGES = graph()


def test_the_graph_sees_the_project():
    """The parse found the modules and the imports a reader sees in them."""
    assert "compute.run.cli" in EDGES and "ingest.warehouse" in EDGES
    assert "compute.linalg.spectra" in EDGES["compute.linalg.directions"]
    assert "ingest.snapshot" in EDGES["ingest.warehouse"]
    assert "compute.linalg._kernels" not in EDGES  # a C extension, not parsed


def test_no_import_circle():
    found = cycles(EDGES)
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_point_down():
    bad = upward(EDGES)
    assert not bad, "\n".join(bad)


def test_every_compute_folder_is_a_layer():
    folders = {p.name for p in (ROOT / "compute").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)


def write(root: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in PACKAGES:
        (root / pkg).mkdir(exist_ok=True)
    return graph(root)


def test_the_old_circles_are_caught(tmp_path):
    """The tree before the layers, in small: run.py <-> cluster.py (a lazy import in
    a function), checkpoints <-> vocab (one side under TYPE_CHECKING, the other in a
    function), snapshot <-> warehouse, ingest.compute_load -> compute.results."""
    edges = write(tmp_path, {
        "compute/__init__.py": "",
        "compute/run.py": "def main():\n    from compute.cluster import main\n",
        "compute/cluster.py": "def task():\n    from compute.run import main\n",
        "compute/checkpoints.py": ("from typing import TYPE_CHECKING\n"
                                   "if TYPE_CHECKING:\n    from compute.vocab import V\n"
                                   "def pair_plan():\n"
                                   "    from compute.vocab import align_pair\n"),
        "compute/vocab.py": "from compute.checkpoints import Checkpoint\n",
        "compute/results.py": "",
        "ingest/__init__.py": "",
        "ingest/snapshot.py": "def notice():\n    from ingest.warehouse import d\n",
        "ingest/warehouse.py": "from ingest import snapshot\n",
        "ingest/compute_load.py": "from compute.results import Store\n",
    })
    assert cycles(edges) == [["compute.checkpoints", "compute.vocab"],
                             ["compute.cluster", "compute.run"],
                             ["ingest.snapshot", "ingest.warehouse"]]
    assert ("ingest.compute_load imports compute.results (ingest is below compute)"
            in upward(edges))


def test_a_main_block_counts_and_type_checking_does_not(tmp_path):
    """A command's entry in a `__main__` block that reaches up closes a circle (the
    old `python -m ingest.snapshot`); an annotation-only import does not."""
    edges = write(tmp_path, {
        "ingest/__init__.py": "",
        "ingest/snapshot.py": ('if __name__ == "__main__":\n'
                               "    from ingest.warehouse import main\n"),
        "ingest/warehouse.py": "from ingest import snapshot\n",
        "ingest/lora.py": ("from typing import TYPE_CHECKING\n"
                           "if TYPE_CHECKING:\n    from ingest.warehouse import X\n"),
    })
    assert cycles(edges) == [["ingest.snapshot", "ingest.warehouse"]]
    assert edges["ingest.lora"] == set()


@pytest.mark.parametrize(("src", "dst", "up"), [
    ("compute/io/checkpoints.py", "compute.plan.vocab", True),
    ("compute/plan/vocab.py", "compute.io.checkpoints", False),
    ("compute/run/cli.py", "compute.lora.extract", True),
    ("compute/lora/extract.py", "compute.run.cli", False),
    ("compute/linalg/spectra.py", "compute.summary", True),  # an entry module
])
def test_a_layer_imports_only_downward(tmp_path, src, dst, up):
    dst_file = dst.replace(".", "/") + ".py"
    files = {src: f"import {dst}\n", dst_file: ""}
    for rel in (src, dst_file):
        folder = Path(rel).parent
        while folder != Path("."):
            files.setdefault(str(folder / "__init__.py"), "")
            folder = folder.parent
    assert bool(upward(write(tmp_path, files))) is up
