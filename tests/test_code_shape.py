"""The shape of the code in compute/ and ingest/ (docs/architecture.md): no function
longer than MAX_LINES lines, counted from its `def` line to its last line (AST;
nested functions and methods count on their own, and inside their parent).

    python -m pytest -q tests/test_code_shape.py
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("compute", "ingest")
MAX_LINES = 80


def long_functions(source: str, where: str = "") -> list[str]:
    """'WHERE:LINE NAME (N lines)' of every function of `source` over MAX_LINES."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_LINES:
                out.append(f"{where}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_the_count_is_of_the_def_lines():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES - 1))
    fits = f"def f():\n{body}\n"  # MAX_LINES lines with its def line
    assert long_functions(fits) == []
    nested = f"class C:\n    def g(self):\n        def h():\n{body}\n            pass\n"
    nested = nested.replace("\n    x", "\n            x")
    assert [s.split()[1] for s in long_functions(nested)] == ["g", "h"]
    assert long_functions(fits + "    y = 0\n", "m.py") == [
        f"m.py:1 f ({MAX_LINES + 1} lines)"]


def test_no_function_over_max_lines():
    found = [hit for package in PACKAGES
             for path in sorted((ROOT / package).rglob("*.py"))
             for hit in long_functions(path.read_text(),
                                       str(path.relative_to(ROOT)))]
    assert not found, ("split these by what each part does:\n" + "\n".join(found))
