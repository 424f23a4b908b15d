"""The demo site end to end: generate, load, `dbt build`, the prompts mart, export.

The demo site is the generated site with known scores and lengths: the test derives
the expected groups from its XML on its own (lxml + html_to_text) and compares.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from lxml import etree
from se_helpers import SAMPLES, load_quiet, query

from ingest import demo_site
from ingest.export_prompts import export
from ingest.se_text import html_to_text

ROOT = Path(__file__).resolve().parents[1]
DBT = Path(sys.executable).with_name("dbt")
MIN_CHARS, LOW_MAX, HIGH_MIN, SEED = 1000, -3, 4, 6197

pytestmark = pytest.mark.slow


def dbt(db: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SFTSCOPE_DB": str(db),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    proc = subprocess.run([str(DBT), *args], cwd=ROOT / "dbt_project", env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("demo")
    site = tmp / "demo-site"
    demo_site.generate(site)
    db = tmp / "w.duckdb"
    load_quiet(site, db, site="physics.demo")
    # another site, to show the mart picks one; default vars, as `make demo` runs it
    load_quiet(SAMPLES / "blender-meta-2013", db, site="blender")
    # the demo pair's training threads, as `make demo` loads them before the prompts
    from ingest.training_log import load_log

    load_log(ROOT / "models" / "demo", "demo", db)
    # the staging view the marts read, the four marts, their data and unit tests
    dbt(db, "build", "--quiet", "--select", "+prompt_candidates+")
    return site, db


def expected_groups(site: Path, held_out_only: bool = True
                    ) -> dict[int, tuple[str, str]]:
    """post id -> (grp, text) from the XML alone; by default only the posts of
    threads the demo pair's training held out (crc32("physics.demo:<question id>")
    % 10 == 0, docs/demo.md), as the prompts mart selects by default."""
    out = {}
    for _, el in etree.iterparse(str(site / "Posts.xml"), tag="row"):
        kind = {"1": "question", "2": "answer"}.get(el.get("PostTypeId"))
        score, body = int(el.get("Score")), html_to_text(el.get("Body"))
        if el.get("OwnerUserId") == "-1" or kind is None or len(body) < MIN_CHARS:
            continue
        thread = el.get("Id") if kind == "question" else el.get("ParentId")
        if held_out_only and zlib.crc32(f"physics.demo:{thread}".encode()) % 10:
            continue
        grp = "low" if score <= LOW_MAX else "high" if score >= HIGH_MIN else None
        if grp:
            text = f"{el.get('Title')}\n\n{body}" if kind == "question" else body
            out[int(el.get("Id"))] = (grp, text)
    return out


def test_demo_site_is_deterministic_and_sized(demo, tmp_path):
    site, _ = demo
    demo_site.generate(tmp_path)
    for f in site.iterdir():
        assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f.name
    assert (site / "Posts.xml").read_bytes().startswith(b"\xef\xbb\xbf<?xml")
    groups = expected_groups(site, held_out_only=False)
    for grp in ("low", "high"):
        texts = [t for g, t in groups.values() if g == grp]
        assert 60 <= len(texts) <= 80
        assert all(1000 <= len(t) <= 2600 for t in texts)
    # held out of the demo pair's training: both groups of both post types
    held = expected_groups(site)
    kinds = {int(el.get("Id")): el.get("PostTypeId") for _, el in etree.iterparse(
        str(site / "Posts.xml"), tag="row")}
    for grp in ("low", "high"):
        ids = [i for i, (g, _) in held.items() if g == grp]
        assert sum(kinds[i] == "1" for i in ids) >= 10, grp  # questions
        assert sum(kinds[i] == "2" for i in ids) >= 20, grp  # answers
    body = (site / "Posts.xml").read_text("utf-8-sig")
    for feature in ("&lt;pre&gt;&lt;code&gt;", "$$", "&amp;amp;", "|quantum-mechanics|"):
        assert feature in body, feature


def test_prompts_mart_selects_the_known_posts(demo):
    site, db = demo
    want = expected_groups(site)
    got = query(db, "select site, post_id, grp, text, n_chars, score, post_type, title"
                " from marts.prompts")
    assert {r[0] for r in got} == {"physics.demo"}  # fallback: prompt_site not loaded
    assert {r[1]: (r[2], r[3]) for r in got} == want  # all fit: <= 100 per group
    for _, _, grp, text, n_chars, score, kind, title in got:
        assert n_chars == len(text)
        assert (score <= LOW_MAX) if grp == "low" else (score >= HIGH_MIN)
        assert (title is not None) == (kind == "question")
    types = dict(query(db, "select column_name, data_type from"
                       " information_schema.columns where table_schema = 'marts'"
                       " and table_name = 'prompts'"))
    assert types["post_id"] == "BIGINT" and types["score"] == "INTEGER"
    assert types["n_chars"] == "INTEGER" and types["text"] == "VARCHAR"


def test_sample_order_is_md5_of_seed_and_post(demo):
    _, db = demo
    rows = query(db, "select grp, post_id, sample_rank from marts.prompts")
    for grp in ("low", "high"):
        ids = [r[1] for r in rows if r[0] == grp]
        order = sorted(ids, key=lambda i: (
            hashlib.md5(f"{SEED}:physics.demo:{i}".encode()).hexdigest(), i))
        ranks = {r[1]: r[2] for r in rows if r[0] == grp}
        assert [ranks[i] for i in order] == list(range(1, len(ids) + 1))


def test_group_counts_and_histogram(demo):
    site, db = demo
    want = expected_groups(site)
    counts = {r[0]: r[1:] for r in query(
        db, "select grp, n_candidates, n_selected from marts.prompt_group_counts")}
    every = expected_groups(site, held_out_only=False)
    for grp in ("low", "high"):
        n = sum(1 for g, _ in want.values() if g == grp)
        n_long = sum(1 for g, _ in every.values() if g == grp)
        assert counts[grp] == (n_long, n)
    assert counts["between"][1] == 0
    hist = query(db, "select sum(n_posts), sum(n_selected) from"
                 " marts.prompt_score_histogram")
    assert hist == [(256, len(want))]
    # every selected post is held out; the candidates say which were trained on
    trained = query(db, "select count(*) filter (where in_demo_training and is_long"
                    " and grp is not null), count(*) filter (where in_demo_training"
                    " and is_selected) from marts.prompt_candidates")
    assert trained[0][0] == len(expected_groups(site, held_out_only=False)) - len(want)
    assert trained[0][1] == 0


def test_export_prompts_parquet(demo, tmp_path):
    _, db = demo
    out = tmp_path / "out" / "prompts.parquet"
    n = export(out, db)
    table = pq.read_table(out)
    assert table.num_rows == n > 0
    assert {"site", "post_id", "post_type", "grp", "score", "title", "text",
            "n_chars"} <= set(table.column_names)
    assert not list(out.parent.glob(".*tmp"))
    proc = subprocess.run([sys.executable, "-m", "ingest.export_prompts",
                           str(tmp_path / "cli.parquet"), "--db", str(db)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and f"{n} prompts" in proc.stdout
