"""Streaming a dump file: split the byte stream into chunks of whole rows, parse each
chunk into a typed Arrow table.

    splitter = RowSplitter("Posts.xml", blocks)        # blocks: an iterator of bytes
    splitter.root                                       # 'posts' (read from the file)
    for data, first_line in splitter.chunks(4 << 20):
        table, stats = parse_chunk("se_posts", "Posts.xml", data, first_line)

The splitter only looks at bytes (header, root tag, where a `<row` starts, the closing
tag): it is cheap and runs in the reading process. `parse_chunk` does the expensive
part (lxml parse, typed columns, body_text) and is what worker processes run, so the
rows of one file are parsed on all cores while the file is read once, in order, and
memory stays bounded by a few chunks whatever the file size. A chunk always starts at
a `<row`, so it is a sequence of whole elements that lxml parses on its own once it is
wrapped in the root tag; errors are reported with the file's own line numbers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from lxml import etree

from ingest.se_tables import ARROW_TYPES, BY_ROOT, TABLES
from ingest.se_text import html_to_text, parse_tags

try:  # the C row parser (ingest/_sefast.c), built by `pip install -e .`
    from ingest import _sefast
except ImportError:  # pragma: no cover - a build without a C compiler
    _sefast = None

BOM = b"\xef\xbb\xbf"
FABRICATED_POST_IDS = ("1000000001", "1000000010")
_WS = b" \t\r\n"
_HEADER_LIMIT = 1 << 20
_ROOT_RE = re.compile(rb"<([A-Za-z_][\w.-]*)(\s[^<>]*?)?(/?)>")
_ENCODING_RE = re.compile(rb"""encoding\s*=\s*["']([^"']*)["']""")
_TAIL_RE = re.compile(rb"(?:\s|<!--.*?-->)*", re.S)
_POS_RE = re.compile(r",? line \d+, column \d+\s*$")


class SEInputError(ValueError):
    """A dump file we refuse to load; the message names the file and the line."""


class CorruptSource(OSError):
    """Raised by a block iterator whose bytes cannot be read (a corrupt archive)."""


if _sefast is not None:  # the same results as bytes.count / bytes.find, faster
    _count_newlines, _find = _sefast.count_newlines, _sefast.find
else:
    def _count_newlines(buf, start: int = 0, end: int | None = None) -> int:
        return buf.count(b"\n", start, len(buf) if end is None else end)

    def _find(buf, needle: bytes, start: int = 0) -> int:
        return buf.find(needle, start)


def _take(pending: bytearray, cut: int) -> bytes:
    """pending[:cut] as bytes (one copy), removed from pending."""
    with memoryview(pending) as view:
        data = bytes(view[:cut])
    del pending[:cut]
    return data


def _fail(source: str, line: int | None, msg: str) -> SEInputError:
    where = f"{source}: line {line}" if line is not None else source
    return SEInputError(f"{where}: {msg}")


class RowSplitter:
    """Reads a dump file's header from `blocks` at once; `chunks()` streams the rest."""

    def __init__(self, source: str, blocks: Iterator[bytes], on_bytes=None):
        self.source = source
        self._blocks = blocks
        self._on_bytes = on_bytes or (lambda n: None)
        self.bytes_read = 0
        self._eof = False
        self.root, self._rest, self._line = self._read_header()

    def _next_block(self, line) -> bytes | None:
        """The next block, None at the end; `line` (an int, or a callable giving it,
        evaluated only on error) locates a read error."""
        if self._eof:
            return None
        try:
            block = next(self._blocks)
        except StopIteration:
            self._eof = True
            return None
        except CorruptSource as exc:
            raise _fail(self.source, line() if callable(line) else line, str(exc)) from exc
        self.bytes_read += len(block)
        self._on_bytes(len(block))
        return block

    def _read_header(self) -> tuple[str, bytearray, int]:
        buf = bytearray()
        while True:
            parsed = self._parse_header(buf)
            if parsed is not None:
                return parsed
            block = self._next_block(lambda b=buf: b.count(b"\n") + 1)
            if block is None:
                if not buf.strip(_WS + BOM):
                    raise _fail(self.source, 1, "empty file (no XML root element)")
                parsed = self._parse_header(buf, final=True)
                assert parsed is not None
                return parsed
            buf += block
            if len(buf) > _HEADER_LIMIT:
                raise _fail(self.source, 1, "no root element in the first 1 MiB")

    def _parse_header(self, buf: bytearray, final: bool = False):
        """(root, rest, line) or None when more bytes are needed."""
        pos = 3 if buf.startswith(BOM) else 0
        if buf[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise _fail(self.source, 1, "UTF-16 file; the dump is UTF-8")

        def line() -> int:
            return buf.count(b"\n", 0, pos) + 1

        while True:
            while pos < len(buf) and buf[pos] in _WS:
                pos += 1
            if pos >= len(buf):
                if final:
                    raise _fail(self.source, line(), "no XML root element")
                return None
            if buf.startswith(b"<?", pos):
                end = buf.find(b"?>", pos)
                if end < 0:
                    return self._need_more(final, line(), "unterminated <?...?>")
                decl = bytes(buf[pos:end])
                m = _ENCODING_RE.search(decl)
                if m and m.group(1).lower().replace(b"_", b"-") not in (b"utf-8", b"utf8"):
                    raise _fail(
                        self.source, line(),
                        f"encoding {m.group(1).decode(errors='replace')!r}; the dump"
                        " is UTF-8",
                    )
                pos = end + 2
            elif buf.startswith(b"<!--", pos):
                end = buf.find(b"-->", pos)
                if end < 0:
                    return self._need_more(final, line(), "unterminated comment")
                pos = end + 3
            elif buf.startswith(b"<!", pos):
                raise _fail(self.source, line(), "a DOCTYPE is not accepted in a dump")
            elif buf.startswith(b"<", pos):
                m = _ROOT_RE.match(buf, pos)
                if not m:
                    if buf.find(b">", pos) < 0:
                        return self._need_more(final, line(), "unterminated root tag")
                    raise _fail(self.source, line(), "malformed root tag")
                root = m.group(1).decode()
                root_line = line()
                rest = bytearray(buf[m.end():])
                if m.group(3):  # <posts/>: no rows
                    rest = bytearray(f"</{root}>".encode()) + rest
                return root, rest, root_line + buf.count(b"\n", pos, m.end())
            else:
                raise _fail(self.source, line(), "not XML: expected '<'")

    def _need_more(self, final: bool, line: int, msg: str):
        if final:
            raise _fail(self.source, line, msg)
        return None

    def chunks(self, chunk_bytes: int = 4 << 20) -> Iterator[tuple[bytes, int]]:
        """(bytes holding whole rows, line number of their first byte) until the
        closing root tag; then checks that only comments and whitespace follow."""
        close = f"</{self.root}".encode()
        pending, line = self._rest, self._line
        self._rest = bytearray()
        searched = 0
        while True:
            k = _find(pending, close, max(0, searched - len(close)))
            if k >= 0:
                break
            searched = len(pending)
            while len(pending) >= chunk_bytes:
                cut = pending.rfind(b"<row", 0, chunk_bytes + 1)
                if cut <= 0:
                    cut = pending.find(b"<row", 1)  # one row bigger than a chunk
                    if cut < 0:
                        break
                data = _take(pending, cut)
                searched = max(0, searched - cut)
                yield data, line
                line += _count_newlines(data)
            block = self._next_block(lambda n=line, p=pending: n + _count_newlines(p))
            if block is None:
                raise _fail(
                    self.source, line + pending.count(b"\n"),
                    f"the file ends before </{self.root}> (truncated?)",
                )
            pending += block
        tail = pending[k:]
        body = pending[:k]
        del pending
        while len(body) > chunk_bytes:
            cut = body.rfind(b"<row", 0, chunk_bytes + 1)
            if cut <= 0:
                break
            data = _take(body, cut)
            yield data, line
            line += _count_newlines(data)
        if body.strip(_WS):
            yield bytes(body), line
        line += _count_newlines(body)
        while (block := self._next_block(line)) is not None:
            tail += block
            if len(tail) > _HEADER_LIMIT:
                break
        m = re.compile(rb"</" + re.escape(self.root.encode()) + rb"\s*>").match(tail)
        if not m:
            raise _fail(self.source, line, f"malformed </{self.root}> tag")
        after = _TAIL_RE.match(tail, m.end())
        if after.end() != len(tail):
            extra_line = line + tail.count(b"\n", 0, after.end())
            raise _fail(
                self.source, extra_line, f"content after the root element </{self.root}>"
            )


# ---------------------------------------------------------------- parsing a chunk


@dataclass
class ChunkStats:
    rows_read: int = 0
    rows_dropped_fabricated: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    unknown: set[str] = field(default_factory=set)


_PARSER: etree.XMLParser | None = None


def _parser() -> etree.XMLParser:
    global _PARSER  # one per process: lxml parsers are not shared between threads
    if _PARSER is None:
        _PARSER = etree.XMLParser(
            resolve_entities=False, huge_tree=True, remove_comments=True,
            remove_pis=True, no_network=True, load_dtd=False,
        )
    return _PARSER


def fast_parser_available() -> bool:
    """True when the C parser is built and not switched off (SFTSCOPE_PURE_PYTHON=1)."""
    return _sefast is not None and os.environ.get("SFTSCOPE_PURE_PYTHON", "") in ("", "0")


def parse_chunk(
    table_name: str, source: str, data: bytes, first_line: int,
    skip_bad_rows: bool = False,
) -> tuple[pa.Table, ChunkStats]:
    """Rows of one chunk as an Arrow table with the raw table's columns and types
    (all but `site`), and what was dropped, skipped or unknown.

    The C parser does it when built (same tables, same errors); lxml otherwise."""
    if fast_parser_available():
        return parse_chunk_fast(table_name, source, data, first_line, skip_bad_rows)
    return parse_chunk_lxml(table_name, source, data, first_line, skip_bad_rows)


def _large_string(n: int, validity: bytes, offsets: bytes, data: bytes, nulls: int):
    return pa.Array.from_buffers(
        pa.large_string(), n,
        [pa.py_buffer(validity) if nulls else None, pa.py_buffer(offsets),
         pa.py_buffer(data)],
        null_count=nulls,
    )


def parse_chunk_fast(
    table_name: str, source: str, data: bytes, first_line: int,
    skip_bad_rows: bool = False,
) -> tuple[pa.Table, ChunkStats]:
    """parse_chunk by ingest/_sefast.c: the XML is scanned once, each attribute lands
    in an Arrow buffer, body_text and tags are made in C; only the casts and the
    (rare) skipped, fabricated or unknown-attribute rows go through Python."""
    table = TABLES[table_name]
    attrs = table.attributes
    is_posts = table_name == "se_posts"
    try:
        out = _sefast.parse_rows(
            data, attrs,
            attrs.index("Body") if is_posts else -1,
            attrs.index("Tags") if is_posts else -1,
            html_to_text,
        )
    except _sefast.ParseError as exc:
        msg, line = exc.args
        raise _fail(source, first_line + line, msg) from None
    n = out["rows"]
    stats = ChunkStats(rows_read=n)
    lines = memoryview(out["lines"]).cast("i")  # line of each row, 0 = the chunk's first
    cols = {a: _large_string(n, *bufs) for a, bufs in zip(attrs, out["columns"], strict=True)}
    extra: list = [None] * n
    for i, pairs in out["unknown"]:
        extra[i] = pairs
    keep = None
    if cols["Id"].null_count:
        missing = pc.indices_nonzero(pc.is_null(cols["Id"])).to_pylist()
        if not skip_bad_rows:
            line = first_line + lines[missing[0]]
            raise _fail(source, line, "a row without Id (--skip-bad-rows skips such rows)")
        stats.skipped = [(first_line + lines[i], "row without Id") for i in missing]
        keep = pc.is_valid(cols["Id"])
    kept = keep.to_pylist() if keep is not None else None
    for i, pairs in out["unknown"]:
        if kept is None or kept[i]:
            stats.unknown.update(k for k, _ in pairs)
    if is_posts:
        fabricated = pc.and_kleene(
            pc.is_in(cols["Id"], pa.array(FABRICATED_POST_IDS, pa.large_string())),
            pc.equal(cols["OwnerUserId"], "-1"),
        ).fill_null(False)
        stats.rows_dropped_fabricated = pc.sum(fabricated).as_py() or 0
        if stats.rows_dropped_fabricated:
            keep = pc.invert(fabricated) if keep is None else pc.and_(keep, pc.invert(fabricated))
        body_text = _large_string(n, *out["body_text"])
        list_offsets, child = out["tags"]
        offsets = pa.Array.from_buffers(pa.int32(), n + 1, [None, pa.py_buffer(list_offsets)])
        values = _large_string(offsets[-1].as_py(), *child)
        tags = pa.ListArray.from_arrays(
            offsets, values, type=pa.list_(pa.large_string()),
            mask=pc.is_null(cols["Tags"]) if cols["Tags"].null_count else None,
        )
    row_lines: list[int] | memoryview = lines
    if keep is not None:
        kept = keep.to_pylist()
        cols = {a: c.filter(keep) for a, c in cols.items()}
        extra = [x for x, k in zip(extra, kept, strict=True) if k]
        row_lines = [ln for ln, k in zip(lines, kept, strict=True) if k]
        if is_posts:
            body_text, tags = body_text.filter(keep), tags.filter(keep)
    arrays: dict[str, pa.Array] = {}
    for attr, col, typ in table.columns:
        arr = cols[attr]
        if typ != "VARCHAR":
            arr = _cast(arr, ARROW_TYPES[typ], source, attr, first_line + 1, row_lines)
        arrays["tags_raw" if (is_posts and col == "tags") else col] = arr
    if is_posts:
        arrays["tags"] = tags
        arrays["body_text"] = body_text
    # pa.array of n Nones costs more than the whole scan: nulls unless needed
    arrays["extra"] = (
        pa.array(extra, _EXTRA_TYPE) if out["unknown"] else pa.nulls(len(extra), _EXTRA_TYPE)
    )
    return pa.table(arrays), stats


_EXTRA_TYPE = pa.map_(pa.large_string(), pa.large_string())


def parse_chunk_lxml(
    table_name: str, source: str, data: bytes, first_line: int,
    skip_bad_rows: bool = False,
) -> tuple[pa.Table, ChunkStats]:
    """parse_chunk by lxml and Python: the reference the C parser is tested against."""
    table = TABLES[table_name]
    root = table.root.encode()
    try:
        tree = etree.fromstring(b"<" + root + b">" + data + b"</" + root + b">", _parser())
    except etree.XMLSyntaxError as exc:
        msg = _POS_RE.sub("", str(exc.msg or exc)).strip()
        if "encoding" in msg or "UTF-8" in msg:
            msg = f"not valid UTF-8 ({msg})"
        raise _fail(source, first_line + (exc.lineno or 1) - 1, msg) from None
    if tree.text and tree.text.strip():
        raise _fail(source, first_line, "text outside a <row> element")
    stats = ChunkStats()
    attrs = table.attributes
    n = len(tree)
    cols: dict[str, list] = {a: [None] * n for a in attrs}
    id_col = cols["Id"]
    extra: list = [None] * n
    keep = bytearray(b"\x01") * n  # 0: skipped or dropped row
    lines: list[int] = [0] * n
    is_posts = table_name == "se_posts"
    for i, el in enumerate(tree):
        # One pass over the attributes present (a post has ~12 of 23): each goes
        # to its column, an unknown one to `extra`.
        for k, v in el.items():
            col = cols.get(k)
            if col is None:
                if extra[i] is None:
                    extra[i] = []
                extra[i].append((k, v))
            else:
                col[i] = v
        if el.tag != "row":
            line = first_line + el.sourceline - 1
            raise _fail(source, line, f"unexpected element <{el.tag}> (expected <row>)")
        lines[i] = el.sourceline
        if el.tail and el.tail.strip():
            line = first_line + el.sourceline - 1 + el.tail.count("\n", 0, len(el.tail) - len(el.tail.lstrip()))
            raise _fail(source, line, "text outside a <row> element")
        if id_col[i] is None:
            line = first_line + el.sourceline - 1
            if skip_bad_rows:
                stats.skipped.append((line, "row without Id"))
                keep[i] = 0
                continue
            raise _fail(source, line, "a row without Id (--skip-bad-rows skips such rows)")
        if extra[i] is not None:
            stats.unknown.update(k for k, _ in extra[i])
        if (
            is_posts and id_col[i] in FABRICATED_POST_IDS
            and cols["OwnerUserId"][i] == "-1"
        ):
            stats.rows_dropped_fabricated += 1
            keep[i] = 0
    stats.rows_read = n
    if keep.count(0):
        idx = [i for i in range(n) if keep[i]]
        cols = {a: [c[i] for i in idx] for a, c in cols.items()}
        extra = [extra[i] for i in idx]
        lines = [lines[i] for i in idx]
    arrays: dict[str, pa.Array] = {}
    for attr, col, typ in table.columns:
        arr = pa.array(cols[attr], pa.large_string())
        if typ != "VARCHAR":
            arr = _cast(arr, ARROW_TYPES[typ], source, attr, first_line, lines)
        arrays["tags_raw" if (is_posts and col == "tags") else col] = arr
    if is_posts:
        arrays["tags"] = pa.array(
            [parse_tags(t) for t in cols["Tags"]], pa.list_(pa.large_string())
        )
        arrays["body_text"] = pa.array(
            [html_to_text(b) for b in cols["Body"]], pa.large_string()
        )
    arrays["extra"] = pa.array(extra, pa.map_(pa.large_string(), pa.large_string()))
    return pa.table(arrays), stats


def _cast(arr, typ, source, attr, first_line, lines) -> pa.Array:
    try:
        return pc.cast(arr, typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for i, value in enumerate(arr.to_pylist()):  # find the culprit, only on error
        if value is None:
            continue
        try:
            pc.cast(pa.array([value]), typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise _fail(
                source, first_line + lines[i] - 1,
                f"{attr}={value!r} is not a valid {typ}",
            ) from None
    raise _fail(source, None, f"{attr}: cannot cast to {typ}")


def table_for_root(root: str) -> str | None:
    """The raw table of a dump file's root element (None: not a dump table)."""
    t = BY_ROOT.get(root.lower())
    return t.name if t else None
