"""The Stack Exchange samples in the repository (samples/stackexchange): whole dump
files, trimmed as SOURCES.md says, and the ingest bench's file built from them."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from lxml import etree
from se_helpers import SAMPLES, table_of, xml_row_count

from ingest.se_tables import TABLES

ROOT = SAMPLES.parents[1]
sys.path.insert(0, str(ROOT))

from bench import ingest as bench_ingest  # noqa: E402

FOLDERS = ["beer-2014", "blender-meta-2013", "cardano-2021", "mixed-edge-cases",
           "stackoverflow-2008-head"]
TRIMMED = ["beer-2014", "cardano-2021"]


def load_trim():
    spec = importlib.util.spec_from_file_location("trim", SAMPLES / "trim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_samples_are_in_the_repository():
    assert sorted(p.name for p in SAMPLES.iterdir() if p.is_dir()) == FOLDERS
    assert (SAMPLES / "SOURCES.md").read_text().count("CC BY-SA") >= 1
    assert xml_row_count(SAMPLES / "beer-2014" / "Posts.xml") == 728
    assert xml_row_count(SAMPLES / "cardano-2021" / "Posts.xml") == 2630


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*/*.xml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_sample_is_a_whole_dump_file(path: Path):
    """Parsed as one document (so the root element is closed), the root named as
    the table its file name says, one <row .../> per line."""
    root = etree.parse(str(path)).getroot()
    name = "Posts.xml" if path.name == "Posts_count_test.xml" else path.name
    assert root.tag == TABLES[table_of(name)].root
    lines = path.read_bytes().splitlines()
    assert len(root.findall("row")) == sum(line.lstrip().startswith(b"<row")
                                           for line in lines) == xml_row_count(path)


@pytest.mark.parametrize("site", TRIMMED)
def test_trimmed_sites_are_what_trim_keeps(site, tmp_path):
    """trim.py's rule applied to the files in the repository keeps every row: they
    are exactly the rows the rule keeps, and SOURCES.md's counts are theirs."""
    counts = load_trim().trim(SAMPLES / site, tmp_path)
    for f in sorted((SAMPLES / site).iterdir()):
        assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f.name
    assert sorted(counts) == sorted(f.name for f in (SAMPLES / site).iterdir())
    sources = (SAMPLES / "SOURCES.md").read_text()
    listed = dict(re.findall(rf"\| {site}/(\w+\.xml) \| (\d+) of \d+ \|", sources))
    assert listed, "SOURCES.md lists the trimmed files"
    for name, kept in listed.items():
        assert int(kept) == counts[name][0] == xml_row_count(SAMPLES / site / name)
    # the published Posts.xml is kept whole: the rows the demo model is trained on
    assert "Posts.xml" not in listed


def test_trim_keeps_rows_about_the_first_posts(tmp_path):
    """On a tiny site: comments of post 1 stay, of post 9 go; users named stay."""
    site = tmp_path / "site"
    site.mkdir()
    head = b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\r\n<%s>\r\n'
    (site / "Posts.xml").write_bytes(
        head % b"posts" + b'  <row Id="9" OwnerUserId="5" />\r\n'
        b'  <row Id="1" OwnerUserId="3" LastEditorUserId="4" />\r\n</posts>')
    (site / "Comments.xml").write_bytes(
        head % b"comments" + b'  <row Id="1" PostId="1" UserId="6" />\r\n'
        b'  <row Id="2" PostId="9" UserId="7" />\r\n</comments>')
    (site / "Users.xml").write_bytes(head % b"users" + b"".join(
        b'  <row Id="%d" />\r\n' % i for i in (-1, 3, 4, 5, 6, 7)) + b"</users>")
    (site / "Badges.xml").write_bytes(
        head % b"badges" + b'  <row Id="1" UserId="7" />\r\n'
        b'  <row Id="2" UserId="6" />\r\n</badges>')
    counts = load_trim().trim(site, tmp_path / "out", n_posts=1)
    assert counts == {"Posts.xml": (2, 2), "Comments.xml": (1, 2), "Users.xml": (4, 6),
                      "Badges.xml": (1, 2)}
    users = (tmp_path / "out" / "Users.xml").read_bytes()
    assert re.findall(rb'Id="(-?\d+)"', users) == [b"-1", b"3", b"4", b"6"]
    assert users.startswith(head % b"users") and users.endswith(b"\r\n</users>")


def test_the_bench_file_is_made_of_the_sample_posts(tmp_path):
    """bench/ingest.py's Posts.xml: every sample Posts row that has an Id, in order,
    renumbered; a valid dump file."""
    posts = [p for p in sorted(SAMPLES.glob("*/*"))
             if p.name.lower() in ("posts.xml", "posts_count_test.xml")]
    without_id = 1  # mixed-edge-cases/posts.xml: the row with WrongId
    rows = bench_ingest.sample_rows()
    assert len(rows) == sum(xml_row_count(p) for p in posts) - without_id
    path = bench_ingest.build_posts(tmp_path / "Posts.xml", 0.5)
    assert path.stat().st_size >= 500_000
    built = [dict(el.attrib) for _, el in etree.iterparse(str(path), tag="row")]
    assert [int(r["Id"]) for r in built] == list(range(1, len(built) + 1))
    first = etree.fromstring(rows[0])
    assert built[0]["Body"] == first.get("Body")
    assert built[0]["Title"] == first.get("Title")
