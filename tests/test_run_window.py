"""compute.run's default scoring window: 1024 tokens, or the shorter context of
the two models (a window past a model's context scores what it never learned)."""

import json
from pathlib import Path
from types import SimpleNamespace

from compute.run import default_window, parse_args

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
