"""compute.linalg.directions against NumPy's SVD and SciPy: singular vectors (subspace
distance, not sign), overlap shares, principal angles (scipy.linalg.subspace_angles),
intruder cosines; planted pairs whose dW lies in known subspaces; a planted token
direction; the torch (GPU) ops on the CPU against the NumPy path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from compute.linalg import directions, spectra
from compute.linalg.directions import array_directions, token_labels


@pytest.fixture(params=["openblas", "numpy"])
def cpu_lapack(request, monkeypatch):
    """Both CPU Gram and eigenvector paths: OpenBLAS through ctypes (one triangle,
    one tridiagonal reduction) and NumPy's and SciPy's LAPACK."""
    if request.param == "openblas":
        if spectra._openblas() is None:
            pytest.skip("NumPy's BLAS is not an OpenBLAS with CBLAS and LAPACKE")
    else:
        monkeypatch.setattr(spectra, "_openblas", lambda: None)
    return request.param


def bf16(x: np.ndarray) -> np.ndarray:
    """fp64 -> bfloat16 bits (round to nearest even), the layout spectra reads."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def value(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits -> fp64 (the upper half of an fp32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def orth(rng, n, k) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


def spectrum_matrix(rng, m, n, decay=0.9):
    """U diag(s) V^T with distinct, geometrically decaying singular values."""
    k = min(m, n)
    return (orth(rng, m, k) * decay ** np.arange(k)) @ orth(rng, n, k).T


def projector_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||P_a - P_b||_2 of the spans of the orthonormal columns of a and b."""
    return float(np.linalg.norm(a @ a.T - b @ b.T, 2))


SHAPES = [(300, 80), (60, 200), (96, 96)]  # tall, wide, square


@pytest.mark.parametrize("shape", SHAPES)
def test_vectors_match_numpy_svd(shape, cpu_lapack):
    rng = np.random.default_rng(1)
    m, n = shape
    base = spectrum_matrix(rng, m, n)
    sft = base + 0.05 * spectrum_matrix(rng, m, n, decay=0.7)
    wb, ws = bf16(base), bf16(sft)
    k = 8
    rows, found = array_directions(wb, ws, "bfloat16", k=k)
    assert found is not None and found.full_basis and found.k == k
    for role, x in zip(spectra.ROLES, (value(wb), value(ws), value(ws) - value(wb)),
                       strict=True):
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        vals, left = found.vectors[role]["left"]
        _, right = found.vectors[role]["right"]
        np.testing.assert_allclose(vals, s[:k], rtol=1e-9, atol=1e-9 * s[0])
        for j in (1, 4, 8):  # top-j subspaces
            assert projector_distance(left[:, :j], u[:, :j]) < 1e-6, (role, j)
            assert projector_distance(right[:, :j], vt[:j].T) < 1e-6, (role, j)
        # each pair belongs together: u_j^T X v_j = s_j (signs agree)
        np.testing.assert_allclose(np.einsum("ij,ik,kj->j", left, x, right), s[:k],
                                   rtol=1e-8)
    # the spectra rows are the spectra module's own
    plain = spectra.array_spectra(wb, ws, "bfloat16")
    for r, p in zip(rows, plain, strict=True):
        np.testing.assert_allclose(r["singular_values"], p["singular_values"],
                                   rtol=1e-9, atol=1e-12 * p["singular_values"][0])


@pytest.mark.parametrize("shape", SHAPES)
def test_measures_match_numpy_and_scipy(shape, cpu_lapack):
    rng = np.random.default_rng(2)
    m, n = shape
    base = spectrum_matrix(rng, m, n, decay=0.97)
    sft = base + 0.02 * rng.standard_normal((m, n))
    wb, ws = bf16(base), bf16(sft)
    k = 16
    _, found = array_directions(wb, ws, "bfloat16", k=k, long_rank=64)
    xb, xs = value(wb), value(ws)
    d = xs - xb
    ub, _, vbt = np.linalg.svd(xb, full_matrices=False)
    ud, _, vdt = np.linalg.svd(d, full_matrices=False)
    us = np.linalg.svd(xs, full_matrices=False)[0]
    total = (d ** 2).sum()
    got = {(o["side"], o["r"]): o for o in found.overlap}
    for side, basis in (("left", ub), ("right", vbt.T)):
        for r in (1, 4, 16, 64):
            if r > min(m, n):
                continue
            proj = basis[:, :r].T @ d if side == "left" else d @ basis[:, :r]
            o = got[(side, r)]
            assert o["share"] == pytest.approx((proj ** 2).sum() / total, abs=1e-8)
            assert o["random_share"] == r / min(m, n)  # W_base is full rank
            assert o["span_dim"] == min(m, n)
    angles = {(a["side"], a["r"]): a["cosines"] for a in found.angles}
    for side, b, dd in (("left", ub, ud), ("right", vbt.T, vdt.T)):
        for r in (1, 4, 16):
            want = np.sort(np.cos(scipy.linalg.subspace_angles(b[:, :r],
                                                               dd[:, :r])))[::-1]
            np.testing.assert_allclose(angles[(side, r)], want, atol=1e-6)
    want = np.abs(ub.T @ us[:, :k]).max(0)
    got = np.array([i["max_cos"] for i in found.intruders])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_tall_matrix_null_within_the_span(cpu_lapack):
    """An embedding-like tall matrix, 2048 rows and W_base of rank 128: the overlap's
    chance level and the intruder null are taken within the 128 dimensions W_base
    spans, not the 2048 of the side. A direction drawn in the whole side has max
    |cos| about sqrt(2 ln 256 / 2048) ~ 0.07 with W_base's vectors (every one an
    intruder at epsilon 0.1 already: the uninformative null this replaces); drawn in
    the span, about sqrt(2 ln 256 / 128) ~ 0.29 (checked against the same draw by
    NumPy)."""
    rng = np.random.default_rng(5)
    m, n = 2048, 128
    base = spectrum_matrix(rng, m, n, decay=0.98)
    wb, ws = bf16(base), bf16(base + 0.01 * rng.standard_normal((m, n)))
    _, found = array_directions(wb, ws, "bfloat16", k=16, seed=3)
    assert {o["span_dim"] for o in found.overlap} == {n}
    for o in found.overlap:
        assert o["random_share"] == pytest.approx(o["r"] / n)
    null = np.array([i["null_max_cos"] for i in found.intruders])
    assert {i["null_dim"] for i in found.intruders} == {n}
    g = np.random.default_rng(3).standard_normal((n, 16))
    np.testing.assert_allclose(null, np.abs(g).max(0) / np.linalg.norm(g, axis=0))
    assert 0.15 < null.mean() < 0.5


def planted(rng, m, n, inside: bool, rank: int = 3):
    """W_base with s_i = 0.95^i; dW of `rank` inside its top-8 left and right
    subspaces (small) or orthogonal to both with singular values 3, 2.5, 2 (above
    W_base's s_1 = 1, so W_sft's top 10 holds them and W_base's top 7)."""
    k = min(m, n)
    u, v = orth(rng, m, k), orth(rng, n, k)
    base = (u * 0.95 ** np.arange(k)) @ v.T
    if inside:
        c = rng.standard_normal((8, rank)), rng.standard_normal((8, rank))
        dw = 0.05 * (u[:, :8] @ c[0]) @ (v[:, :8] @ c[1]).T
    else:
        def outside(basis, dim):
            p = rng.standard_normal((dim, rank))
            p -= basis[:, :8] @ (basis[:, :8].T @ p)
            return np.linalg.qr(p)[0]

        dw = (outside(u, m) * np.array([3.0, 2.5, 2.0][:rank])) @ outside(v, n).T
    return base, base + dw


def counts(found, eps, k):
    real = sum(i["max_cos"] < eps for i in found.intruders[:k])
    null = k * np.mean([i["null_max_cos"] < eps for i in found.intruders])
    return real, null


@pytest.mark.parametrize("shape", [(400, 120), (120, 400)])
def test_planted_inside_top8_no_intruders(shape):
    rng = np.random.default_rng(3)
    base, sft = planted(rng, *shape, inside=True)
    wb, ws = bf16(base), bf16(sft)
    _, found = array_directions(wb, ws, "bfloat16", k=10)
    # dW inside the top-8 subspaces: all of its energy there, up to bf16 rounding
    for o in found.overlap:
        if o["r"] >= 16:
            assert o["share"] > 0.99, o
    assert counts(found, 0.5, 10)[0] == 0
    # the null: a random direction matches no basis vector (max |cos| ~ 0.2)
    assert counts(found, 0.5, 10)[1] == 10


@pytest.mark.parametrize("shape", [(400, 120), (120, 400)])
def test_planted_orthogonal_intruders_found(shape, cpu_lapack):
    rng = np.random.default_rng(4)
    base, sft = planted(rng, *shape, inside=False)
    wb, ws = bf16(base), bf16(sft)
    _, found = array_directions(wb, ws, "bfloat16", k=10)
    m, n = shape
    for o in found.overlap:  # outside the top 8: ~ the random share (never more)
        if o["r"] in (1, 4):
            assert o["share"] < 1e-3, o
    share16 = {o["side"]: o["share"] for o in found.overlap if o["r"] == 16}
    for side, dim in (("left", m), ("right", n)):
        # 8 of the 16 directions lie in the complement, in which dW is random
        assert share16[side] < 6 * 8 / (dim - 8), (side, share16)
    for eps in (0.3, 0.5, 0.7):
        assert counts(found, eps, 10)[0] == 3, eps  # the planted rank, exactly
    # W_sft's top 3 are the planted ones, the next 7 W_base's own (cos ~ 1)
    assert [i["max_cos"] < 0.5 for i in found.intruders] == [True] * 3 + [False] * 7


def test_row_changes_name_the_changed_rows():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((500, 32)) * 0.02
    sft = base.copy()
    sft[[7, 123, 401]] += np.array([3.0, 2.0, 1.0])[:, None] * 0.05
    _, found = array_directions(bf16(base), bf16(sft), "bfloat16", k=4,
                                row_changes=True)
    assert [r["token_id"] for r in found.row_changes[:3]] == [7, 123, 401]
    d = value(bf16(sft)) - value(bf16(base))
    want = np.sort(np.linalg.norm(d, axis=1))[::-1][:directions.ROW_CHANGE_TOKENS]
    np.testing.assert_allclose([r["score"] for r in found.row_changes], want,
                               rtol=1e-12)


@pytest.mark.parametrize("with_norm", [False, True])
def test_planted_token_direction_promotes_that_token(with_norm):
    """dW of o_proj = 0.5 (W_U[t] / g) w^T: its top left direction, pushed through
    the final norm's weight g and the unembedding, promotes token t first."""
    rng = np.random.default_rng(6)
    vocab, hidden, t = 300, 48, 217
    unembed = bf16(rng.standard_normal((vocab, hidden)))
    g = rng.uniform(0.5, 1.5, hidden) if with_norm else None
    target = value(unembed)[t] / (g if with_norm else 1.0)
    base = rng.standard_normal((hidden, hidden)) * 0.02
    w = rng.standard_normal(hidden)
    sft = base + 0.5 * np.outer(target / np.linalg.norm(target), w / np.linalg.norm(w))
    _, found = array_directions(bf16(base), bf16(sft), "bfloat16", k=2)
    left = found.vectors["delta"]["left"][1]
    labels = token_labels(left, unembed, "bfloat16", g)
    first = [r for r in labels if r["direction"] == 1 and r["rank"] == 1]
    # the vector's sign is arbitrary: t heads the pole of the planted sign
    planted_sign = np.sign(left[:, 0] @ target)
    pole = "+u" if planted_sign > 0 else "-u"
    assert next(r for r in first if r["pole"] == pole)["token_id"] == t
    # the logits themselves, against a direct product: '+u' ranks the logits of
    # u, '-u' those of -u (scores positive)
    logits = value(unembed) @ ((g if with_norm else 1.0) * left[:, 0])
    for name, sign in (("+u", 1.0), ("-u", -1.0)):
        rows = [r for r in labels if r["direction"] == 1 and r["pole"] == name]
        order = np.argsort(-sign * logits, kind="stable")
        assert [r["token_id"] for r in rows] == order[
            :directions.TOKENS_PER_POLE].tolist()
        np.testing.assert_allclose([r["score"] for r in rows],
                                   (sign * logits)[order[:directions.TOKENS_PER_POLE]],
                                   rtol=1e-9)


@pytest.mark.parametrize("shape", [(300, 80), (60, 200)])
def test_torch_ops_match_numpy(shape):
    """The GPU code path (torch ops), run on the CPU, against the NumPy path."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    m, n = shape
    base = spectrum_matrix(rng, m, n)
    sft = base + 0.05 * spectrum_matrix(rng, m, n, decay=0.7)
    wb, ws = bf16(base), bf16(sft)
    _, want = array_directions(wb, ws, "bfloat16", k=6, row_changes=True)
    tb, ts = (torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
              for x in (wb, ws))
    _, got = directions.gram_directions(
        tb, ts, ("bfloat16", "bfloat16"), spectra._TorchOps(torch.device("cpu")),
        k=6, full_basis=True, row_changes=True)
    for role in spectra.ROLES:
        for side in ("left", "right"):
            np.testing.assert_allclose(got.vectors[role][side][0],
                                       want.vectors[role][side][0], rtol=1e-9)
            np.testing.assert_allclose(got.vectors[role][side][1],
                                       want.vectors[role][side][1], atol=1e-7)
    for a, b in ((got.overlap, want.overlap), (got.intruders, want.intruders),
                 (got.row_changes, want.row_changes)):
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys()
            for key in x:
                assert x[key] == pytest.approx(y[key], abs=1e-7), key


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
def test_cuda_matches_numpy():
    """tensor_directions on the GPU (all of W_base's vectors) against NumPy's."""
    import torch

    rng = np.random.default_rng(8)
    base = spectrum_matrix(rng, 700, 256)
    sft = base + 0.05 * spectrum_matrix(rng, 700, 256, decay=0.7)
    wb, ws = bf16(base), bf16(sft)
    _, want = array_directions(wb, ws, "bfloat16", k=8, full_basis=True)
    tb, ts = (torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
              for x in (wb, ws))
    _, got = directions.tensor_directions(tb, ts, device=torch.device("cuda"), k=8)
    assert got.full_basis
    for role in spectra.ROLES:
        for side in ("left", "right"):
            np.testing.assert_allclose(got.vectors[role][side][1],
                                       want.vectors[role][side][1], atol=1e-6)
    np.testing.assert_allclose([i["max_cos"] for i in got.intruders],
                               [i["max_cos"] for i in want.intruders], atol=1e-6)


def test_adapter_lowrank_delta():
    """An adapter's dW = left @ right (W_sft formed in fp64): dW's vectors are those
    of the product, W_sft's those of W_base + product."""
    rng = np.random.default_rng(9)
    base = spectrum_matrix(rng, 200, 90)
    left, right = rng.standard_normal((200, 3)) * 0.3, rng.standard_normal((3, 90))
    wb = bf16(base)
    _, found = array_directions(wb, wb, "bfloat16", k=3, lowrank=(left, right))
    for role, x in (("sft", value(wb) + left @ right), ("delta", left @ right)):
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        vals, got = found.vectors[role]["left"]
        np.testing.assert_allclose(vals, s[:3], rtol=1e-9)
        assert projector_distance(got, u[:, :3]) < 1e-6
        assert projector_distance(found.vectors[role]["right"][1], vt[:3].T) < 1e-6
