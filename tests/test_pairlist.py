"""compute.run --pairs: known names or a TOML file of [[pair]] tables (compute.pairs.pairs_file);
one after another without Ray, each pair's own options on top of the command line's;
a bad file is refused naming the file and the entry; with --ray every (pair, shard)
is a task with its pair's options (the task list is checked here without Ray)."""

from __future__ import annotations

import duckdb
import pytest

from compute.fixtures.planted import PairSpec, build_pair
from compute.pairs import pairs_file as pairlist
from compute.run import cluster
from compute.run.cli import main, parse_args

TINY = PairSpec(hidden=32, intermediate=64, layers=2, heads=2, kv_heads=1, vocab=256)
KNOWN = {"7B": ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct")}
KNOWN_AND_MINE = """
[[pair]]
name = "7B"

[[pair]]
name = "mine"
base = "org/base"
"""


def write(tmp_path, text: str):
    path = tmp_path / "pairs.toml"
    path.write_text(text)
    return path


def two(name_a: str, pair_a, name_b: str, pair_b) -> str:
    """Two [[pair]] tables of folders (base, sft)."""
    return "".join(f'\n[[pair]]\nname = "{n}"\nbase = "{p[0]}"\nsft = "{p[1]}"\n'
                   for n, p in ((name_a, pair_a), (name_b, pair_b)))


def test_pairs_from_a_file_with_their_options(tmp_path):
    path = write(tmp_path, KNOWN_AND_MINE + """sft = "./ckpt"
device = "cuda"
vectors = 0
skip_behaviour = true
revision_sft = "abc123"
""")
    got = pairlist.read(path, KNOWN)
    assert [(e.name, e.base, e.sft, e.device) for e in got] == [
        ("7B", *KNOWN["7B"], None), ("mine", "org/base", "./ckpt", "cuda")]
    assert got[0].argv == ["--pair", "7B"]
    assert got[1].argv == ["--base", "org/base", "--sft", "./ckpt", "--name", "mine",
                           "--device", "cuda", "--vectors", "0", "--skip-behaviour",
                           "--revision-sft", "abc123"]
    cfg = parse_args(["--pairs", str(path), "--out", str(tmp_path)])
    assert (cfg.pair, cfg.base, cfg.sft) == ("7B", *KNOWN["7B"])
    assert [e.name for e in cfg.pairs] == ["7B", "mine"]


@pytest.mark.parametrize(("text", "message"), [
    ("[[pair]]\nname = 'x'\n", "[[pair]] #1 ('x'): 'x' is not a known pair"),
    ("[[pair]]\nname = '7B'\n[[pair]]\nbase = 'a'\nsft = 'b'\n",
     "[[pair]] #2: needs name"),
    ("[[pair]]\nname = 'm'\nbase = 'a'\n", "[[pair]] #1 ('m'): give both base and sft"),
    ("[[pair]]\nname = '7B'\nvectors = '8'\n", "vectors = '8' should be int"),
    ("[[pair]]\nname = '7B'\ndevice = 'tpu'\n", "device = 'tpu'; one of auto, cpu"),
    ("[[pair]]\nname = '7B'\nskip_behaviour = 1\n", "should be true or false"),
    ("[[pair]]\nname = '7B'\nbatchsize = 4\n", "unknown option 'batchsize'"),
    ("[[pair]]\nname = '7B'\n[[pair]]\nname = '7B'\n", "given twice"),
    ("[pairs]\nname = '7B'\n", "unknown table or key pairs"),
    ("[[pair]\nname = '7B'\n", "not valid TOML"),
    ("", "no [[pair]] tables"),
])
def test_a_bad_file_is_refused_naming_the_file_and_entry(tmp_path, capsys, text,
                                                         message):
    path = write(tmp_path, text)
    with pytest.raises(pairlist.PairsError) as err:
        pairlist.read(path, KNOWN)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    with pytest.raises(SystemExit) as exit_:  # the command line: exit 2, the message
        parse_args(["--pairs", str(path)])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_names_and_a_missing_file():
    assert [e.argv for e in pairlist.parse("7B", KNOWN)] == [["--pair", "7B"]]
    with pytest.raises(pairlist.PairsError, match="unknown 8B"):
        pairlist.parse("7B,8B", KNOWN)
    with pytest.raises(pairlist.PairsError, match=r"missing\.toml: cannot read it"):
        pairlist.parse("missing.toml", KNOWN)


def test_pairs_of_a_file_run_one_after_another(tmp_path):
    """Two generated pairs, the second with its own method (svd) over the command
    line's gram: both are computed, each with its method (the load after each run
    is compute.run's own, tested with it)."""
    a, b = (build_pair(tmp_path / n, PairSpec(**{**TINY.__dict__, "seed": s}))
            for n, s in (("a", 1), ("b", 2)))
    path = write(tmp_path, two("first", a, "second", b) + 'method = "svd"\n')
    assert main(["--pairs", str(path), "--out", str(tmp_path / "runs"), "--no-load",
                 "--skip-behaviour", "--vectors", "0", "--method", "gram",
                 "--no-progress"]) == 0
    got = duckdb.sql("select pair, method, count(*) from read_parquet(?) group by all "
                     "order by pair", params=[[str(p) for p in (tmp_path / "runs").glob(
                         "*/spectra/[0-9]*.parquet")]]).fetchall()
    assert got == [("first", "gram", 48), ("second", "svd", 48)]


def test_a_failed_pair_does_not_stop_the_others(tmp_path, capsys):
    a = build_pair(tmp_path / "a", TINY)
    path = write(tmp_path, two("broken", (tmp_path / "nothing", a[1]), "fine", a))
    assert main(["--pairs", str(path), "--out", str(tmp_path / "runs"), "--no-load",
                 "--skip-behaviour", "--vectors", "0", "--no-progress"]) == 2
    assert "failed: broken (exit 2)" in capsys.readouterr().err
    assert (tmp_path / "runs" / "fine" / "run.json").exists()


def test_on_ray_every_pair_and_shard_is_a_task_with_its_options(tmp_path,
                                                                monkeypatch):
    path = write(tmp_path, KNOWN_AND_MINE + """sft = "org/sft"
device = "cuda"
window = 256
""")
    argv = ["--pairs", str(path), "--ray", "--shards", "2", "--device", "cpu",
            "--out", "s3://bkt/runs", "--no-load"]
    seen = {}
    monkeypatch.setattr(cluster, "run_tasks",
                        lambda argvs, **kw: seen.update(argvs=argvs, **kw))
    cfg = parse_args(argv)
    assert cluster.main(cfg, argv, cfg.pairs, None, main) == 0
    common = ["--device", "cpu", "--out", "s3://bkt/runs"]
    tail = ["--no-load", "--no-progress"]
    assert seen["argvs"] == [
        [*common, "--pair", "7B", "--shard", "0/2", *tail],
        [*common, "--pair", "7B", "--shard", "1/2", *tail],
        [*common, "--base", "org/base", "--sft", "org/sft", "--name", "mine",
         "--device", "cuda", "--window", "256", "--shard", "0/2", *tail],
        [*common, "--base", "org/base", "--sft", "org/sft", "--name", "mine",
         "--device", "cuda", "--window", "256", "--shard", "1/2", *tail]]
    assert seen["gpus"] == [False, False, True, True]  # mine's own device
