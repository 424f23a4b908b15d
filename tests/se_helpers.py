"""Helpers for the Stack Exchange ingest tests (not fixtures: plain functions)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import duckdb

from ingest.se_tables import TABLES
from ingest.stackexchange import LoadOptions, load
from tests.conftest import SE_SAMPLES as SAMPLES  # noqa: F401  (re-exported)
from tests.conftest import query  # noqa: F401  (re-exported for the ingest tests)


def load_quiet(path, db, **kw):
    """load() without progress bars, in-process unless told otherwise."""
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return load(path, LoadOptions(db=db, **kw))


def xml_row_count(path: Path) -> int:
    return len(re.findall(rb"<row\b", Path(path).read_bytes()))


def fingerprint(db: Path) -> dict[str, tuple]:
    """Per raw table (every schema `raw` table): row count and an order-free hash of
    all its rows; equal fingerprints = the same contents."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = [r[0] for r in con.execute(
            "select table_name from duckdb_tables() where schema_name = 'raw'"
            " order by 1").fetchall()]
        out = {}
        for name in names:
            out[name] = con.execute(
                f"select count(*), coalesce(sum(hash(t::varchar)), 0) from raw.{name} t"
            ).fetchone()
        return out
    finally:
        con.close()


def xml_value(typ: str, value: str | None):
    """An XML attribute value as the loader should have typed it."""
    if value is None:
        return None
    if typ in ("BIGINT", "INTEGER"):
        return int(value)
    if typ == "TIMESTAMP":
        return datetime.fromisoformat(value)
    if typ == "BOOLEAN":
        return value.lower() == "true"
    return value


def table_of(file_name: str) -> str:
    return next(t.name for t in TABLES.values() if t.file.lower() == file_name.lower())
