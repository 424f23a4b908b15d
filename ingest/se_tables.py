"""The Stack Exchange tables in `raw`: one per dump file, typed, plus the load report.

    from ingest.se_tables import TABLES, create_tables
    create_tables(con)                # raw.se_posts, raw.se_users, ... (empty if new)

Every attribute the dump documents becomes a snake_case column of its own type; a
missing attribute is NULL. Every table also has `site` (which site the row came from)
and `extra MAP(VARCHAR, VARCHAR)`: attributes this module does not know yet, kept
verbatim (the load reports their names once per file). Posts also get `tags` as
VARCHAR[] and `body_text` (see ingest/se_text.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:  # parser workers import this module: keep duckdb out of them
    import duckdb

# DuckDB type -> Arrow type the parser casts to (vectorised, in the worker).
ARROW_TYPES: dict[str, pa.DataType] = {
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "TIMESTAMP": pa.timestamp("ms"),
    "BOOLEAN": pa.bool_(),
    "VARCHAR": pa.large_string(),
}


@dataclass(frozen=True)
class Table:
    name: str  # raw.<name>
    root: str  # the XML root element, also the file stem lowercased
    file: str  # file name as published
    columns: tuple[tuple[str, str, str], ...]  # (attribute, column, duckdb type)
    grain: str

    @property
    def attributes(self) -> tuple[str, ...]:
        """The XML attributes of the table's columns, in order."""
        return tuple(a for a, _, _ in self.columns)


def _cols(spec: str) -> tuple[tuple[str, str, str], ...]:
    """'Id BIGINT, PostTypeId INTEGER' -> (('Id', 'id', 'BIGINT'), ...)."""
    out = []
    for part in spec.split(","):
        attr, typ = part.split()
        out.append((attr, _snake(attr), typ))
    return tuple(out)


def _snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    return s.replace("GUID", "_guid").lower().replace("__", "_")


TABLES: dict[str, Table] = {
    t.name: t
    for t in [
        Table(
            "se_posts", "posts", "Posts.xml",
            _cols(
                "Id BIGINT, PostTypeId INTEGER, AcceptedAnswerId BIGINT, ParentId BIGINT,"
                " CreationDate TIMESTAMP, DeletionDate TIMESTAMP, Score INTEGER,"
                " ViewCount INTEGER, Body VARCHAR, OwnerUserId BIGINT,"
                " OwnerDisplayName VARCHAR, LastEditorUserId BIGINT,"
                " LastEditorDisplayName VARCHAR, LastEditDate TIMESTAMP,"
                " LastActivityDate TIMESTAMP, Title VARCHAR, Tags VARCHAR,"
                " AnswerCount INTEGER, CommentCount INTEGER, FavoriteCount INTEGER,"
                " ClosedDate TIMESTAMP, CommunityOwnedDate TIMESTAMP,"
                " ContentLicense VARCHAR"
            ),
            "One row per post (question, answer, wiki, ...) per site.",
        ),
        Table(
            "se_users", "users", "Users.xml",
            _cols(
                "Id BIGINT, Reputation INTEGER, CreationDate TIMESTAMP,"
                " DisplayName VARCHAR, LastAccessDate TIMESTAMP, WebsiteUrl VARCHAR,"
                " Location VARCHAR, AboutMe VARCHAR, Views INTEGER, UpVotes INTEGER,"
                " DownVotes INTEGER, ProfileImageUrl VARCHAR, EmailHash VARCHAR,"
                " AccountId BIGINT, Age INTEGER"
            ),
            "One row per user per site (Id -1 is the Community bot).",
        ),
        Table(
            "se_comments", "comments", "Comments.xml",
            _cols(
                "Id BIGINT, PostId BIGINT, Score INTEGER, Text VARCHAR,"
                " CreationDate TIMESTAMP, UserDisplayName VARCHAR, UserId BIGINT,"
                " ContentLicense VARCHAR"
            ),
            "One row per comment per site.",
        ),
        Table(
            "se_votes", "votes", "Votes.xml",
            _cols(
                "Id BIGINT, PostId BIGINT, VoteTypeId INTEGER, UserId BIGINT,"
                " CreationDate TIMESTAMP, BountyAmount INTEGER"
            ),
            "One row per vote per site (dates are truncated to the day by the dump).",
        ),
        Table(
            "se_badges", "badges", "Badges.xml",
            _cols(
                "Id BIGINT, UserId BIGINT, Name VARCHAR, Date TIMESTAMP,"
                " Class INTEGER, TagBased BOOLEAN"
            ),
            "One row per badge awarded per site.",
        ),
        Table(
            "se_post_links", "postlinks", "PostLinks.xml",
            _cols(
                "Id BIGINT, CreationDate TIMESTAMP, PostId BIGINT,"
                " RelatedPostId BIGINT, LinkTypeId INTEGER"
            ),
            "One row per link between two posts per site (1 linked, 3 duplicate).",
        ),
        Table(
            "se_post_history", "posthistory", "PostHistory.xml",
            _cols(
                "Id BIGINT, PostHistoryTypeId INTEGER, PostId BIGINT,"
                " RevisionGUID VARCHAR, CreationDate TIMESTAMP, UserId BIGINT,"
                " UserDisplayName VARCHAR, Comment VARCHAR, Text VARCHAR,"
                " ContentLicense VARCHAR"
            ),
            "One row per revision event of a post per site (Text is Markdown source).",
        ),
        Table(
            "se_tags", "tags", "Tags.xml",
            _cols(
                "Id BIGINT, TagName VARCHAR, Count INTEGER, ExcerptPostId BIGINT,"
                " WikiPostId BIGINT, IsModeratorOnly BOOLEAN, IsRequired BOOLEAN"
            ),
            "One row per tag per site.",
        ),
    ]
}

BY_ROOT: dict[str, Table] = {t.root: t for t in TABLES.values()}

LOADS_DDL = """
    site VARCHAR NOT NULL,
    table_name VARCHAR NOT NULL,      -- raw.<table_name>
    source VARCHAR NOT NULL,          -- the file (or archive!entry) read
    rows_read BIGINT NOT NULL,        -- <row> elements in the file
    rows_loaded BIGINT NOT NULL,
    rows_dropped_fabricated BIGINT NOT NULL,  -- Posts 1000000001 / 1000000010
    rows_skipped BIGINT NOT NULL,     -- bad rows skipped (only with --skip-bad-rows)
    unknown_attributes VARCHAR[],     -- kept in the `extra` column
    bytes BIGINT NOT NULL,
    seconds DOUBLE NOT NULL,
    loaded_at TIMESTAMP NOT NULL
"""


# Long text columns are stored with zstd: smaller than DuckDB's default choice (FSST
# or dictionary) on post bodies and three times faster to write (bench/ingest.py).
ZSTD_COLUMNS = {
    "se_posts": ("body", "body_text"),
    "se_post_history": ("text",),
    "se_comments": ("text",),
    "se_users": ("about_me",),
}


def column_ddl(table: Table) -> list[tuple[str, str]]:
    """(column, duckdb type) in table order: site, the attributes, derived, extra."""
    cols = [("site", "VARCHAR NOT NULL")]
    cols += [(c, t) for _, c, t in table.columns]
    if table.name == "se_posts":
        # `tags` (the raw attribute) is kept as tags_raw; `tags` is the parsed list.
        cols = [(("tags_raw" if c == "tags" else c), t) for c, t in cols]
        cols += [("tags", "VARCHAR[]"), ("body_text", "VARCHAR")]
    cols.append(("extra", "MAP(VARCHAR, VARCHAR)"))
    zstd = ZSTD_COLUMNS.get(table.name, ())
    return [(c, f"{t} USING COMPRESSION zstd" if c in zstd else t) for c, t in cols]


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create raw.se_* and raw.se_loads, empty, where missing (cheap if present)."""
    con.execute("create schema if not exists raw")
    existing = {
        r[0]
        for r in con.execute(
            "select table_name from duckdb_tables() where schema_name = 'raw'"
            " and database_name = current_database()"
        ).fetchall()
    }
    for table in TABLES.values():
        if table.name in existing:
            continue
        cols = ",\n    ".join(f"{c} {t}" for c, t in column_ddl(table))
        con.execute(f"create table if not exists raw.{table.name} (\n    {cols}\n)")
    if "se_loads" not in existing:
        con.execute(f"create table if not exists raw.se_loads ({LOADS_DDL})")
