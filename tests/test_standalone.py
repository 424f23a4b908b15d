"""The project stands alone: nothing outside the repository is read.

- Statically: no Python file computes a path above the repository root from its own
  location (`Path(__file__).parents[k]`, `.parent`, `os.path.dirname`, `".."`).
- Running: the repository's files (what `git ls-files` holds: what a clone has) are
  copied into a folder whose parent holds nothing else, and a quick part of the suite
  runs there with the same interpreter under tests/read_fence.py, which fails it if
  Python opens or lists anything beside the copy or in the folder holding this
  checkout (the interpreter's own environment aside).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent
# quick files that read the in-repo samples (tests/conftest.py, se_helpers.py) and
# the ingest bench's file builder
QUICK = ["tests/test_samples.py", "tests/test_ingest_samples.py"]


def tracked_files() -> list[str]:
    """The files a clone holds, with the ones not yet committed (not ignored)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (ROOT / f).is_file()})


# --- static: paths computed above the root ---------------------------------------

PATH_CALLS = {"Path", "PurePath", "PosixPath", "pathlib.Path"}
SAME = {"resolve", "absolute", "expanduser", "abspath", "realpath", "normpath"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


class Escapes:
    """Levels below the repository root of path expressions anchored at a file of
    the project (`__file__`, `module.__file__`); an expression under 0 escapes."""

    def __init__(self, rel: str, module_depth: dict[str, int]):
        self.depth = len(PurePosixPath(rel).parts)
        self.module_depth = module_depth  # imported name -> depth of its file
        self.names: dict[str, int] = {}
        self.lines: set[int] = set()

    def level(self, node: ast.AST) -> int | None:
        r = self._level(node)
        if r is not None and r < 0:
            self.lines.add(node.lineno)
        return r

    def _join(self, r: int | None, parts: list[ast.AST]) -> int | None:
        for part in parts:
            if r is None or r < 0:  # once above the root, a join stays outside
                return r
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                for comp in PurePosixPath(part.value).parts:
                    r += -1 if comp == ".." else 1
                    if r < 0:
                        return r
            else:
                r += 1
        return r

    def _level(self, node: ast.AST) -> int | None:
        if isinstance(node, ast.Name):
            return self.depth if node.id == "__file__" else self.names.get(node.id)
        if isinstance(node, ast.Attribute):
            if node.attr == "__file__" and isinstance(node.value, ast.Name):
                return self.module_depth.get(node.value.id)
            if node.attr == "parent":
                r = self.level(node.value)
                return None if r is None else r - 1
            return None
        if isinstance(node, ast.Subscript):
            if (isinstance(node.value, ast.Attribute) and node.value.attr == "parents"
                    and isinstance(node.slice, ast.Constant)
                    and isinstance(node.slice.value, int)):
                r = self.level(node.value.value)
                return None if r is None else r - node.slice.value - 1
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return self._join(self.level(node.left), [node.right])
        if isinstance(node, ast.Call) and node.args:
            name = _dotted(node.func)
            if name in PATH_CALLS:
                return self.level(node.args[0])
            if name == "os.path.dirname":
                r = self.level(node.args[0])
                return None if r is None else r - 1
            if name == "os.path.join":
                return self._join(self.level(node.args[0]), node.args[1:])
            if name.split(".")[-1] in SAME and name.startswith("os.path."):
                return self.level(node.args[0])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in SAME:
                return self.level(node.func.value)
            if node.func.attr == "joinpath":
                return self._join(self.level(node.func.value), node.args)
        return None


def _module_depths(tree: ast.Module, files: set[str]) -> dict[str, int]:
    """Names imported from the project's own modules -> depth of their file."""
    out = {}
    for node in ast.walk(tree):
        pairs = []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            pairs = [(a.asname or a.name, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            pairs = [(a.asname, a.name) for a in node.names if a.asname]
        for name, module in pairs:
            stem = module.replace(".", "/")
            for rel in (f"{stem}.py", f"{stem}/__init__.py"):
                if rel in files:
                    out[name] = len(PurePosixPath(rel).parts)
    return out


ON_PURPOSE = "# outside on purpose:"


def escaping_lines(rel: str, source: str, files: set[str]) -> list[int]:
    """Line numbers of `source` (the file `rel` of the repository) where a path is
    computed above the repository root; a line saying `# outside on purpose: why`
    is let through."""
    tree = ast.parse(source)
    text = source.splitlines()
    esc = Escapes(rel, _module_depths(tree, files))
    assigns = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Assign)),
                     key=lambda n: (n.lineno, n.col_offset))
    for node in assigns:  # bind names in source order
        r = esc.level(node.value)
        if r is None or ON_PURPOSE in text[node.lineno - 1]:
            continue
        for target in node.targets:
            if isinstance(target, ast.Name):
                esc.names[target.id] = r
    for node in ast.walk(tree):
        if isinstance(node, ast.expr):
            esc.level(node)
    return sorted(n for n in esc.lines if ON_PURPOSE not in text[n - 1])


@pytest.mark.parametrize(("rel", "source", "lines"), [
    ("tests/se_helpers.py",
     'SAMPLES = Path(__file__).resolve().parents[2] / "elsewhere" / "samples"', [1]),
    ("tests/conftest.py", 'ROOT = Path(__file__).resolve().parent.parent\n'
     'OK = ROOT / "samples"\nOUT = ROOT.parent / "elsewhere"\nIN = OUT / "a"\n',
     [3, 4]),
    ("bench/ingest.py", 'ROOT = Path(__file__).resolve().parents[1]\n'
     'S = ROOT / "samples"\nT = os.path.join(os.path.dirname(__file__), "..", "..")\n',
     [3]),
    ("tests/test_prompts.py", "from ingest import demo_site\n"
     'p = Path(demo_site.__file__).parents[1].parent / "elsewhere"\n', [2]),
    ("tests/x.py", 'p = Path(__file__).parent / "../../elsewhere"\n', [1]),
    ("tests/x.py", 'p = Path(__file__).parents[1].parent  # outside on purpose: why\n', []),
    ("tests/x.py", 'p = Path(__file__).parent / "../docs"\n', []),
    ("compute/run/cli.py", "root = Path(__file__).resolve().parent.parent\n", []),
])
def test_the_static_check_finds_escapes(rel, source, lines):
    files = {"tests/x.py", "ingest/demo_site.py", "ingest/__init__.py"}
    assert escaping_lines(rel, source, files) == lines


def test_no_python_file_computes_a_path_above_the_root():
    files = set(tracked_files())
    found = []
    for rel in sorted(f for f in files if f.endswith(".py")):
        source = (ROOT / rel).read_text(encoding="utf-8")
        found += [f"{rel}:{n}" for n in escaping_lines(rel, source, files)]
    assert found == []


# --- running: a copy with nothing beside it -----------------------------------------

def copy_repository(dest: Path) -> int:
    """The files a clone holds, and the C extensions `pip install -e .` builds next
    to their sources (so the copy imports its own, not this checkout's)."""
    files = tracked_files()
    built = [p.relative_to(ROOT).as_posix() for p in ROOT.glob("*/*.so")
             if not p.relative_to(ROOT).parts[0].startswith(".")]
    for rel in files + built:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    return len(files)


def run_fenced(clone: Path, basetemp: Path, *tests: str) -> subprocess.CompletedProcess:
    beside = [clone.parent]
    home = ROOT.parent  # outside on purpose: what the copy must not read
    if home != Path(ROOT.anchor):  # this checkout's folder and its neighbours
        beside.append(home)
    allow = [clone, basetemp, Path(sys.prefix), Path(sys.base_prefix)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(FENCE_FORBID=os.pathsep.join(map(str, beside)),
               FENCE_ALLOW=os.pathsep.join(map(str, allow)))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "-p", "tests.read_fence", "--basetemp", str(basetemp), *tests],
        cwd=clone, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("alone") / "clone" / ROOT.name
    assert copy_repository(dest) > 100
    assert os.listdir(dest.parent) == [ROOT.name]
    return dest


@pytest.mark.slow
def test_a_copy_with_nothing_beside_it_passes(clone, tmp_path):
    proc = run_fenced(clone, tmp_path / "basetemp", *QUICK)
    out = proc.stdout[-6000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, out
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) > 50, out
    assert "read_fence" not in out


@pytest.mark.slow
def test_the_fence_catches_a_read_beside_the_copy(clone, tmp_path):
    """A test in the copy that looks beside it and swallows the error still fails
    the run, and the fence names the paths. (A glob of a missing folder only stats
    it, which raises no audit event: test_samples checks the samples are there.)"""
    probe = clone / "tests" / "test_probe_beside.py"
    probe.write_text(
        "import os\nfrom pathlib import Path\n\n\n"
        "def test_peek():\n"
        "    beside = Path(__file__).resolve().parents[2] / 'elsewhere'\n"
        "    assert list(beside.glob('*')) == []\n"
        "    for peek in (lambda: os.listdir(beside),\n"
        "                 lambda: open(beside / 'samples.txt').close()):\n"
        "        try:\n"
        "            peek()\n"
        "        except OSError:\n"
        "            pass\n")
    try:
        proc = run_fenced(clone, tmp_path / "basetemp", "tests/test_probe_beside.py")
    finally:
        probe.unlink()
    assert proc.returncode != 0
    assert "1 passed" in proc.stdout  # the test itself passed: the fence failed it
    beside = str(clone.parent / "elsewhere")
    assert f"os.listdir {beside}\n" in proc.stderr, proc.stderr
    assert f"open {beside}/samples.txt" in proc.stderr, proc.stderr
