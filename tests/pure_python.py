"""pytest plugin for `make test-pure-python`: the suite as a checkout without a C
compiler runs it. The compiled extensions (ingest._sefast, compute.linalg._kernels) cannot
be imported, so the ingest falls back to lxml and the spectra to NumPy; tests marked
`c_extension` are deselected by the make target.

    python -m pytest -p tests.pure_python -m "not c_extension" tests/test_ingest_*.py
"""

from __future__ import annotations

import importlib.abc
import sys

BLOCKED = ("ingest._sefast", "compute.linalg._kernels")


class _NoExtensions(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED:
            raise ImportError(f"{name} is hidden by tests/pure_python.py")
        return None


for _name in BLOCKED:
    if _name in sys.modules:
        raise RuntimeError(f"{_name} was imported before the pure-Python plugin")
sys.meta_path.insert(0, _NoExtensions())


def pytest_sessionstart(session):
    from compute.linalg import spectra
    from ingest import se_parse

    assert se_parse._sefast is None and not se_parse.fast_parser_available()
    assert spectra._kernels is None
