"""A site's .7z read as a stream; folders matched case-insensitively; the splitter's
chunks bounded; the parallel path equal to the serial one."""

from __future__ import annotations

import shutil
from pathlib import Path

import libarchive
import pytest
from se_helpers import SAMPLES, fingerprint, load_quiet, query, xml_row_count

from ingest.se_parse import RowSplitter, SEInputError

BEER = SAMPLES / "beer-2014"
BLENDER = SAMPLES / "blender-meta-2013"


def make_7z(path: Path, files: dict[str, bytes]) -> Path:
    with libarchive.file_writer(str(path), "7zip") as archive:
        for name, data in files.items():
            archive.add_file_from_memory(name, len(data), data)
    return path


@pytest.fixture(scope="module")
def site_7z(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("7z")
    files = {f"blender/{p.name}": p.read_bytes() for p in sorted(BLENDER.iterdir())}
    files["readme.txt"] = b"not a dump file"
    return make_7z(d / "blender.meta.stackexchange.com.7z", files)


def test_7z_loads_like_the_folder(site_7z, tmp_path):
    db = tmp_path / "w.duckdb"
    report = load_quiet(site_7z, db)
    assert report.site == "blender.meta.stackexchange.com"
    assert len(report.files) == 5
    assert any("readme.txt" in i for i in report.ignored)
    for fr in report.files:
        src = BLENDER / fr.source.split("/")[-1]
        assert fr.rows_loaded == xml_row_count(src), fr.source
    load_quiet(BLENDER, db, site="folder")
    for table in ("se_posts", "se_users", "se_comments", "se_votes", "se_post_links"):
        sql = (f"select count(*), sum(hash(x::varchar)) from (select * exclude (site)"
               f" from raw.{table} where site = ?) x")
        assert query(db, sql, ["blender.meta.stackexchange.com"]) == query(db, sql, ["folder"])


def test_corrupt_7z_fails_cleanly(site_7z, tmp_path):
    db = tmp_path / "w.duckdb"
    load_quiet(BLENDER, db, site="blender.meta.stackexchange.com")
    before = fingerprint(db)
    data = bytearray(site_7z.read_bytes())
    truncated = tmp_path / "a" / "blender.meta.stackexchange.com.7z"
    truncated.parent.mkdir()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SEInputError, match=r"blender\.meta\.stackexchange\.com\.7z"):
        load_quiet(truncated, db)
    assert fingerprint(db) == before
    garbled = tmp_path / "b" / "blender.meta.stackexchange.com.7z"
    garbled.parent.mkdir()
    for i in range(64, len(data) // 2, 97):  # damage the compressed stream
        data[i] ^= 0x5A
    garbled.write_bytes(data)
    with pytest.raises(SEInputError, match=r"blender\.meta\.stackexchange\.com\.7z"):
        load_quiet(garbled, db)
    assert fingerprint(db) == before


def test_file_names_case_insensitive_and_format_variants(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(BEER / "Users.xml", site / "USERS.XML")
    shutil.copy(BEER / "Tags.xml", site / "tags.xml")
    (site / "posts.xml").write_bytes(
        b'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
        b"<!-- a comment after the root, as recent dumps have -->\n"
        b'  <row Score="5" Id="30" PostTypeId="1" Tags="|spin|quantum-mechanics|"'
        b' Title="T" Body="&lt;p&gt;b&lt;/p&gt;" Foo="bar" />\n'
        b'  <row Id="2" PostTypeId="1" Tags="&lt;a&gt;&lt;b-c&gt;" Body="" />\n'
        b'  <row Id="1000000001" PostTypeId="1" OwnerUserId="-1" Body="x" />\n'
        b'  <row Id="1000000010" PostTypeId="2" OwnerUserId="-1" Body="y" />\n'
        b"</posts>\n<!-- trailing comment -->\n"
    )
    db = tmp_path / "w.duckdb"
    report = load_quiet(site, db, site="s")
    assert sorted(f.table for f in report.files) == ["se_posts", "se_tags", "se_users"]
    assert query(db, "select id, tags, extra, body_text from raw.se_posts order by id"
                 ) == [(2, ["a", "b-c"], None, ""),
                       (30, ["spin", "quantum-mechanics"], {"Foo": "bar"}, "b")]
    posts = report.by_table()["se_posts"]
    assert (posts.rows_read, posts.rows_loaded, posts.rows_dropped_fabricated) == (4, 2, 2)
    assert posts.unknown_attributes == ["Foo"]
    assert sum("Foo" in n for n in report.notes) == 1
    assert query(db, "select rows_dropped_fabricated, unknown_attributes from"
                 " raw.se_loads where table_name = 'se_posts'") == [(2, ["Foo"])]


def test_splitter_chunks_are_bounded_and_exact():
    data = (BEER / "Posts.xml").read_bytes()
    blocks = iter([data[i:i + 1000] for i in range(0, len(data), 1000)])
    splitter = RowSplitter("Posts.xml", blocks)
    assert splitter.root == "posts"
    chunks = list(splitter.chunks(20_000))
    biggest_row = max(len(line) for line in data.splitlines())
    assert max(len(c) for c, _ in chunks) <= 20_000 + biggest_row
    body = b"".join(c for c, _ in chunks)
    assert body.count(b"<row") == xml_row_count(BEER / "Posts.xml")
    # each chunk's line number is where its bytes start in the file
    for c, line in chunks:
        start = data.index(c[:200])
        assert data.count(b"\n", 0, start) + 1 == line


def test_parallel_load_equals_serial(tmp_path):
    rows = [line for line in (SAMPLES / "cardano-2021" / "Posts.xml").read_bytes()
            .splitlines() if line.strip().startswith(b"<row")][:1000]
    big = tmp_path / "Posts.xml"
    big.write_bytes(b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
                    + b"\n".join(rows) + b"\n</posts>\n")
    serial, parallel = tmp_path / "s.duckdb", tmp_path / "p.duckdb"
    load_quiet(big, serial, site="x")
    load_quiet(big, parallel, site="x", workers=2, chunk_bytes=200_000,
               parallel_min_bytes=0)
    assert fingerprint(serial)["se_posts"] == fingerprint(parallel)["se_posts"]
    assert query(parallel, "select count(*) from raw.se_posts") == [(len(rows),)]


def test_stream_reads_blocks_lazily():
    """The splitter pulls blocks only as chunks are consumed (no whole-file read)."""
    pulled = []

    def blocks():
        yield b'<?xml version="1.0"?>\n<posts>\n'
        for i in range(1, 10_000):
            pulled.append(i)
            yield b'<row Id="%d" Body="%s" />\n' % (i, b"x" * 100)
        yield b"</posts>\n"

    chunks = RowSplitter("Posts.xml", blocks()).chunks(10_000)
    next(chunks)
    assert len(pulled) < 200
