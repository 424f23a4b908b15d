"""SIGKILL (a rented machine dying, the OOM killer): mid-behaviour the re-run finishes
with every row exactly once; mid-load or mid-ingest the warehouse keeps exactly what
it held (DuckDB rolls the open transaction back when the file is next opened).

To kill a load at a known point *inside* its transaction, the killed process is a
small driver that wraps one internal step of the real loader to print a marker and
sleep; the test waits for the marker and kills. Nothing in the product knows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from compute.run.cli import main as run_main
from ingest.compute_load import main as load_main
from tests.behaviour_helpers import prompts
from tests.conftest import ROOT, env_for
from tests.faults.helpers import (
    N_MATRICES,
    SITE,
    SITE_DIR,
    dump,
    query,
    spawn_load,
    wait_for_line,
)


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            cwd=ROOT, env=env_for(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_killed_mid_behaviour_resumes_with_every_row_once(small_pair, wh, tmp_path,
                                                          capsys):
    n_posts = 10
    short = prompts(n_posts)  # a dozen words each: the scoring is not what is tested
    short["text"] = short["text"].str.split().str[:12].str.join(" ")
    short.to_parquet(tmp_path / "prompts.parquet")
    out = tmp_path / "runs"
    args = ["--base", str(small_pair / "base"), "--sft", str(small_pair / "sft"),
            "--name", "beh", "--out", str(out), "--db", str(wh), "--prompts",
            str(tmp_path / "prompts.parquet"), "--batch-size", "1", "--no-progress"]
    before = dump(wh)
    proc = subprocess.Popen([sys.executable, "-m", "compute.run", *args], cwd=ROOT,
                            env=env_for(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    done_dir = out / "beh" / "behaviour" / "post_texts"
    deadline = time.monotonic() + 120
    while len(list(done_dir.glob("*.parquet"))) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    _kill(proc)
    finished = len(list(done_dir.glob("*.parquet")))
    assert 2 <= finished < n_posts, "the kill came too late to test resume"
    assert dump(wh) == before  # killed before its load: the warehouse as it was

    assert run_main(args) == 0
    assert "loaded into the warehouse" in capsys.readouterr().out
    texts = query(wh, "select post_id, n_tokens from raw.post_texts where pair = 'beh'")
    assert sorted(p for p, _ in texts) == list(range(1000, 1000 + n_posts))
    n_tokens = dict(texts)
    per_post = query(wh, "select post_id, role, count(*), count(distinct position), "
                     "min(position), max(position) from raw.token_logprobs "
                     "where pair = 'beh' group by all")
    assert len(per_post) == 2 * n_posts
    for post, _role, n, distinct, lo, hi in per_post:  # every token once, no gaps
        assert n == distinct == n_tokens[post] and (lo, hi) == (0, n - 1)
    drift = query(wh, "select post_id, count(*), count(distinct layer) from "
                  "raw.residual_drift where pair = 'beh' group by all")
    assert len(drift) == n_posts and {(c, d) for _, c, d in drift} == {(3, 3)}
    assert query(wh, "select count(distinct run_id) from raw.token_logprobs") == [(1,)]
    # what was there before is untouched
    after = dump(wh)
    for name in ("raw.se_posts", "raw.se_users"):
        assert after[name] == before[name]
    assert query(wh, "select count(*) from raw.spectra where pair = 'small'") == [
        (3 * N_MATRICES,)]


def test_killed_mid_load_leaves_the_old_rows(small_pair, wh, tmp_path, capsys):
    out = tmp_path / "runs"
    # a new run of pair 'small' (new run_id), computed but not loaded
    assert run_main(["--base", str(small_pair / "base"), "--sft",
                     str(small_pair / "sft"), "--name", "small", "--out", str(out),
                     "--skip-behaviour", "--no-load", "--no-progress"]) == 0
    capsys.readouterr()
    old_run = query(wh, "select distinct run_id from raw.spectra where pair = 'small'")
    before = dump(wh)

    proc = spawn_load(out / "small", wh, stall_s=120)
    wait_for_line(proc, "in-transaction")
    _kill(proc)
    assert dump(wh) == before  # the open transaction is gone, old rows intact
    assert query(wh, "select distinct run_id from raw.spectra where pair = 'small'"
                 ) == old_run

    assert load_main([str(out / "small"), "--db", str(wh)]) == 0  # load again: fine
    new_run = query(wh, "select distinct run_id from raw.spectra where pair = 'small'")
    assert new_run != old_run and len(new_run) == 1
    assert query(wh, "select count(*), count(distinct (tensor, role)) from raw.spectra"
                 " where pair = 'small'") == [(3 * N_MATRICES, 3 * N_MATRICES)]


INGEST_DRIVER = """
    import sys, time
    import ingest.stackexchange as se

    real = se._parsed

    def parse_then_stall(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            yield item
            if i == 1:  # two chunks parsed and sent to the INSERT, the rest not yet
                print("mid-file", flush=True)
                time.sleep(120)

    se._parsed = parse_then_stall
    se.load(sys.argv[1], se.LoadOptions(site=sys.argv[2], db=sys.argv[3], workers=1,
                                        chunk_bytes=2048, progress=False))
"""


def test_killed_mid_ingest_leaves_the_sites_rows(wh):
    before = dump(wh)
    assert before["raw.se_posts"][0] > 0
    proc = _spawn(INGEST_DRIVER, str(SITE_DIR), SITE, str(wh))
    wait_for_line(proc, "mid-file")
    _kill(proc)
    assert dump(wh) == before
