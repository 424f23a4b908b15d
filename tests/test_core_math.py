"""Small, fast checks of the Python arithmetic behind published numbers, each against
a reference that shares no code with it: the shard cost plan (hand-computed costs and
bytes, a heap-based second implementation of the split), the shared rows of a
resized vocabulary (byte ranges by hand), LoRA recovery's per-post sums and rank-r
update (NumPy's SVD), and the helpers of the directions measures (SciPy's principal
angles, a Gram-Schmidt QR). No torch import: `make mutate` runs these per mutant."""

from __future__ import annotations

import dataclasses
import heapq
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg

from compute.io.checkpoints import Checkpoint, CheckpointError, TensorInfo
from compute.linalg import directions
from compute.lora import recovery as lora_recovery
from compute.plan import shards, vocab

# --- shards: cost plan --------------------------------------------------------------


def test_shard_matrix_cost_and_peak_bytes_by_hand():
    # k^2 (m + n), k = min(m, n); 8 B (m n + 2 k^2)
    assert shards.matrix_cost(3, 5) == 9 * 8 == shards.matrix_cost(5, 3)
    assert shards.matrix_cost(4, 4) == 128.0
    assert isinstance(shards.matrix_cost(2, 7), float)
    assert shards.peak_bytes(3, 5) == 8 * (15 + 18) == 264 == shards.peak_bytes(5, 3)
    assert shards.peak_bytes(1, 1) == 24


def greedy_by_heap(costs: list[float], n: int) -> list[list[int]]:
    """Largest cost first (ties: lower index) to the least loaded shard (ties: lower
    shard), with a heap of (load, shard): the documented rule, written apart."""
    heap = [(0.0, s) for s in range(n)]
    parts: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, s = heapq.heappop(heap)
        parts[s].append(i)
        heapq.heappush(heap, (load + costs[i], s))
    return [sorted(p) for p in parts]


def test_shard_split_by_hand_and_against_a_heap():
    # 5 -> s0; 4 -> s1; 3 -> s1 (4 < 5); 3 -> s0 (5 < 7); 3 -> s1 (7 < 8)
    assert shards.split([5, 4, 3, 3, 3], 2) == [[0, 3], [1, 2, 4]]
    # equal costs go in index order, equal loads to the lower shard
    assert shards.split([1, 1, 1, 1, 1], 2) == [[0, 2, 4], [1, 3]]
    assert shards.split([2, 7], 1) == [[0, 1]]
    assert shards.split([2, 7], 4) == [[1], [0], [], []]
    assert shards.split([], 3) == [[], [], []]
    with pytest.raises(ValueError, match="shards must be >= 1"):
        shards.split([1.0], 0)
    rng = random.Random(1)
    for _ in range(60):
        costs = [float(rng.choice([1, 2, 3, 8, 20])) for _ in range(rng.randrange(25))]
        n = rng.randrange(1, 6)
        assert shards.split(costs, n) == greedy_by_heap(costs, n), (costs, n)


@dataclasses.dataclass
class FakePlan:
    matrices: list[str]
    views: dict[str, list]
    vectors: list[str]


def view(m: int, n: int):
    return SimpleNamespace(shape=(m, n), stack=None, rows=None, transposed=False)


def test_shard_dry_run_by_hand():
    """Five tensors in 2 shards. Costs k^2 (m + n): a 100x100 (2e6), a 1000x10
    (1.01e5) and a fused tensor of two 20x50 views (2 x 2.8e4): split 2e6 | the
    rest. Peak bytes 8 (m n + 2 k^2): the 100x100 has the largest (240000)."""
    plan = FakePlan(
        matrices=["a", "wide", "fused", "s1", "s2"],
        views={"a": [view(100, 100)], "wide": [view(1000, 10)],
               "fused": [view(20, 50), view(20, 50)], "s1": [view(1, 2)],
               "s2": [view(3, 1)]},
        vectors=["norm", "bias", "x"])
    info = shards.dry_run(plan, 2)
    costs = [2e6, 100 * 1010, 2 * 400 * 70, 1 * 3, 1 * 4]  # an odd total
    assert info["total_cost"] == sum(costs)
    assert (info["n_shards"], info["n_tensors"], info["n_matrices"],
            info["n_vectors"]) == (2, 5, 6, 3)
    assert info["largest_matrix"] == [100, 100]
    assert info["peak_bytes"] == 8 * (10_000 + 20_000)
    first, second = info["shards"]
    keys = ("shard", "tensors", "matrices", "cost", "peak_bytes", "first_tensors")
    assert {k: first[k] for k in keys} == {
        "shard": "0/2", "tensors": 1, "matrices": 1, "cost": 2e6,
        "peak_bytes": 240_000, "first_tensors": ["a"]}
    assert second["shard"] == "1/2"
    assert (second["tensors"], second["matrices"]) == (4, 5)
    assert second["cost"] == sum(costs[1:])
    assert second["peak_bytes"] == 8 * (10_000 + 200)  # the 1000 x 10
    assert second["first_tensors"] == ["wide", "fused", "s1"]
    assert info["balance"] == pytest.approx(2e6 / (sum(costs) / 2), rel=1e-12)
    # the 100 x 100 costs more than the mean but a piece must be as tall as wide
    assert info["n_split"] == 0 and first["pieces"] == second["pieces"] == 0


def test_shard_dry_run_splits_a_tall_matrix_above_the_mean():
    """A 400 x 10 (cost 100 x 410 = 41000) and a 20 x 20 (16000) in 2 shards: the
    mean share is 28500, so the tall one is cut into ceil(41000 / 28500) = 2 pieces
    of rows (20500 each): piece 0 and the 20 x 20 in shard 0 (equal loads: the
    lower shard), piece 1 in shard 1."""
    plan = FakePlan(matrices=["tall", "sq"],
                    views={"tall": [view(400, 10)], "sq": [view(20, 20)]}, vectors=[])
    info = shards.dry_run(plan, 2)
    assert info["n_split"] == 1 and info["total_cost"] == 57_000
    first, second = info["shards"]
    assert (first["tensors"], first["pieces"], first["cost"]) == (2, 1, 36_500)
    assert (second["tensors"], second["pieces"], second["cost"]) == (1, 1, 20_500)
    assert info["balance"] == pytest.approx(36_500 / 28_500, rel=1e-12)
    assert shards.dry_run(plan, 1)["n_split"] == 0  # one shard: nothing to share


def test_shard_dry_run_of_nothing():
    info = shards.dry_run(FakePlan([], {}, []), 3)
    assert info["balance"] == 1.0
    assert info["largest_matrix"] == [0, 0] and info["peak_bytes"] == 0
    assert [s["peak_bytes"] for s in info["shards"]] == [0, 0, 0]


# --- vocab: the shared rows of a resized vocabulary, a tied head -------------------

H = 4  # hidden size; bf16: 2 bytes an entry, 8 a row


def info(name: str, shape: tuple[int, ...], start: int, file="model.safetensors"):
    size = 2 * int(np.prod(shape))
    return TensorInfo(name, shape, "BF16", file, start, start + size)


def ckpt(ref: str, tensors: list[TensorInfo], **config) -> Checkpoint:
    return Checkpoint(ref, Path(ref), "local:x", config, {t.name: t for t in tensors})


EMB, HEAD, LAYER = "model.embed_tokens.weight", "lm_head.weight", "model.layers.0.w"


def pair(vb: int, vs: int, **kw):
    base = ckpt("base", [info(EMB, (vb, H), 0), info(HEAD, (vb, H), 1000),
                         info(LAYER, (H, H), 2000)], vocab_size=vb,
                tie_word_embeddings=False)
    sft = ckpt("sft", [info(EMB, (vs, H), 64), info(HEAD, (vs, H), 1064),
                       info(LAYER, (H, H), 2064)], vocab_size=vs,
               tie_word_embeddings=False, **kw)
    return base, sft


def test_vocab_resized_rows_narrowed_to_the_shared_ones():
    """10 shared rows of 12: the SFT's embedding and head keep their first 10 rows,
    bytes start .. start + 10 x 8."""
    base, sft = pair(10, 12)
    base.tensors["model.rotary.inv_freq"] = info("model.rotary.inv_freq", (2,), 3000)
    before = dict(sft.tensors)
    change = vocab.align_pair(base, sft)
    assert change is not None
    assert (change.base_vocab, change.sft_vocab) == (10, 12)
    assert change.resized == {EMB: before[EMB], HEAD: before[HEAD]}
    assert change.tied_head is None
    assert sft.tensors[EMB] == TensorInfo(EMB, (10, H), "BF16", "model.safetensors",
                                          64, 64 + 80)
    assert sft.tensors[HEAD] == TensorInfo(HEAD, (10, H), "BF16", "model.safetensors",
                                           1064, 1064 + 80)
    assert all(type(sft.tensors[t].end) is int for t in (EMB, HEAD))  # byte offsets
    assert sft.tensors[LAYER] == before[LAYER]
    assert base.tensors[EMB].shape == (10, H)  # the base is never touched
    assert change.options() == {"base_vocab_size": 10, "sft_vocab_size": 12,
                                "resized_tensors": [HEAD, EMB],
                                "tied_head_compared_with": None}


ROWS = {"sft rows only": (5, 12), "base rows only": (10, 11), "base 11 rows": (11, 12),
        "sft 13 rows": (10, 13)}


@pytest.mark.parametrize("case", ["smaller sft", "another shape", "a smaller shape",
                                  "hidden differs", "hidden smaller", "same",
                                  "no sizes", "no base size", "both tied", *ROWS])
def test_vocab_other_differences_are_left_alone(case):
    if case == "smaller sft":
        base, sft = pair(12, 10)
    elif case == "another shape":
        base, sft = pair(10, 12)
        sft.tensors[LAYER] = info(LAYER, (H, H + 1), 2064)
    elif case == "a smaller shape":
        base, sft = pair(10, 12)
        base.tensors[LAYER] = info(LAYER, (H, H + 1), 2000)
    elif case == "hidden differs":
        base, sft = pair(10, 12)
        sft.tensors[HEAD] = info(HEAD, (12, H + 1), 1064)
    elif case == "hidden smaller":
        base, sft = pair(10, 12)
        sft.tensors[HEAD] = info(HEAD, (12, H - 1), 1064)
    elif case in ROWS:  # a third tensor differs in rows, not by the vocab sizes
        base, sft = pair(10, 12)
        rows_b, rows_s = ROWS[case]
        base.tensors[LAYER] = info(LAYER, (rows_b, H), 2000)
        sft.tensors[LAYER] = info(LAYER, (rows_s, H), 2064)
    elif case == "same":
        base, sft = pair(10, 10)
    elif case == "no base size":  # same shapes, one size unknown
        base, sft = pair(10, 10)
        del base.config["vocab_size"]
    elif case == "both tied":  # neither has an lm_head: nothing to alias
        base, sft = pair(10, 10)
        for c in (base, sft):
            del c.tensors[HEAD], c.config["tie_word_embeddings"]
    else:
        base, sft = pair(10, 12)
        del base.config["vocab_size"]
    before = dict(sft.tensors), dict(base.tensors)
    assert vocab.align_pair(base, sft) is None
    assert (sft.tensors, base.tensors) == before


def test_vocab_resized_rows_from_a_bin_file_are_refused():
    base, sft = pair(10, 12)
    sft.tensors[EMB] = info(EMB, (12, H), 64, file="pytorch_model.bin")
    with pytest.raises(CheckpointError,
                       match=r"resized vocabulary in pytorch_model\.bin"):
        vocab.align_pair(base, sft)


@pytest.mark.parametrize("tied", ["base", "sft"])
def test_vocab_tied_head_read_as_the_embedding(tied):
    base, sft = pair(10, 10)
    side, other = (base, sft) if tied == "base" else (sft, base)
    del side.tensors[HEAD]
    del side.config["tie_word_embeddings"]  # the default: tied
    side.tensors["model.norm.weight"] = info("model.norm.weight", (10, H), 3000)
    for name, rows in (("model.embed_positions.weight", 64),  # OPT's, not the head
                       ("model.embed_scale.weight", 8)):
        side.tensors[name] = info(name, (rows, H), 4000)
    change = vocab.align_pair(base, sft)
    assert change is not None
    assert (change.tied_head, change.embedding) == (tied, EMB)
    assert side.tensors[HEAD] == side.tensors[EMB]
    assert HEAD in other.tensors and other.tensors[HEAD].name == HEAD
    assert change.options()["tied_head_compared_with"] == f"{tied}'s {EMB}"
    assert change.resized == {}


@pytest.mark.parametrize("tied", ["base", "sft"])
def test_vocab_tied_head_of_a_resized_vocabulary(tied):
    """A tied side's head is its own embedding, of its own vocabulary (10 rows for
    the base, 12 for the SFT); then the SFT's 12 rows are narrowed to the shared 10."""
    base, sft = pair(10, 12)
    side = base if tied == "base" else sft
    del side.tensors[HEAD], side.config["tie_word_embeddings"]
    emb_b, emb_s = base.tensors[EMB], sft.tensors[EMB]
    change = vocab.align_pair(base, sft)
    assert (change.tied_head, change.embedding) == (tied, EMB)
    assert (change.base_vocab, change.sft_vocab) == (10, 12)
    assert base.tensors[HEAD].shape == sft.tensors[HEAD].shape == (10, H)
    assert base.tensors[EMB] == emb_b
    assert sft.tensors[EMB] == dataclasses.replace(emb_s, shape=(10, H),
                                                   end=emb_s.start + 10 * 8)
    if tied == "base":
        assert base.tensors[HEAD] == emb_b
    else:  # the SFT's head reads the first 10 rows of its 12-row embedding
        assert sft.tensors[HEAD] == sft.tensors[EMB]


def test_vocab_tied_head_of_the_other_sides_shape_first():
    """An embedding of the other head's shape is the tied head, whatever the tied
    side's vocab_size says; without a vocab_size the refusal names that shape."""
    base, sft = pair(10, 12)
    del base.tensors[HEAD], base.config["tie_word_embeddings"]
    base.tensors[EMB] = info(EMB, (12, H), 0)  # the config's 10 is wrong
    assert vocab.align_pair(base, sft).embedding == EMB
    assert base.tensors[HEAD].shape == (12, H)
    base, sft = pair(10, 12)
    del base.tensors[HEAD], base.config["tie_word_embeddings"]
    del base.config["vocab_size"]
    with pytest.raises(CheckpointError, match=r"no embedding tensor\(s\) of shape "
                       r"\[12, 4\]"):
        vocab.align_pair(base, sft)


def test_vocab_tied_head_of_an_embedding_named_before_it():
    """Any embedding name (here one that sorts before lm_head.weight)."""
    emb = "embeddings.word_embeddings.weight"
    base, sft = pair(10, 10)
    del base.tensors[HEAD], base.tensors[EMB], base.config["tie_word_embeddings"]
    base.tensors[emb] = info(emb, (10, H), 0)
    assert vocab.align_pair(base, sft).embedding == emb
    assert base.tensors[HEAD] == base.tensors[emb]


def test_vocab_head_left_alone_when_not_tied():
    base, sft = pair(10, 10)
    del base.tensors[HEAD]
    base.config["tie_word_embeddings"] = False
    assert vocab.align_pair(base, sft) is None
    assert HEAD not in base.tensors


@pytest.mark.parametrize("embeddings", [0, 2])
def test_vocab_tied_head_needs_one_embedding(embeddings):
    base, sft = pair(10, 10)
    del base.tensors[HEAD], base.tensors[EMB], base.config["tie_word_embeddings"]
    for i in range(embeddings):
        name = f"model.embed_{i}.weight"
        base.tensors[name] = info(name, (10, H), 100 * i)
    base.tensors["model.other.weight"] = info("model.other.weight", (10, H), 900)
    names = ": model.embed_0.weight, model.embed_1.weight" if embeddings else "$"
    with pytest.raises(CheckpointError, match=f"{'no' if not embeddings else 2} "
                       r"embedding tensor\(s\) of shape \[10, 4\] are there"
                       + names):
        vocab.align_pair(base, sft)


def test_vocab_tied_head_in_a_bin_file_is_refused():
    base, sft = pair(10, 10)
    del base.tensors[HEAD], base.config["tie_word_embeddings"]
    base.tensors[EMB] = info(EMB, (10, H), 0, file="pytorch_model.bin")
    with pytest.raises(CheckpointError,
                       match=r"a tied lm_head in pytorch_model\.bin"):
        vocab.align_pair(base, sft)


# --- LoRA recovery: per-post sums and the rank-r update --------------------------


def test_lora_post_rows_sum_each_model_and_each_kl():
    posts = [SimpleNamespace(post_id=7, site="physics", grp="good", n_tokens=3,
                             post_type="answer"),
             SimpleNamespace(post_id=9, site=None, grp=None, n_tokens=2,
                             post_type=None)]
    res = {7: SimpleNamespace(logprob={"base": np.array([-1.0, -2.0, -0.5]),
                                       "sft": np.array([-0.25, -0.5, -0.125])},
                              shift={"kl_sft_base": np.array([0.5, 0.25, 1.0]),
                                     "kl_base_sft": np.array([2.0, 4.0, 8.0])}),
           9: SimpleNamespace(logprob={"base": np.array([-3.0, -3.0]),
                                       "sft": np.array([-1.0, -1.5])},
                              shift={"kl_sft_base": np.array([0.0, 0.125]),
                                     "kl_base_sft": np.array([16.0, 0.0])})}
    rows = lora_recovery.post_rows(posts, res, "r1", "planted", "all", 4, "base")
    assert rows == [
        {"run_id": "r1", "pair": "planted", "modules": "all", "rank": 4,
         "vectors": "base", "post_id": 7, "site": "physics", "grp": "good",
         "post_type": "answer", "n_tokens": 3, "sum_logprob": -3.5,
         "sum_logprob_sft": -0.875, "sum_kl_sft_rank": 1.75, "sum_kl_rank_sft": 14.0},
        {"run_id": "r1", "pair": "planted", "modules": "all", "rank": 4,
         "vectors": "base", "post_id": 9, "site": None, "grp": None,
         "post_type": None, "n_tokens": 2, "sum_logprob": -6.0,
         "sum_logprob_sft": -2.5, "sum_kl_sft_rank": 0.125, "sum_kl_rank_sft": 16.0}]
    with pytest.raises(ValueError):
        lora_recovery.post_rows(posts[:1], res, "r1", "planted", "all", 4, "base")


def test_lora_rank_r_update_is_numpys_truncated_svd():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((6, 9))
    u, s, vt = np.linalg.svd(d, full_matrices=False)
    f = object.__new__(lora_recovery.Factors)
    f.us = {"w": (u * s).astype(np.float32)}
    f.vt = {"w": vt.astype(np.float32)}
    t = SimpleNamespace(tensor="w")
    for r in (1, 2, 6):
        want = u[:, :r] @ np.diag(s[:r]) @ vt[:r]
        got = f.update(t, r)
        assert got.dtype == np.float64 and got.shape == (6, 9)
        np.testing.assert_allclose(got, want, atol=1e-5 * s[0])
    # rank 2 is the best rank-2 approximation: its error is sqrt(s_3^2 + ...)
    assert np.linalg.norm(d - f.update(t, 2)) == pytest.approx(
        np.sqrt((s[2:] ** 2).sum()), rel=1e-5)


# --- directions: helpers of the measures -------------------------------------------


def test_directions_inverse_drops_values_below_the_floor():
    """1/s where s > 1e-13 s_1, else 0 (a vector there has no defined partner)."""
    got = directions._inverse(np.array([4.0, 0.5, 4e-13 * (1 + 1e-9), 4e-13, 0.0]))
    np.testing.assert_array_equal(got[[0, 1, 3, 4]], [0.25, 2.0, 0.0, 0.0])
    assert got[2] == pytest.approx(1 / 4e-13, rel=1e-8)
    assert directions._inverse(np.array([])).size == 0


def test_directions_cosines_are_scipys_principal_angles():
    rng = np.random.default_rng(3)
    for r in (1, 3, 6):
        a = np.linalg.qr(rng.standard_normal((20, r)))[0]
        b = np.linalg.qr(rng.standard_normal((20, r)))[0]
        want = np.sort(np.cos(scipy.linalg.subspace_angles(a, b)))[::-1]
        np.testing.assert_allclose(directions._cosines(a.T @ b), want, atol=1e-12)
    # rounding can push a cosine past 1, never below 0: clipped to [0, 1]
    got = directions._cosines(np.diag([1.2, 0.5, 0.0]))
    np.testing.assert_array_equal(got, [1.0, 0.5, 0.0])


@pytest.mark.parametrize("rank,k", [(7, 3), (30, 30), (5, 12)])
def test_directions_null_is_uniform_within_the_span(rank, k):
    """The intruder null: k directions uniform on the unit sphere of W_base's
    rank-dimensional span (normalised Gaussians, from the seed's generator), max |g_i|
    each; k may exceed the rank (independent draws, not an orthonormal set)."""
    got = directions.null_max_cos(rank, k, seed=11)
    g = np.random.default_rng(11).standard_normal((rank, k))
    np.testing.assert_allclose(got, np.abs(g).max(0) / np.linalg.norm(g, axis=0),
                               atol=1e-12)
    assert got.shape == (k,) and (got >= 1 / np.sqrt(rank) - 1e-12).all()
    assert not np.allclose(directions.null_max_cos(rank, k, seed=12), got)
    assert (directions.null_max_cos(1, k, seed=3) == 1.0).all()


def f32(rng, m, n, scale=1.0) -> np.ndarray:
    return (scale * rng.standard_normal((m, n))).astype(np.float32)


@pytest.mark.parametrize("shape", [(48, 16), (16, 48)])
def test_directions_measures_of_a_small_pair_against_numpy(shape):
    """k = 4 on a 48 x 16 and a 16 x 48 float32 pair (r = 16 fills the short side,
    r = 4 = k the angles): the vectors' signs (short side's largest entry positive)
    and pairing, the overlap shares, the principal angles (SciPy), the intruders
    and their null (uniform directions in the 16 dimensions W_base spans: max |g_i|
    of normalised Gaussians; the overlap's chance level r / 16 on both sides) and
    the rows of dW by norm, all from NumPy's SVD of the float64 values."""
    rng = np.random.default_rng(4)
    m, n = shape
    base = f32(rng, m, n) * np.linspace(1.0, 0.1, n, dtype=np.float32)
    sft = base + f32(rng, m, n, 0.2) + np.outer(f32(rng, m, 1), f32(rng, 1, n))
    k, seed = 4, 9
    _, found = directions.array_directions(base, sft, "float32", k=k, seed=seed,
                                           full_basis=True, row_changes=True)
    xb, xs = base.astype(np.float64), sft.astype(np.float64)
    d = xs - xb
    short_left = m < n
    for role, x in (("base", xb), ("sft", xs), ("delta", d)):
        u, s = np.linalg.svd(x, full_matrices=False)[:2]
        vals, left = found.vectors[role]["left"]
        _, right = found.vectors[role]["right"]
        np.testing.assert_allclose(vals, s[:k], rtol=1e-9)
        np.testing.assert_allclose(np.einsum("ij,ik,kj->j", left, x, right), s[:k],
                                   rtol=1e-8)
        np.testing.assert_allclose(np.abs(left.T @ u[:, :k]), np.eye(k), atol=1e-6)
        short = left if short_left else right
        assert (short[np.abs(short).argmax(0), np.arange(k)] > 0).all(), role
    ub, _, vbt = np.linalg.svd(xb, full_matrices=False)
    ud, _, vdt = np.linalg.svd(d, full_matrices=False)
    us = np.linalg.svd(xs, full_matrices=False)[0]
    total = (d ** 2).sum()
    want_overlap = []
    for side, basis, dim in (("left", ub, m), ("right", vbt.T, n)):
        for r in (1, 4, 16):
            proj = basis[:, :r].T @ d if side == "left" else d @ basis[:, :r]
            want_overlap.append((side, r, (proj ** 2).sum() / total,
                                 r / min(dim, 16)))
    got = sorted((o["side"], o["r"], o["share"], o["random_share"])
                 for o in found.overlap)
    assert [g[:2] for g in got] == [w[:2] for w in sorted(want_overlap)]
    for g, w in zip(got, sorted(want_overlap), strict=True):
        assert g[2] == pytest.approx(w[2], abs=1e-9) and g[3] == w[3], g
        assert g[2] <= 1.0  # r = 16 holds it all: rounding stays at 1
    got = {(a["side"], a["r"]): a["cosines"] for a in found.angles}
    assert sorted(got) == [("left", 1), ("left", 4), ("right", 1), ("right", 4)]
    for side, b, dd in (("left", ub, ud), ("right", vbt.T, vdt.T)):
        for r in (1, 4):
            want = np.sort(np.cos(scipy.linalg.subspace_angles(b[:, :r],
                                                               dd[:, :r])))[::-1]
            np.testing.assert_allclose(got[(side, r)], want, atol=1e-7)
    g = np.random.default_rng(seed).standard_normal((min(m, n), k))
    assert [i["j"] for i in found.intruders] == [1, 2, 3, 4]
    np.testing.assert_allclose([i["singular_value"] for i in found.intruders],
                               np.linalg.svd(xs, compute_uv=False)[:k], rtol=1e-9)
    np.testing.assert_allclose([i["max_cos"] for i in found.intruders],
                               np.abs(ub.T @ us[:, :k]).max(0), atol=1e-7)
    np.testing.assert_allclose([i["null_max_cos"] for i in found.intruders],
                               np.abs(g).max(0) / np.linalg.norm(g, axis=0),
                               atol=1e-12)
    assert all(i["max_cos"] <= 1.0 and i["null_max_cos"] <= 1.0
               for i in found.intruders)
    norms = np.linalg.norm(d, axis=1)
    order = np.argsort(-norms, kind="stable")
    assert [c["token_id"] for c in found.row_changes] == order.tolist()
    assert [c["rank"] for c in found.row_changes] == list(range(1, m + 1))
    np.testing.assert_allclose([c["score"] for c in found.row_changes], norms[order],
                               rtol=1e-9)


@pytest.mark.parametrize("shape", [(30, 12), (12, 30)])
def test_directions_of_a_matrix_stored_transposed(shape):
    """A matrix stored [in, out] (fan_in_fan_out): its left side is the stored
    columns, so its measures are those of the transposed copy (whose left side is
    checked against NumPy above); its row changes stay the stored rows'."""
    rng = np.random.default_rng(8)
    base = f32(rng, *shape)
    sft = base + f32(rng, *shape, 0.3)
    kw = {"k": 4, "seed": 3, "full_basis": True}
    _, got = directions.array_directions(base, sft, "float32", transposed=True,
                                         row_changes=True, **kw)
    _, want = directions.array_directions(np.ascontiguousarray(base.T),
                                          np.ascontiguousarray(sft.T), "float32",
                                          **kw)
    for role in ("base", "sft", "delta"):
        for side in ("left", "right"):
            np.testing.assert_allclose(got.vectors[role][side][1],
                                       want.vectors[role][side][1], atol=1e-9)
    for a, b in ((got.overlap, want.overlap), (got.intruders, want.intruders)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys()
            for key in x:
                assert x[key] == pytest.approx(y[key], abs=1e-9), key
    assert [(a["side"], a["r"]) for a in got.angles] == [
        (a["side"], a["r"]) for a in want.angles]
    for x, y in zip(got.angles, want.angles, strict=True):
        np.testing.assert_allclose(x["cosines"], y["cosines"], atol=1e-9)
    d = sft.astype(np.float64) - base
    assert [c["token_id"] for c in got.row_changes] == np.argsort(
        -np.linalg.norm(d, axis=1), kind="stable").tolist()


def test_directions_of_an_unchanged_matrix_have_no_measures():
    """dW = 0: no overlap or angles (no energy to share), intruders all cosine 1;
    a small dW (||dW||_F^2 ~ 1e-4, as fine-tunes' are) has them all."""
    rng = np.random.default_rng(6)
    w = f32(rng, 20, 8)
    _, small = directions.array_directions(w, w + f32(rng, 20, 8, 3e-3), "float32",
                                           k=3, full_basis=True)
    assert len(small.overlap) == 4 and len(small.angles) == 2
    _, found = directions.array_directions(w, w.copy(), "float32", k=3,
                                           full_basis=True)
    assert found.overlap == [] and found.angles == [] and found.row_changes == []
    np.testing.assert_allclose([i["max_cos"] for i in found.intruders], 1.0,
                               atol=1e-9)
    assert all(i["max_cos"] <= 1.0 for i in found.intruders)
