"""Bad input: a clear error naming the file and line, and the warehouse as before."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from se_helpers import SAMPLES, fingerprint, load_quiet

from ingest.se_parse import SEInputError

BEER = SAMPLES / "beer-2014"
HEAD = b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
GOOD = b'  <row Id="%d" PostTypeId="2" ParentId="1" Score="1" Body="&lt;p&gt;ok&lt;/p&gt;" />\n'


def posts(*rows: bytes, tail: bytes = b"</posts>\n", head: bytes = HEAD) -> bytes:
    return head + b"".join(rows) + tail


def good_rows(n: int, start: int = 10) -> list[bytes]:
    return [GOOD % i for i in range(start, start + n)]


# (name, Posts.xml bytes, expected fragments of the message)
CASES = [
    ("truncated-mid-row",
     posts(*good_rows(5), b'  <row Id="99" Score="1" Bo', tail=b""),
     ["line 8", "ends before </posts>"]),
    ("truncated-at-row-boundary", posts(*good_rows(5), tail=b""),
     ["line 8", "truncated"]),
    ("undefined-entity", posts(*good_rows(3), b'  <row Id="7" Body="caf&eacute;" />\n'),
     ["line 6", "eacute"]),
    ("wrong-root", b'<?xml version="1.0" encoding="utf-8"?>\n<users>\n'
     + b"".join(good_rows(2)) + b"</users>\n",
     ["line 2", "<users>", "expected <posts>"]),
    ("row-without-id", posts(*good_rows(4), b'  <row PostTypeId="1" Score="2" />\n'),
     ["line 7", "without Id"]),
    ("non-utf8-byte", posts(*good_rows(2), b'  <row Id="5" Body="caf\xe9" />\n'),
     ["line 5", "UTF-8"]),
    ("empty-file", b"", ["line 1", "empty file"]),
    ("bom-only", b"\xef\xbb\xbf\n", ["empty file"]),
    ("not-a-number", posts(*good_rows(3), b'  <row Id="8" Score="lots" />\n'),
     ["line 6", "Score='lots'"]),
    ("content-after-root", posts(*good_rows(2), tail=b"</posts>\n<posts>\n"),
     ["line 6", "after the root"]),
    ("unexpected-element", posts(*good_rows(2), b"  <col Id=\"3\" />\n"),
     ["line 5", "<col>"]),
    ("unclosed-row", posts(*good_rows(2), b'  <row Id="3">\n', *good_rows(2, 20)),
     ["Posts.xml: line"]),
]


@pytest.fixture(scope="module")
def base_db(tmp_path_factory) -> Path:
    """A warehouse holding the beer sample as site 'beer' (the site the bad loads hit)."""
    db = tmp_path_factory.mktemp("bad") / "base.duckdb"
    load_quiet(BEER, db, site="beer")
    load_quiet(SAMPLES / "blender-meta-2013", db, site="blender")
    return db


@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_posts_file_fails_cleanly(base_db, tmp_path, name, data, expected):
    db = tmp_path / "w.duckdb"
    shutil.copy(base_db, db)
    before = fingerprint(db)
    site = tmp_path / "dump"
    site.mkdir()
    # Badges.xml sorts first: it is loaded (and the site's badges deleted) before
    # Posts.xml fails, so the rollback is what keeps the warehouse as it was.
    shutil.copy(BEER / "Badges.xml", site / "Badges.xml")
    (site / "Posts.xml").write_bytes(data)
    with pytest.raises(SEInputError) as err:
        load_quiet(site, db, site="beer")
    msg = str(err.value)
    assert "Posts.xml" in msg
    for fragment in expected:
        assert fragment in msg, msg
    assert fingerprint(db) == before


def test_bad_single_file_and_parallel_workers(base_db, tmp_path):
    """The same guarantees in the multi-process path, with an error far into the
    file: the line number is the file's, not the chunk's."""
    db = tmp_path / "w.duckdb"
    shutil.copy(base_db, db)
    before = fingerprint(db)
    bad = tmp_path / "Posts.xml"
    bad.write_bytes(posts(*good_rows(3000), b'  <row Id="1" Score="x&y" />\n',
                          *good_rows(500, 5000)))
    with pytest.raises(SEInputError, match=r"Posts\.xml: line 3003:"):
        load_quiet(bad, db, site="beer", workers=2, chunk_bytes=16_000,
                   parallel_min_bytes=0)
    assert fingerprint(db) == before


def test_cli_exit_status_and_message(base_db, tmp_path):
    db = tmp_path / "w.duckdb"
    shutil.copy(base_db, db)
    before = fingerprint(db)
    bad = tmp_path / "Posts.xml"
    bad.write_bytes(posts(*good_rows(2), b'  <row PostTypeId="1" />\n'))
    proc = subprocess.run(
        [sys.executable, "-m", "ingest.stackexchange", str(bad), "--site", "beer",
         "--db", str(db)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2
    assert f"{bad}: line 5: a row without Id" in proc.stderr
    assert "Nothing was changed" in proc.stderr
    assert fingerprint(db) == before


def test_missing_path_and_folder_without_dump_files(tmp_path):
    with pytest.raises(SEInputError, match="no such file"):
        load_quiet(tmp_path / "nope", tmp_path / "w.duckdb")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SEInputError, match="no Stack Exchange dump files"):
        load_quiet(tmp_path / "empty", tmp_path / "w.duckdb")
