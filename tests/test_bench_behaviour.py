"""bench/behaviour.py's two workers on a tiny pair, in this process: the plain loop
(the baseline) and sftscope score the same tokens in the same windows and agree on
the total log-prob, so the bench compares like with like (the timing itself is the
bench's job, not a test's)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import behaviour as bench  # noqa: E402


@pytest.mark.slow
def test_workers_score_the_same_tokens(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base, sft = bench.build(tmp_path / "data", "tiny", "cpu")
        posts = bench.prompts(6)
        assert posts["post_id"].is_unique and set(posts["grp"]) == {"low", "high"}
        # window 32 with context 8: the long posts are scored in several windows
        plain = bench.worker_plain(base, sft, posts, "cpu", 32, 8)
        ours = bench.worker_sftscope(base, sft, posts, "cpu", 32, 8, 4, tmp_path / "o")
    finally:
        torch.set_num_threads(threads)
    assert plain["tokens"] == ours["tokens"] > 6 * 32
    np.testing.assert_allclose(ours["sum_logprob"], plain["sum_logprob"], rtol=1e-5)
    assert plain["tokens_per_s"] > 0 and ours["tokens_per_s"] > 0
