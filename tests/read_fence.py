"""A pytest plugin that fails the session if Python opens or lists anything inside a
forbidden folder (other than an allowed one inside it):

    FENCE_FORBID=DIR[:DIR] FENCE_ALLOW=DIR[:DIR] python -m pytest -p tests.read_fence ...

It records the audit events `open`, `os.listdir` and `os.scandir` (sys.addaudithook),
so a read that fails quietly (a glob of a missing folder, an OSError caught) counts
too. Reads made in C from a path (DuckDB, lxml) raise no audit event. test_standalone
runs the suite in a copy of the repository with it.
"""

from __future__ import annotations

import os
import sys

EVENTS = frozenset({"open", "os.listdir", "os.scandir"})
MAX_SHOWN = 40


def _dirs(var: str) -> list[str]:
    return [os.path.abspath(p) for p in os.environ.get(var, "").split(os.pathsep) if p]


def _under(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip(os.sep) + os.sep) for d in dirs)


class Fence:
    def __init__(self, forbid: list[str], allow: list[str]):
        self.forbid, self.allow = forbid, allow
        self.where = "collection"
        self.seen: list[tuple[str, str, str]] = []  # (test, event, path)

    def audit(self, event: str, args: tuple) -> None:
        if event not in EVENTS:
            return
        target = args[0] if args else "."
        if target is None or isinstance(target, int):  # a file descriptor
            return
        path = os.path.abspath(os.fsdecode(target))
        if _under(path, self.forbid) and not _under(path, self.allow):
            if len(self.seen) < MAX_SHOWN:
                self.seen.append((self.where, event, path))

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.where = nodeid

    def pytest_sessionfinish(self, session) -> None:
        if self.seen:
            lines = [f"  {where}: {event} {path}" for where, event, path in self.seen]
            sys.stderr.write("read_fence: read outside the allowed folders:\n"
                             + "\n".join(lines) + "\n")
            session.exitstatus = 1


def pytest_configure(config) -> None:
    forbid = _dirs("FENCE_FORBID")
    if not forbid:
        raise RuntimeError("read_fence: set FENCE_FORBID (and FENCE_ALLOW)")
    fence = Fence(forbid, _dirs("FENCE_ALLOW"))
    sys.addaudithook(fence.audit)
    config.pluginmanager.register(fence, "read_fence_session")
