"""How beer-2014/ and cardano-2021/ were cut down from the files as published.

    python samples/stackexchange/trim.py PUBLISHED_SITE_FOLDER OUT_FOLDER [--posts 100]

Posts.xml, PostLinks.xml and Tags.xml are copied whole. Of the other files only the
rows about the first `--posts` posts (by Id) stay:

- Comments.xml, Votes.xml, PostHistory.xml: the rows whose PostId is one of them;
- Users.xml: the users those posts (OwnerUserId, LastEditorUserId) and the kept rows
  (UserId) name, and the Community user (-1);
- Badges.xml: the badges of the kept users.

Each kept line is copied byte for byte (BOM, XML declaration, root tag, line endings
and the closing tag included), so a trimmed file is still a valid dump file and the
same input gives the same bytes.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

WHOLE = ("Posts.xml", "PostLinks.xml", "Tags.xml")
BY_POST = ("Comments.xml", "Votes.xml", "PostHistory.xml")


def split(path: Path) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(lines before the rows, row lines, lines after), each line with its ending."""
    lines = path.read_bytes().splitlines(keepends=True)
    is_row = [line.lstrip().startswith(b"<row") for line in lines]
    if not any(is_row):
        return lines, [], []
    first = is_row.index(True)
    last = len(lines) - is_row[::-1].index(True)
    rows = lines[first:last]
    for n, line in enumerate(rows, first + 1):
        if not (line.lstrip().startswith(b"<row") and line.rstrip().endswith(b"/>")):
            raise SystemExit(f"{path}: line {n}: not one <row .../> on one line")
    return lines[:first], rows, lines[last:]


def attr(row: bytes, name: str) -> str | None:
    m = re.search(rb'\s' + name.encode() + rb'="([^"]*)"', row)
    return m.group(1).decode() if m else None


def keep(src: Path, out: Path, wanted) -> tuple[int, int]:
    """Write src's header, the rows wanted(row) accepts, and its tail to out."""
    head, rows, tail = split(src)
    kept = [row for row in rows if wanted(row)]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(b"".join(head + kept + tail))
    tmp.replace(out)
    return len(kept), len(rows)


def trim(site: Path, out: Path, n_posts: int = 100) -> dict[str, tuple[int, int]]:
    """Trim the dump files of `site` into `out`: file name -> (rows kept, rows)."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    _, posts, _ = split(site / "Posts.xml")
    first = sorted(posts, key=lambda row: int(attr(row, "Id")))[:n_posts]
    post_ids = {attr(row, "Id") for row in first}
    users = {"-1"}
    users |= {attr(row, a) for row in first for a in ("OwnerUserId", "LastEditorUserId")}
    for name in WHOLE:
        if (site / name).exists():
            shutil.copyfile(site / name, out / name)
            n = len(split(out / name)[1])
            counts[name] = (n, n)
    for name in BY_POST:
        if (site / name).exists():
            counts[name] = keep(site / name, out / name,
                                lambda row: attr(row, "PostId") in post_ids)
            users |= {attr(row, "UserId") for row in split(out / name)[1]}
    users.discard(None)
    if (site / "Users.xml").exists():
        counts["Users.xml"] = keep(site / "Users.xml", out / "Users.xml",
                                   lambda row: attr(row, "Id") in users)
    if (site / "Badges.xml").exists():
        counts["Badges.xml"] = keep(site / "Badges.xml", out / "Badges.xml",
                                    lambda row: attr(row, "UserId") in users)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", type=Path, help="a folder of the site's published XML files")
    ap.add_argument("out", type=Path, help="where the trimmed files go")
    ap.add_argument("--posts", type=int, default=100,
                    help="keep the rows about this many posts (default 100)")
    args = ap.parse_args()
    for name, (kept, total) in trim(args.site, args.out, args.posts).items():
        print(f"{name}: {kept} of {total} rows")


if __name__ == "__main__":
    main()
