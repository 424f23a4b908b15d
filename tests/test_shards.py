"""`compute.run --shard I/N` and `--dry-run` (compute.plan.shards).

Any mix of shards, in any order, writes exactly the rows a single run writes (the
planted pair); the split is balanced and covers every tensor once; the dry run of a
Qwen2.5-72B-shaped pair (headers only, sparse files) states the memory a 80 GB device
needs, checked against the arithmetic written out here.
"""

from __future__ import annotations

import json
import random
import struct

import duckdb
import numpy as np
import pytest

from compute.plan import shards
from compute.run.cli import main

ROWS = {"spectra": "spectra/[0-9]*.parquet", "vectors": "spectra/vectors.parquet"}
VOLATILE = ("run_id", "seconds")  # a run's id and timings differ between runs


def rows(run_dir, kind: str) -> list[tuple]:
    files = sorted(str(p) for p in run_dir.glob(ROWS[kind]))
    assert files, f"no {kind} files in {run_dir}"
    drop = ", ".join(VOLATILE if kind == "spectra" else VOLATILE[:1])
    rel = duckdb.sql(f"select * exclude ({drop}) from read_parquet(?)", params=[files])
    return sorted(rel.fetchall(), key=repr)


def run(pair, out, *extra) -> int:
    return main(["--base", str(pair / "base"), "--sft", str(pair / "sft"), "--name",
                 "planted", "--out", str(out), "--no-load", "--skip-behaviour",
                 "--no-progress", "--vectors", "0", *extra])


@pytest.fixture(scope="module")
def single(demo_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert run(demo_pair, out) == 0
    return out / "planted"


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_in_any_order_give_the_rows_of_a_single_run(demo_pair, single, n,
                                                           tmp_path):
    order = list(range(n))
    random.Random(n).shuffle(order)
    run_dir = tmp_path / "planted"
    n_tensors = len(list(single.glob(ROWS["spectra"])))
    for k, i in enumerate(order):
        before = set(run_dir.glob(ROWS["spectra"]))
        assert run(demo_pair, tmp_path, "--shard", f"{i}/{n}") == 0
        new = set(run_dir.glob(ROWS["spectra"])) - before
        manifest = json.loads((run_dir / "run.json").read_text())
        finished = manifest["kinds"]["spectra"]["finished_at"]
        assert (finished is not None) == (k == n - 1)  # done with the last part only
        assert new and (len(new) < n_tensors or n == 1)  # each part does its share
    assert len(list(run_dir.glob(ROWS["spectra"]))) == n_tensors
    for kind in ROWS:
        assert rows(run_dir, kind) == rows(single, kind)
    run_ids = duckdb.sql("select distinct run_id from read_parquet(?)", params=[
        [str(p) for p in run_dir.glob(ROWS["spectra"])]]).fetchall()
    assert len(run_ids) == 1  # the shards share one run


def test_a_rerun_shard_skips_its_finished_tensors(demo_pair, tmp_path):
    assert run(demo_pair, tmp_path, "--shard", "1/2") == 0
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "planted").glob(
        ROWS["spectra"])}
    assert run(demo_pair, tmp_path, "--shard", "1/2") == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_split_is_balanced_and_covers_every_tensor_once():
    rng = random.Random(0)
    costs = [rng.choice([1.0, 4.0, 30.0]) * rng.random() for _ in range(200)]
    for n in (1, 2, 3, 8, 250):
        parts = shards.split(costs, n)
        assert parts == shards.split(list(costs), n)  # deterministic
        assert sorted(i for p in parts for i in p) == list(range(len(costs)))
        loads = [sum(costs[i] for i in p) for p in parts]
        # greedy largest-first: the largest shard exceeds the mean by < one tensor
        assert max(loads) <= sum(costs) / n + max(costs) + 1e-9
    assert shards.matrix_cost(8192, 29568) == 8192 ** 2 * (8192 + 29568)
    with pytest.raises(ValueError, match="0 <= I < N"):
        shards.parse_shard("4/4")


def write_header_only(folder, tensors: dict[str, list[int]], config: dict) -> None:
    """A bf16 safetensors file with these shapes whose data is a hole (sparse)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 2 * shape[0] * (shape[1] if len(shape) > 1 else 1)
        header[name] = {"dtype": "BF16", "shape": shape,
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(folder / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        fh.truncate(8 + len(blob) + offset)


def test_dry_run_of_a_72b_shaped_pair(tmp_path, capsys):
    h, ff, layers, vocab, heads, kv = 8192, 29568, 80, 152064, 64, 8
    hd = h // heads
    cfg = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
           "hidden_size": h, "intermediate_size": ff, "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": kv,
           "vocab_size": vocab, "tie_word_embeddings": False}
    t = {"model.embed_tokens.weight": [vocab, h], "lm_head.weight": [vocab, h],
         "model.norm.weight": [h]}
    for i in range(layers):
        p = f"model.layers.{i}."
        t |= {p + "self_attn.q_proj.weight": [h, h], p + "self_attn.q_proj.bias": [h],
              p + "self_attn.k_proj.weight": [kv * hd, h],
              p + "self_attn.k_proj.bias": [kv * hd],
              p + "self_attn.v_proj.weight": [kv * hd, h],
              p + "self_attn.v_proj.bias": [kv * hd],
              p + "self_attn.o_proj.weight": [h, h],
              p + "mlp.gate_proj.weight": [ff, h], p + "mlp.up_proj.weight": [ff, h],
              p + "mlp.down_proj.weight": [h, ff],
              p + "input_layernorm.weight": [h],
              p + "post_attention_layernorm.weight": [h]}
    for side in ("base", "sft"):
        write_header_only(tmp_path / side, t, cfg)
    assert main(["--base", str(tmp_path / "base"), "--sft", str(tmp_path / "sft"),
                 "--name", "72B", "--dry-run", "--shards", "8"]) == 0
    out = capsys.readouterr().out
    # 2 + 80 x 7 matrices; the largest, the 152064 x 8192 embedding: 8 B x m x n =
    # 9.966e9 B in fp64, and its 8192 x 8192 Gram twice, 2 x 5.369e8 B: 11.04e9 B,
    # 10.28 GiB, far below 80 GB
    assert "562 tensors (562 matrices, 401 1-D) in 8 shard(s)" in out
    assert "largest matrix 152064 x 8192: fp64 9.28 GiB" in out
    assert "= 10.28 GiB" in out
    assert 8 * (152064 * 8192 + 2 * 8192 ** 2) == 11_039_408_128
    assert out.count("  shard ") == 8
    # nothing was read or written: no run folder
    assert not (tmp_path / "data").exists()
    assert not list(tmp_path.glob("**/run.json"))


def test_the_load_of_shards_holds_the_rows_of_a_single_run(demo_pair, single,
                                                          tmp_path):
    from ingest.compute_load import load_or_explain

    for i in (2, 0, 1):
        assert run(demo_pair, tmp_path, "--shard", f"{i}/3") == 0
    db = tmp_path / "warehouse.duckdb"
    assert load_or_explain(tmp_path / "planted", db) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        loaded = sorted(con.sql(
            "select tensor, role, singular_values, n_zero, noise_sigma "
            "from raw.spectra").fetchall(), key=repr)
        n_vectors = con.sql("select count(*) from raw.vector_changes").fetchall()[0][0]
    want = sorted(duckdb.sql(
        "select tensor, role, singular_values, n_zero, noise_sigma "
        "from read_parquet(?)", params=[[str(p) for p in single.glob(
            ROWS["spectra"])]]).fetchall(), key=repr)
    assert loaded == want
    assert n_vectors == len(rows(single, "vectors"))


@pytest.mark.slow  # two processes on the planted pair with singular vectors
def test_shards_started_together_complete_spectra_and_directions(demo_pair, tmp_path):
    """Two shards started at once, singular vectors on, in processes of their own:
    both finish, the pair's spectra and directions are marked finished and every
    tensor has its vectors file."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    cmd = [sys.executable, "-m", "compute.run", "--base", str(demo_pair / "base"),
           "--sft", str(demo_pair / "sft"), "--name", "planted", "--out",
           str(tmp_path), "--no-load", "--skip-behaviour", "--no-progress",
           "--vectors", "4"]
    procs = [subprocess.Popen([*cmd, "--shard", f"{i}/2"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
    manifest = json.loads((tmp_path / "planted" / "run.json").read_text())
    n = len(list((tmp_path / "planted").glob(ROWS["spectra"])))
    assert manifest["kinds"]["spectra"]["finished_at"]
    assert manifest["kinds"]["directions"]["finished_at"]
    assert len(list((tmp_path / "planted" / "directions" / "vectors").glob(
        "*.parquet"))) == n


# ---------------------------------------------------------------- behaviour

BEHAVIOUR = ("token_logprobs", "token_shift", "residual_drift", "post_texts")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A tiny generated pair, 7 prompts (one of them empty: no tokens, skipped) and a
    single run's behaviour files, one post per batch (a post's numbers then do not
    depend on which posts share its batch, so shards must match them exactly)."""
    from compute.fixtures.planted import build_pair
    from tests.behaviour_helpers import SPEC, prompts

    work = tmp_path_factory.mktemp("scored")
    pair = build_pair(work / "pair", SPEC)
    df = prompts(7)
    df.loc[4, "text"] = ""
    df.to_parquet(work / "prompts.parquet")
    assert score(pair, work / "prompts.parquet", work / "single") == 0
    return pair, work / "prompts.parquet", work / "single" / "tiny"


def score(pair, prompts, out, *extra) -> int:
    return main(["--base", str(pair[0]), "--sft", str(pair[1]), "--name", "tiny",
                 "--out", str(out), "--no-load", "--skip-spectra", "--no-progress",
                 "--prompts", str(prompts), "--batch-size", "1", *extra])


def behaviour_rows(run_dir, table: str) -> list[tuple]:
    files = sorted(str(p) for p in (run_dir / "behaviour" / table).glob("*.parquet"))
    assert files, f"no {table} files in {run_dir}"
    rel = duckdb.sql("select * exclude (run_id) from read_parquet(?)", params=[files])
    return sorted(rel.fetchall(), key=repr)


def post_ids(files) -> set[int]:
    return {r[0] for f in files for r in duckdb.sql(
        "select post_id from read_parquet(?)", params=[str(f)]).fetchall()}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_behaviour_shards_in_any_order_give_the_rows_of_a_single_run(scored, n,
                                                                     tmp_path):
    pair, prompts, single = scored
    order = list(range(n))
    random.Random(n).shuffle(order)
    run_dir = tmp_path / "tiny"
    seen: set[int] = set()
    for k, i in enumerate(order):
        assert score(pair, prompts, tmp_path, "--shard", f"{i}/{n}") == 0
        manifest = json.loads((run_dir / "run.json").read_text())
        finished = manifest["kinds"]["behaviour"]["finished_at"]
        assert (finished is not None) == (k == n - 1)  # with the last part only
        mine = post_ids((run_dir / "behaviour" / "post_texts").glob(f"s{i}-{n}-*"))
        assert mine and not mine & seen  # each part scores posts of its own
        seen |= mine
    assert len(seen) == 6  # 7 prompts, the empty one skipped
    for table in BEHAVIOUR:
        assert behaviour_rows(run_dir, table) == behaviour_rows(single, table)
    opts = manifest["kinds"]["behaviour"]["options"]
    assert opts["n_posts"] == 6 and opts["n_posts_pending"] == 0


def test_behaviour_share_is_balanced_by_tokens():
    from compute.behaviour.scoring import Post, share_of

    rng = random.Random(1)
    posts = [Post(1000 + k, None, None, "", [0] * rng.randint(1, 400))
             for k in range(60)]
    tokens = sum(p.n_tokens for p in posts)
    for n in (1, 2, 3, 7):
        parts = [share_of(list(reversed(posts)), (i, n)) for i in range(n)]
        ids = sorted(p.post_id for part in parts for p in part)
        assert ids == [p.post_id for p in posts]  # every post in exactly one part
        loads = [sum(p.n_tokens for p in part) for part in parts]
        assert max(loads) <= tokens / n + 400  # within one post of the mean


def test_a_killed_behaviour_shard_resumes_and_the_load_has_a_single_runs_rows(
        scored, tmp_path, monkeypatch):
    from compute.behaviour import scoring as behaviour
    from ingest.compute_load import load_or_explain

    pair, prompts, single = scored
    real, calls = behaviour.write_parquet, []

    def dying(table, path):
        calls.append(path)
        if len(calls) == 7:  # the second batch: two of its four files written
            raise KeyboardInterrupt("killed")
        real(table, path)

    monkeypatch.setattr(behaviour, "write_parquet", dying)
    assert score(pair, prompts, tmp_path, "--shard", "1/2") == 130
    monkeypatch.setattr(behaviour, "write_parquet", real)
    root = tmp_path / "tiny" / "behaviour"
    assert len(list((root / "token_logprobs").glob("*.parquet"))) == 2  # one orphan
    assert score(pair, prompts, tmp_path, "--shard", "0/2") == 0
    assert score(pair, prompts, tmp_path, "--shard", "1/2") == 0
    texts = {p.name for p in (root / "post_texts").glob("*.parquet")}
    for table in BEHAVIOUR:  # no orphan, no half-written file left
        assert {p.name for p in (root / table).glob("*.parquet")} == texts
        assert not list((root / table).glob(".*"))
        assert behaviour_rows(tmp_path / "tiny", table) == behaviour_rows(single,
                                                                          table)
    db = tmp_path / "warehouse.duckdb"
    assert load_or_explain(tmp_path / "tiny", db) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        for table in BEHAVIOUR:
            got = sorted(con.sql(f"select * exclude (run_id) from raw.{table}")
                         .fetchall(), key=repr)
            assert got == behaviour_rows(single, table), table


# ---------------------------------------------------------------- dry run of hub ids

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    """The hub's resolve endpoint (`/<owner>/<name>/resolve/<revision>/<file>`) over
    local folders, as huggingface_hub talks to it: HEAD with X-Repo-Commit and ETag,
    GET with Range (206), 404 with X-Error-Code EntryNotFound. Records the bytes
    each GET sent."""

    def __init__(self, repos: dict[str, object]):
        import http.server
        import threading

        self.repos, self.sent = repos, []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool):
                owner, name, _, _rev, *file = self.path.split("?")[0].strip(
                    "/").split("/")
                path = hub.repos.get(f"{owner}/{name}")
                path = path / "/".join(file) if path else None
                if path is None or not path.is_file():
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                first, last, status = 0, len(data) - 1, 200
                if body and "Range" in self.headers:
                    a, b = self.headers["Range"].removeprefix("bytes=").split("-")
                    first, last, status = int(a), min(int(b or last), last), 206
                self.send_response(status)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{len(data):x}-{path.name}"')
                self.send_header("Content-Length", str(last - first + 1))
                if status == 206:
                    self.send_header("Content-Range",
                                     f"bytes {first}-{last}/{len(data)}")
                self.end_headers()
                if body:
                    hub.sent.append((path.name, first, last))
                    self.wfile.write(data[first:last + 1])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_dry_run_of_hub_ids_reads_only_the_headers(tmp_path):
    """A generated pair (single-file base, SFT in two weight files) served as hub
    repos: the dry run's plan equals the plan from the local folders, and of the
    weight files only the 8-byte length and the header were ever sent."""
    from compute.fixtures.planted import PairSpec, build_pair
    from tests.conftest import run_py

    spec = PairSpec(hidden=64, intermediate=160, layers=2, heads=2, kv_heads=1,
                    vocab=512)
    build_pair(tmp_path / "one", spec)
    build_pair(tmp_path / "two", PairSpec(**{**spec.__dict__, "weight_files": 2}))
    base, sft = tmp_path / "one" / "base", tmp_path / "two" / "sft"
    hub = HubServer({"org/base": base, "org/sft": sft})
    cache = tmp_path / "hub-cache"
    args = ("-m", "compute.run", "--name", "p", "--dry-run", "--shards", "3")
    proc = run_py(*args, "--base", "org/base", "--sft", "org/sft", HF_ENDPOINT=hub.url,
                  HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="0",
                  HF_HUB_DISABLE_TELEMETRY="1")
    hub.server.shutdown()
    local = run_py(*args, "--base", str(base), "--sft", str(sft))
    assert proc.stdout == local.stdout
    assert "in 3 shard(s)" in proc.stdout
    weights = {p.name: p for p in [*base.glob("*.safetensors"),
                                   *sft.glob("*.safetensors")]}
    assert len(weights) == 3
    got = {name: [(a, b) for f, a, b in hub.sent if f == name] for name in weights}
    for name, path in weights.items():
        with open(path, "rb") as fh:
            header_end = 8 + struct.unpack("<Q", fh.read(8))[0]
        assert got[name] == [(0, 7), (8, header_end - 1)], name  # the header only
        assert path.stat().st_size > 100 * header_end  # the data is most of the file
    assert not list(cache.glob("**/*.safetensors"))  # nothing of the weights cached


# ---------------------------------------------------------------- pieces

EMBED = ("model.embed_tokens.weight", "lm_head.weight")


def test_a_tensor_larger_than_a_share_is_split_into_pieces(demo_pair, single,
                                                           tmp_path):
    """At N = 16 the planted pair's embedding and head (2048 x 256: 256^2 x 2304 =
    1.51e8 each) exceed the mean share (1.913e9 / 16 = 1.20e8): each is split into
    two pieces of 1024 rows whose partial Grams are summed before the eigensolve.
    The pieces' spectra equal the single run's to fp64 rounding, every other tensor's
    bit for bit, and the balance is better than with whole tensors."""
    from compute.io.checkpoints import resolve
    from compute.plan.pair import pair_plan

    plan = pair_plan(resolve(str(demo_pair / "base")), resolve(str(demo_pair / "sft")))
    pieces = dict(zip(plan.matrices, shards.n_pieces(plan, 16), strict=True))
    assert {k for k, p in pieces.items() if p > 1} == set(EMBED)
    assert all(pieces[k] == 2 for k in EMBED)
    assert shards.piece_rows(2048, 1, 2) == slice(1024, 2048)
    whole = shards.split(shards.tensor_costs(plan), 16)
    costs = shards.tensor_costs(plan)
    balance_whole = max(sum(costs[i] for i in p) for p in whole) / (sum(costs) / 16)
    info = shards.dry_run(plan, 16)
    assert info["n_split"] == 2 and info["balance"] < balance_whole - 0.1
    order = list(range(16))
    random.Random(16).shuffle(order)
    piece_files = tmp_path / "planted" / "spectra" / "pieces"
    seen_piece = False
    for i in order:
        assert run(demo_pair, tmp_path, "--shard", f"{i}/16") == 0
        seen_piece |= bool(list(piece_files.glob("*.npz")))
    assert seen_piece  # a piece waited for the other one's shard
    assert not list(piece_files.glob("*"))  # merged, then removed
    got, want = rows(tmp_path / "planted", "spectra"), rows(single, "spectra")
    cols = duckdb.sql("select * exclude (run_id, seconds) from read_parquet(?)",
                      params=[[str(next(single.glob(ROWS["spectra"])))]]).columns
    split = [r for r in got if r[cols.index("tensor")] in EMBED]
    assert [r for r in got if r not in split] == [
        r for r in want if r[cols.index("tensor")] not in EMBED]
    ref = {(r[cols.index("tensor")], r[cols.index("role")]): r for r in want}
    assert len(split) == 6
    for r in split:
        w = ref[r[cols.index("tensor")], r[cols.index("role")]]
        for c, a, b in zip(cols, r, w, strict=True):
            if c in ("singular_values", "frobenius_sq", "noise_sigma") and (
                    b is not None):  # noise_sigma: dW's only
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14 * max(
                    w[cols.index("singular_values")] or [0]), err_msg=c)
            else:
                assert a == b, c


@pytest.mark.slow  # 16 shards of the planted pair with singular vectors
def test_pieces_with_vectors_are_computed_whole_by_the_first_pieces_shard(
        demo_pair, tmp_path):
    """Singular vectors need the whole matrix: the shard of piece 0 computes the
    tensor whole, the other piece's shard skips it; the pair completes."""
    for i in range(16):
        assert run(demo_pair, tmp_path, "--shard", f"{i}/16", "--vectors", "2") == 0
    run_dir = tmp_path / "planted"
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["kinds"]["spectra"]["finished_at"]
    assert manifest["kinds"]["directions"]["finished_at"]
    assert not (run_dir / "spectra" / "pieces").exists()
    n = len(list(run_dir.glob(ROWS["spectra"])))
    assert n == 44 and len(list((run_dir / "directions" / "vectors").glob(
        "*.parquet"))) == n
