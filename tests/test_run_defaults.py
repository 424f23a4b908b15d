"""compute.run's defaults that depend on the pair: the scoring window (1024 tokens,
or the shorter context of the two models: a window past a model's context scores
what it never learned) and whether singular vectors are computed (always on a GPU;
on a CPU only for small matrices, where they are cheap)."""

import json
from pathlib import Path
from types import SimpleNamespace

from compute.arch.naming import View
from compute.linalg.directions import DEFAULT_VECTORS
from compute.plan.pair import Plan
from compute.run.cli import auto_vectors, default_window, parse_args

ROOT = Path(__file__).resolve().parents[1]


def ckpt(**config) -> SimpleNamespace:
    return SimpleNamespace(config=config)


def test_window_is_1024_for_long_context_models():
    assert default_window(ckpt(max_position_embeddings=32768),
                          ckpt(max_position_embeddings=131072)) == 1024


def test_window_is_the_shorter_context():
    assert default_window(ckpt(max_position_embeddings=2048),
                          ckpt(max_position_embeddings=512)) == 512
    assert default_window(ckpt(n_positions=256), ckpt(n_positions=256)) == 256


def test_window_ignores_missing_or_odd_context_entries():
    assert default_window(ckpt(), ckpt(max_position_embeddings=None)) == 1024


def test_the_shipped_demo_pair_is_scored_in_its_training_context():
    contexts = {json.loads((ROOT / "models/demo" / side / "config.json").read_text())
                ["max_position_embeddings"] for side in ("base", "sft")}
    demo = [ckpt(max_position_embeddings=n) for n in sorted(contexts)]
    assert default_window(demo[0], demo[-1]) == min(contexts) < 1024


def test_an_explicit_window_wins():
    assert parse_args(["--pair", "planted", "--window", "300"]).window == 300
    assert parse_args(["--pair", "planted"]).window is None


def plan_of(*shapes: tuple[int, int]) -> Plan:
    views = {f"t{i}": [View(f"t{i}", f"t{i}", i, "q_proj", shape=shape)]
             for i, shape in enumerate(shapes)}
    return Plan(matrices=list(views), vectors=[], tied=False, views=views)


def test_vectors_are_on_for_small_matrices_on_a_cpu_and_always_on_a_gpu(capsys):
    small = plan_of((512, 2048), (2048, 300))  # short sides 512 and 300
    big = plan_of((512, 512), (4864, 896))  # one short side of 896: 0.5B's MLP
    assert auto_vectors(small, "cpu") == DEFAULT_VECTORS > 0
    assert auto_vectors(big, "cuda") == DEFAULT_VECTORS
    assert capsys.readouterr().err == ""
    assert auto_vectors(big, "cpu") == 0
    assert f"--vectors {DEFAULT_VECTORS}" in capsys.readouterr().err


def test_an_explicit_vectors_count_is_kept():
    assert parse_args(["--pair", "planted", "--vectors", "0"]).vectors == 0
    assert parse_args(["--pair", "planted"]).vectors is None
