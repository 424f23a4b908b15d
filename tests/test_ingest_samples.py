"""Every real sample in samples/stackexchange loads, and what is loaded is the XML."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree
from se_helpers import (
    SAMPLES,
    fingerprint,
    load_quiet,
    query,
    table_of,
    xml_row_count,
    xml_value,
)

from ingest.se_tables import TABLES
from ingest.se_text import html_to_text, parse_tags
from ingest.stackexchange import default_site

FOLDERS = ["beer-2014", "cardano-2021", "blender-meta-2013", "stackoverflow-2008-head"]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("se") / "w.duckdb"
    for folder in FOLDERS:
        load_quiet(SAMPLES / folder, db, site=folder)
    load_quiet(SAMPLES / "mixed-edge-cases" / "posts.xml", db, site="mixed",
               skip_bad_rows=True, allow_repeated_ids=True)  # Ids 3, ... twice
    load_quiet(SAMPLES / "stackoverflow-2008-head" / "Posts_count_test.xml", db,
               site="so-count", allow_repeated_ids=True)  # 100 copies of row 4
    return db


def _files():
    for folder in FOLDERS:
        for f in sorted((SAMPLES / folder).iterdir()):
            if f.name != "Posts_count_test.xml":
                yield folder, f


@pytest.mark.parametrize(("site", "path"), list(_files()),
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_row_counts_equal_the_files(warehouse, site, path):
    table = table_of(path.name)
    (n,) = query(warehouse, f"select count(*) from raw.{table} where site = ?", [site])[0]
    assert n == xml_row_count(path)
    rows = query(warehouse, "select rows_read, rows_loaded from raw.se_loads"
                 " where site = ? and table_name = ?", [site, table])
    assert rows == [(n, n)]


def test_single_files_load_by_their_root(warehouse):
    count = SAMPLES / "stackoverflow-2008-head" / "Posts_count_test.xml"
    assert query(warehouse, "select count(*) from raw.se_posts where site = 'so-count'"
                 ) == [(xml_row_count(count),)]
    # mixed-edge-cases: lowercase name, no BOM, alphabetical attributes; one row has
    # no Id (line 14), skipped and reported
    mixed = SAMPLES / "mixed-edge-cases" / "posts.xml"
    assert query(warehouse, "select count(*) from raw.se_posts where site = 'mixed'"
                 ) == [(xml_row_count(mixed) - 1,)]
    assert query(warehouse, "select rows_read, rows_skipped from raw.se_loads"
                 " where site = 'mixed'") == [(126, 1)]


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_value_equals_the_xml(warehouse, folder):
    """All attributes of all rows, typed, against an independent lxml read."""
    for path in sorted((SAMPLES / folder).glob("*.xml")):
        if path.name == "Posts_count_test.xml":
            continue
        table = TABLES[table_of(path.name)]
        cols = [c if not (table.name == "se_posts" and c == "tags") else "tags_raw"
                for _, c, _ in table.columns]
        got = {r[0]: r for r in query(
            warehouse, f"select {', '.join(cols)} from raw.{table.name} where site = ?",
            [folder])}
        n = 0
        for _, el in etree.iterparse(str(path), tag="row"):
            want = tuple(xml_value(t, el.get(a)) for a, _, t in table.columns)
            assert got[want[0]] == want, (path.name, want[0])
            n += 1
            el.clear()
        assert n == len(got)


def test_spot_values(warehouse):
    created, score, tags, text, title = query(
        warehouse, "select creation_date, score, tags, body_text, title from raw.se_posts"
        " where site = 'beer-2014' and id = 1")[0]
    assert str(created) == "2014-01-21 20:26:05.383000"
    assert score == 13
    assert tags == ["hops"]
    assert title == "What is a citra hop, and how does it differ from other hops?"
    assert text == ("I was offered a beer the other day that was reportedly made with"
                    " citra hops. What are citra hops? Why should I care that my beer"
                    " is made with them?")
    # math.SE LaTeX in <span class="math-container"> is kept as written
    (math,) = query(warehouse, "select body_text from raw.se_posts where site = 'mixed'"
                    " and body like '%math-container%' order by id limit 1")[0]
    assert "\\sqrt{2}" in math and "2q^2 = p^2" in math and "<span" not in math
    # old Users attribute Age, and booleans
    assert query(warehouse, "select count(age) from raw.se_users"
                 " where site = 'blender-meta-2013'")[0][0] > 0
    assert query(warehouse, "select distinct tag_based from raw.se_badges"
                 " where site = 'cardano-2021' order by 1") == [(False,)]
    assert query(warehouse, "select content_license from raw.se_posts"
                 " where site = 'cardano-2021' and id = 1") == [("CC BY-SA 4.0",)]


def test_body_text_and_tags_match_the_rules(warehouse):
    """body_text is html_to_text(body) and tags is parse_tags(tags_raw), row by row."""
    rows = query(warehouse, "select body, body_text, tags_raw, tags from raw.se_posts")
    assert len(rows) > 3000
    for body, text, raw, tags in rows:
        assert text == html_to_text(body)
        assert tags == parse_tags(raw)


def test_reload_replaces_the_site(warehouse, tmp_path):
    db = tmp_path / "w.duckdb"
    load_quiet(SAMPLES / "beer-2014", db, site="beer")
    load_quiet(SAMPLES / "blender-meta-2013", db, site="other")
    before = fingerprint(db)
    load_quiet(SAMPLES / "beer-2014", db, site="beer")
    assert fingerprint(db)["se_posts"] == before["se_posts"]
    # a folder without Badges/Tags/PostHistory: the site's old rows there go too
    load_quiet(SAMPLES / "blender-meta-2013", db, site="beer")
    assert query(db, "select count(*) from raw.se_badges where site = 'beer'") == [(0,)]
    assert query(db, "select count(*) from raw.se_posts where site = 'beer'") == [(9,)]
    assert query(db, "select count(*) from raw.se_posts where site = 'other'") == [(9,)]


def test_default_site_names(tmp_path):
    assert default_site(SAMPLES / "beer-2014") == "beer-2014"
    a = tmp_path / "physics.stackexchange.com.7z"
    a.write_bytes(b"")
    assert default_site(a) == "physics.stackexchange.com"
    b = tmp_path / "stackoverflow.com-Posts.7z"
    b.write_bytes(b"")
    assert default_site(b) == "stackoverflow.com"
    assert default_site(SAMPLES / "beer-2014" / "Posts.xml") == "beer-2014"
