"""The C row parser (ingest/_sefast.c) against the lxml + Python reference.

Both must give the same Arrow tables, the same report, and the same errors at the
same lines: on every real sample file, on generated rows and on generated HTML.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from html import escape
from pathlib import Path

import pytest
from se_helpers import SAMPLES, fingerprint, load_quiet

from ingest import se_parse
from ingest.se_parse import (
    RowSplitter,
    SEInputError,
    parse_chunk_fast,
    parse_chunk_lxml,
    table_for_root,
)
from ingest.se_text import html_to_text, parse_tags
from ingest.stackexchange import _file_blocks
from tests.conftest import ROOT

_sefast = se_parse._sefast
# `make test` builds the parser; where it did not, every test here fails (not skips)
pytestmark = pytest.mark.c_extension


@pytest.fixture(autouse=True)
def c_parser_built():
    assert _sefast is not None, (
        "ingest._sefast is not built: `pip install -e .` compiles it (needs a C "
        "compiler); `make test-pure-python` tests the lxml fallback alone")

SAMPLE_FILES = sorted(p for p in SAMPLES.glob("*/*.xml"))


def test_the_c_parser_is_built_and_used(monkeypatch):
    """`pip install -e .` builds it; without it loads fall back to lxml (slower)."""
    assert se_parse.fast_parser_available()
    monkeypatch.setenv("SFTSCOPE_PURE_PYTHON", "1")
    assert not se_parse.fast_parser_available()


def _assert_same(data: bytes, table: str, first_line: int = 1, skip: bool = False):
    a, sa = parse_chunk_fast(table, "f.xml", data, first_line, skip)
    b, sb = parse_chunk_lxml(table, "f.xml", data, first_line, skip)
    assert a.schema == b.schema
    for name in a.column_names:
        assert a[name].to_pylist() == b[name].to_pylist(), name
    assert (sa.rows_read, sa.rows_dropped_fabricated, sa.skipped, sa.unknown) == (
        sb.rows_read, sb.rows_dropped_fabricated, sb.skipped, sb.unknown)
    return a


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_same_tables_as_lxml_on_every_sample(path: Path):
    splitter = RowSplitter(str(path), _file_blocks(path)())
    table = table_for_root(splitter.root)
    rows = 0
    for data, line in splitter.chunks(64 << 10):  # several chunks per file
        rows += _assert_same(data, table, line, skip="mixed-edge-cases" in str(path)).num_rows
    assert rows > 0


def _attr(rnd: random.Random) -> str:
    """An attribute value as the dump writes it, with the characters that matter."""
    pieces = ["plain", "a & b", "<p>x</p>", '"q"', "'s'", "caf\u00e9", "\u2003", "\t", "\n",
              "\r\n", "\u20ac100", "$$\\int_0^1 x\\,dx$$", "\U0001f600", " ", "-1", "&amp;",
              "&#39;", "\x7f"]
    raw = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 6)))
    quote = rnd.choice(['"', "'"])
    # escape as a writer would, sometimes as character references; literal tabs and
    # newlines (attribute-value normalisation turns them into spaces) in some rows
    text = escape(raw, quote=True)
    if rnd.random() < 0.5:
        text = text.replace("\n", "&#xA;").replace("\r", "&#xD;").replace("\t", "&#x9;")
    return quote + text + quote


def test_same_tables_as_lxml_on_generated_rows():
    rnd = random.Random(7)
    attrs = ["PostTypeId", "Score", "Body", "Title", "Tags", "OwnerUserId",
             "CreationDate", "ViewCount", "Surprise", "ContentLicense"]
    values = {
        "PostTypeId": lambda: f'"{rnd.choice([1, 2])}"',
        "Score": lambda: f'"{rnd.randint(-20, 50)}"',
        "OwnerUserId": lambda: f'"{rnd.choice([-1, 5, 77])}"',
        "CreationDate": lambda: f'"2014-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}T10:11:12.345"',
        "ViewCount": lambda: f'"{rnd.randint(0, 99999)}"',
        "Tags": lambda: rnd.choice(['"&lt;a&gt;&lt;b-c&gt;"', '"|x|y|"', '""', '" &lt;q&gt; "']),
    }
    rows = []
    for i in range(600):
        chosen = rnd.sample(attrs, rnd.randint(0, len(attrs)))  # any order, any subset
        parts = [f'Id="{rnd.choice([i, 1000000001, 1000000010])}"']
        for a in chosen:
            parts.append(f"{a}={values[a]() if a in values else _attr(rnd)}")
        rnd.shuffle(parts)
        sep = rnd.choice([" ", "  ", "\n    ", "\t"])
        rows.append(f"<row {sep.join(parts)}{rnd.choice([' />', '/>', '></row>'])}")
    data = "\n".join(rows).encode()
    table = _assert_same(data + b"\n<!-- a comment -->\n", "se_posts")
    assert table.num_rows > 500


def test_generated_html_matches_python():
    """C html_to_text equals se_text.html_to_text wherever C decides; the rest is
    handed to Python (checked below through parse_rows)."""
    fragments = [
        "<p>", "</p>", "<li>", "</li>", "<LI class=x>", "<br/>", "<br>", "<hr />",
        "<pre>", "<pre class='a'>", "</pre>", "</pre >", "</pre\n>", "<PRE>", "</PRE>",
        "<Pre>", "<prefix>", "<code>", "</code>", '<a href="x">', "</a>", "<", ">",
        "&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#39;", "&#x27;", "&#X41;", "&#10;",
        "&#13;", "&nbsp;", "&eacute;", "&", "&#", "&amp", "&#128;", "&#0;", "&#x1F600;",
        "&;", "& ", "\n", "\n\n", "\n\n\n", " ", "\t", "\r", "\r\n", "\xa0", "\u2003",
        "\u3000", "\x1c", "\x85", "\u200b", "x", "word", "$E=mc^2$", "\u00e9", "<l\u0131>",
        "<\u00e9>", "<h2>", "</h6>", "<blockquote>", "<img src=x>", "<!-- c -->", "<div>",
        "</ div>", "<table><tr><td>", "</td></tr></table>", "<ul>", "<ol>", "<dl><dt>",
        "<section>", "<li-x>", "<li_x>", "<p<b>", "<b>", "</b>", "-", "|", "\\(", "\\)",
        '<span class="math-container">', "</span>",
    ]
    rnd = random.Random(11)
    compared = fallback = 0
    for _ in range(20000):
        s = "".join(rnd.choice(fragments) for _ in range(rnd.randint(0, 14)))
        c = _sefast.html_to_text(s)
        if c is None:
            fallback += 1
            if not any(ch < " " and ch not in "\t\n\r" for ch in s):  # XML can hold it
                assert _parse_body(s) == html_to_text(s)
        else:
            compared += 1
            assert c == html_to_text(s), repr(s)
    assert compared > 8000  # most bodies never reach Python


def _parse_body(body: str) -> str:
    value = escape(body, quote=True)
    value = value.replace("\n", "&#xA;").replace("\r", "&#xD;").replace("\t", "&#x9;")
    data = f'<row Id="1" Body="{value}" />'.encode()
    out = _sefast.parse_rows(data, ("Id", "Body"), 1, -1, html_to_text)
    _validity, _offsets, text, _nulls = out["body_text"]
    return bytes(text).decode()


def test_sample_bodies_rarely_need_python():
    """The real bodies of the samples: C handles nearly all of them."""
    calls = []

    def counting(body):
        calls.append(body)
        return html_to_text(body)

    path = SAMPLES / "cardano-2021" / "Posts.xml"
    splitter = RowSplitter(str(path), _file_blocks(path)())
    attrs = se_parse.TABLES["se_posts"].attributes
    rows = 0
    for data, _ in splitter.chunks():
        rows += _sefast.parse_rows(data, attrs, attrs.index("Body"), -1, counting)["rows"]
    assert rows == 2630
    assert len(calls) < rows * 0.05


@pytest.mark.parametrize("tags", [
    "<a><b>", "|a|b|", "", "  ", "<>", "<", "|", "||a||", "<a><><b>", " <x> ", "<a>",
    "|one|", "<c++><c#>", "plain",
])
def test_tags_match_python(tags):
    data = f'<row Id="1" Tags="{escape(tags, quote=True)}" />'.encode()
    out = parse_chunk_fast("se_posts", "f.xml", data, 1)[0]
    assert out["tags"].to_pylist() == [parse_tags(tags)]


BAD = [
    (b'<row Id="1" Body="caf&eacute;" />', "eacute"),
    (b'<row Id="1" Body="a < b" />', "'<'"),
    (b'<row Id="1" Body="x" Body="y" />', "twice"),
    (b'<row Id="1" Body="\xe9" />', "UTF-8"),
    (b'<row Id="1" Body="\x01" />', "control character"),
    (b'<row Id="1" Body="&#1;" />', "not a valid XML character"),
    (b'<row Id="1" Body="unterminated />', "unterminated"),
    (b'<row Id="1"Body="x" />', "no space"),
    (b'<row Id="1">\n<row Id="2" />', "not closed"),
    (b'<col Id="1" />', "<col>"),
    (b'junk <row Id="1" />', "text outside"),
    (b'<row Id="1" Score=3 />', "without quotes"),
    (b"<!-- -- -->", "'--'"),
]


@pytest.mark.parametrize(("data", "fragment"), BAD, ids=[b[1] for b in BAD])
def test_bad_rows_name_the_line(data, fragment):
    data = b'<row Id="10" />\n<row Id="11"\n  Score="2" />\n' + data
    with pytest.raises(SEInputError) as err:
        parse_chunk_fast("se_posts", "f.xml", data, 40)
    assert str(err.value).startswith("f.xml: line 43: "), err.value
    assert fragment in str(err.value)
    with pytest.raises(SEInputError):  # the reference refuses it too
        parse_chunk_lxml("se_posts", "f.xml", data, 40)


PURE_PYTHON_LOAD = """
import json, sys
from tests.se_helpers import load_quiet
from ingest.se_parse import fast_parser_available
assert not fast_parser_available()  # SFTSCOPE_PURE_PYTHON: lxml in processes
site, db, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
ref = load_quiet(site, db, site="beer", workers=workers, chunk_bytes=100_000,
                 parallel_min_bytes=0)
print(json.dumps([f.rows_loaded for f in ref.files]))  # the last line of stdout
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_whole_site_loads_the_same_with_either_parser(tmp_path, workers):
    """The warehouse a load leaves is the same, row for row, whichever parser ran
    (C in threads, or lxml in processes), in one piece or in many chunks."""
    site = SAMPLES / "beer-2014"
    fast = load_quiet(site, tmp_path / "fast.duckdb", site="beer", workers=workers,
                      chunk_bytes=100_000, parallel_min_bytes=0)
    # the lxml reference in a process of its own, as the command line runs it: its
    # parser processes then start from a clean interpreter, whatever this test
    # process has run before
    ref_rows = json.loads(subprocess.run(
        [sys.executable, "-c", PURE_PYTHON_LOAD, str(site),
         str(tmp_path / "ref.duckdb"), str(workers)],
        cwd=ROOT, env={**os.environ, "SFTSCOPE_PURE_PYTHON": "1"}, check=True,
        capture_output=True, text=True, timeout=600).stdout.splitlines()[-1])
    got, want = fingerprint(tmp_path / "fast.duckdb"), fingerprint(tmp_path / "ref.duckdb")
    for volatile in ("se_loads", "schema_version"):  # load and upgrade times differ
        assert got.pop(volatile)[0] == want.pop(volatile)[0]  # same row counts
    assert got == want
    assert [f.rows_loaded for f in fast.files] == ref_rows
    assert got["se_posts"][0] == 728


def test_mutated_rows_parse_or_fail_cleanly():
    """Damaged rows (bytes inserted, deleted, changed): the C parser either refuses
    them, naming the line, as lxml does too, or parses them exactly as lxml does; it
    never crashes."""
    rows = (SAMPLES / "beer-2014" / "Posts.xml").read_bytes().split(b"\n")[3:400]
    pieces = [b"<", b">", b"&", b";", b'"', b"'", b"=", b"/", b"\n", b"\r", b"\x00",
              b"\xff", b"\xc3", b"&#", b"&#x", b"<row ", b"/>", b"<!--", b"-->",
              b"&lt;pre&gt;", b"&amp;"]
    rnd = random.Random(3)
    parsed = refused = 0
    for _ in range(3000):
        k = rnd.randrange(len(rows))
        data = bytearray(b"\n".join(rows[k:k + rnd.randint(1, 3)]))
        for _ in range(rnd.randint(1, 3)):
            pos = rnd.randrange(len(data) + 1)
            op = rnd.random()
            if op < 0.4:
                data[pos:pos] = rnd.choice(pieces)
            elif op < 0.7:
                del data[pos:pos + rnd.randint(1, 5)]
            elif pos < len(data):
                data[pos] = rnd.randrange(256)
        try:
            fast = parse_chunk_fast("se_posts", "f.xml", bytes(data), 1)[0]
        except SEInputError as err:
            refused += 1
            with pytest.raises(SEInputError):  # lxml refuses the same bytes
                parse_chunk_lxml("se_posts", "f.xml", bytes(data), 1)
            assert str(err).startswith("f.xml: line "), err
            continue
        parsed += 1
        ref = parse_chunk_lxml("se_posts", "f.xml", bytes(data), 1)[0]
        assert fast.to_pylist() == ref.to_pylist()
    assert parsed > 300 and refused > 300


def test_splitter_helpers_match_bytes_methods():
    """The C count_newlines and find the splitter uses give bytes.count and
    bytes.find's answers, on bytes and bytearray, for any start and end."""
    rnd = random.Random(5)
    alphabet = b"<\n/rowa"
    for _ in range(3000):
        data = bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(600)))
        needle = bytes(rnd.choice(alphabet) for _ in range(rnd.randint(1, 7)))
        start, end = rnd.randrange(len(data) + 3), rnd.randrange(len(data) + 3)
        for buf in (data, bytearray(data)):
            assert _sefast.count_newlines(buf, start, end) == data.count(b"\n", start, end)
            assert _sefast.count_newlines(buf) == data.count(b"\n")
            assert _sefast.find(buf, needle, start) == data.find(needle, start)
    with pytest.raises(ValueError):
        _sefast.find(b"abc", b"")


def test_the_splitter_cuts_whole_rows_with_their_lines():
    """Chunks of any size hold whole rows, concatenate to the file's rows, and carry
    the line of their first byte."""
    path = SAMPLES / "beer-2014" / "Posts.xml"
    raw = path.read_bytes()
    for chunk_bytes in (1, 5_000, 100_000, 1 << 22):
        splitter = RowSplitter(str(path), _file_blocks(path)())
        chunks = list(splitter.chunks(chunk_bytes))
        body = b"".join(c for c, _ in chunks)
        start = raw.index(body[:200])
        assert raw[start:start + len(body)] == body
        for data, line in chunks:
            pos = raw.index(data, start)
            assert raw.count(b"\n", 0, pos) + 1 == line
            assert data.lstrip().startswith(b"<row")
            start = pos + len(data)


def test_columns_come_back_without_a_copy():
    """parse_rows hands its buffers over (read-only, freed with the last array)."""
    out = _sefast.parse_rows(b'<row Id="7" Body="&lt;p&gt;hi&lt;/p&gt;" />', ("Id", "Body"),
                             1, -1, html_to_text)
    validity, offsets, data, nulls = out["columns"][1]
    view = memoryview(data)
    assert view.readonly and bytes(view) == b"<p>hi</p>" and nulls == 0
    with pytest.raises(TypeError):
        view[0] = 0
    table = parse_chunk_fast("se_posts", "f.xml", b'<row Id="7" Body="&lt;b&gt;x" />', 1)[0]
    del out, view, validity, offsets, data
    import gc

    gc.collect()
    assert table["body"].to_pylist() == ["<b>x"]
    assert table["body_text"].to_pylist() == ["x"]
