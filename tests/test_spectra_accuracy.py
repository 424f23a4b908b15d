"""compute.linalg.spectra against NumPy float64: spectra within 1e-7 * s_1, noise sigma from
np.spacing, zero and non-finite counts, on the shapes the fast paths treat apart
(wide, tall, square, several blocks) and the storage dtypes bf16/fp16/fp32."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compute.linalg import spectra
from compute.linalg.spectra import noise_sigma, singular_values, tensor_spectra, ulp

CPU = torch.device("cpu")
TOL = 1e-7


@pytest.fixture(autouse=True, params=["openblas", "numpy"])
def cpu_lapack(request, monkeypatch):
    """Every test on both CPU paths: dsyrk, dsytrd and dsterf of NumPy's OpenBLAS
    called directly, and NumPy's matmul and eigvalsh (other BLAS builds)."""
    if request.param == "openblas":
        if spectra._openblas() is None:
            pytest.skip("NumPy's BLAS is not an OpenBLAS with CBLAS and LAPACKE")
    else:
        monkeypatch.setattr(spectra, "_openblas", lambda: None)
    return request.param


@pytest.fixture(autouse=True,
                params=[pytest.param("c", marks=pytest.mark.c_extension), "numpy"])
def block_pass(request, monkeypatch):
    """...and both per-block passes: compute/linalg/_kernels.c and its NumPy twin. Without
    the C pass the "c" cases fail (`make test-pure-python` leaves them out)."""
    if request.param == "c":
        assert spectra._kernels is not None, "compute.linalg._kernels is not built"
    else:
        monkeypatch.setattr(spectra, "_kernels", None)
    return request.param


def pair(shape, dtype, seed=0, delta_scale=1e-3, rank=4):
    """(base, sft) in `dtype`: random weights plus a planted low-rank update."""
    gen = torch.Generator().manual_seed(seed)
    m, n = shape
    w = torch.randn(shape, generator=gen) * 0.02
    upd = (torch.randn(m, rank, generator=gen) @ torch.randn(rank, n, generator=gen)
           ) * delta_scale / math.sqrt(rank)
    b = w.to(dtype)
    s = (w + upd + torch.randn(shape, generator=gen) * delta_scale * 0.1).to(dtype)
    return b, s


def np_svals(x: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(x.to(torch.float64).numpy(), compute_uv=False)


def rel_err(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)) / want[0])


def np_ulp(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """Spacing of `dtype` at each (exact) value, from np.spacing; 0 at x == 0."""
    v = x.to(torch.float32).numpy()
    if dtype == torch.float16:
        u = np.spacing(np.abs(v).astype(np.float16)).astype(np.float64)
    elif dtype == torch.bfloat16:  # same exponents as fp32, 16 fewer mantissa bits
        u = np.spacing(np.abs(v)).astype(np.float64) * 2.0**16
    else:
        u = np.spacing(np.abs(v)).astype(np.float64)
    return np.where(v == 0, 0.0, u)


SHAPES = {
    "square": (96, 96),
    "tall": (400, 64),
    "wide": (48, 500),
    "kv-like wide": (16, 112),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_three_spectra_match_numpy(shape, dtype):
    b, s = pair(shape, dtype)
    rows = tensor_spectra(b, s, device=CPU)
    assert [r["role"] for r in rows] == ["base", "sft", "delta"]
    b64, s64 = b.to(torch.float64), s.to(torch.float64)
    for r, mat in zip(rows, (b64, s64, s64 - b64), strict=True):
        want = np_svals(mat)
        assert len(r["singular_values"]) == min(shape)
        assert np.all(np.diff(r["singular_values"]) <= 0)  # descending
        assert rel_err(r["singular_values"], want) < TOL, (r["role"], shape, dtype)
        assert r["frobenius_sq"] == pytest.approx(float((mat**2).sum()), rel=1e-12)
        assert r["n_zero"] == int((mat == 0).sum())
        assert r["n_nonfinite"] == 0
        assert r["seconds"] >= 0


def test_block_accumulated_gram_embedding_like(monkeypatch):
    """A long matrix split in several blocks (as the 151936 x 896 embedding is)."""
    monkeypatch.setattr(spectra, "BLOCK_ELEMS", 5000)
    for shape in ((1000, 40), (40, 1000), (1003, 37), (1, 30000), (30000, 1)):
        b, s = pair(shape, torch.bfloat16, seed=3)
        assert len(spectra._blocks(max(shape), min(shape))) > 5
        rows = tensor_spectra(b, s, device=CPU)
        b64, s64 = b.to(torch.float64), s.to(torch.float64)
        for r, mat in zip(rows, (b64, s64, s64 - b64), strict=True):
            assert rel_err(r["singular_values"], np_svals(mat)) < TOL, (shape, r["role"])
        assert rows[2]["noise_sigma"] == pytest.approx(
            noise_sigma(b, s, torch.bfloat16), rel=1e-12)


def test_identical_pair_has_a_zero_delta():
    b, _ = pair((300, 40), torch.bfloat16, seed=7)
    rows = tensor_spectra(b, b.clone(), device=CPU)
    assert rows[2]["frobenius_sq"] == 0.0 and rows[2]["n_zero"] == b.numel()
    np.testing.assert_array_equal(rows[2]["singular_values"], np.zeros(40))
    assert rel_err(rows[0]["singular_values"], np_svals(b)) < TOL


def test_tiny_delta_relative_to_its_own_s1():
    """dW far below W (one ulp here and there): accurate relative to dW's own s_1."""
    b, _ = pair((300, 80), torch.bfloat16, seed=5)
    s = b.clone()
    bits = s.view(torch.int16).view(-1)
    bits[::97] += 1  # the next bf16 number away from zero: one ulp
    rows = tensor_spectra(b, s, device=CPU)
    d = s.to(torch.float64) - b.to(torch.float64)
    assert rel_err(rows[2]["singular_values"], np_svals(d)) < TOL
    assert rows[2]["n_zero"] == int((d == 0).sum())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(300, 40), (40, 300)], ids=["tall", "wide"])
def test_zero_counts_with_signed_zeros(shape, dtype, monkeypatch):
    """dW's zeros are counted from the storage bits: equal bits, and +0 against -0
    (different bits, equal values), are zeros of dW; over several blocks."""
    monkeypatch.setattr(spectra, "BLOCK_ELEMS", 3000)
    b, s = pair(shape, dtype, seed=9)
    fb, fs = b.view(-1), s.view(-1)
    fs[::7] = fb[::7]  # unchanged entries
    fb[:50], fs[:50] = 0.0, -0.0  # opposite zeros
    fb[50:60], fs[50:60] = -0.0, -0.0
    fb[60:70] = 0.0  # zero in the base only
    fs[70:75] = -0.0  # zero in the SFT only
    rows = tensor_spectra(b, s, device=CPU)
    b64, s64 = b.to(torch.float64), s.to(torch.float64)
    for r, mat in zip(rows, (b64, s64, s64 - b64), strict=True):
        assert r["n_zero"] == int((mat == 0).sum()), r["role"]
        assert rel_err(r["singular_values"], np_svals(mat)) < TOL, r["role"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_noise_sigma_matches_np_spacing(dtype):
    b, s = pair((200, 150), dtype, seed=11)
    b.view(-1)[:40] = 0  # zeros have no rounding error
    if dtype == torch.float16:
        s.view(-1)[:30] = torch.tensor(3e-6, dtype=dtype)  # fp16 subnormals
    ub, us = np_ulp(b, dtype), np_ulp(s, dtype)
    want = math.sqrt(np.mean((ub**2 + us**2) / 12))
    assert noise_sigma(b, s, dtype) == pytest.approx(want, rel=1e-12)
    assert tensor_spectra(b, s, device=CPU)[2]["noise_sigma"] == pytest.approx(
        want, rel=1e-12)
    got_ulp = ulp(b, dtype).double().numpy()
    np.testing.assert_array_equal(got_ulp, ub)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_noise_sigma_of_subnormal_weights(dtype):
    """Weights below the smallest normal number: every entry's ulp is the subnormal
    step (smallest normal x eps), so sigma = step / sqrt(6) over the nonzero
    entries, as np.spacing gives it."""
    info = torch.finfo(dtype)
    step = info.smallest_normal * info.eps
    gen = torch.Generator().manual_seed(5)
    top = int(1 / info.eps)  # k * step < smallest normal for k < 1 / eps
    b, s = ((torch.randint(1, top, (60, 50), generator=gen).double() * step).to(dtype)
            for _ in range(2))
    ub, us = np_ulp(b, dtype), np_ulp(s, dtype)
    assert np.all(ub == step) and np.all(us == step)
    want = math.sqrt(np.mean((ub**2 + us**2) / 12))
    assert want == pytest.approx(step / math.sqrt(6), rel=1e-12)
    assert noise_sigma(b, s, dtype) == pytest.approx(want, rel=1e-12)
    assert tensor_spectra(b, s, device=CPU)[2]["noise_sigma"] == pytest.approx(
        want, rel=1e-12)


def test_singular_values_methods_agree():
    b, _ = pair((120, 70), torch.bfloat16, seed=2)
    want = np_svals(b)
    for method in ("gram", "svd", "svd64"):
        sv, frob = singular_values(b.float(), method)
        assert rel_err(sv, want) < (TOL if method != "svd" else 1e-6), method
        assert frob == pytest.approx(float((b.double() ** 2).sum()), rel=1e-6)
    with pytest.raises(ValueError, match="unknown method"):
        singular_values(b.float(), "nope")


def test_svd_method_rows_match_gram_rows():
    b, s = pair((90, 60), torch.bfloat16, seed=4)
    gram = tensor_spectra(b, s, device=CPU)
    svd = tensor_spectra(b, s, device=CPU, method="svd")
    for g, r in zip(gram, svd, strict=True):
        assert rel_err(g["singular_values"], r["singular_values"]) < 1e-6
        assert g["n_zero"] == r["n_zero"]
    assert gram[2]["noise_sigma"] == pytest.approx(svd[2]["noise_sigma"], rel=1e-12)


def test_nonfinite_entries_leave_the_spectrum_empty():
    b, s = pair((40, 30), torch.bfloat16, seed=6)
    s[3, 4] = float("nan")
    b[0, 0] = float("inf")
    b[5, 6] = s[5, 6] = float("inf")  # equal bits, but inf - inf is NaN, not 0
    b[7, 8] = s[7, 8] = float("nan")
    rows = {r["role"]: r for r in tensor_spectra(b, s, device=CPU)}
    assert rows["base"]["n_nonfinite"] == 3 and rows["sft"]["n_nonfinite"] == 3
    assert rows["delta"]["n_nonfinite"] == 4
    d = s.to(torch.float64) - b.to(torch.float64)
    assert rows["delta"]["n_zero"] == int((d == 0).sum())
    for r in rows.values():
        assert len(r["singular_values"]) == 0
    assert rows["delta"]["noise_sigma"] is None


def test_results_do_not_depend_on_worker_threads():
    """compute.run runs tensors on worker threads with single-threaded BLAS."""
    b, s = pair((200, 64), torch.bfloat16, seed=8)
    alone = tensor_spectra(b, s, device=CPU)
    workers = spectra.spectra_workers(CPU, 4)
    from concurrent.futures import ThreadPoolExecutor

    with spectra.worker_threads(workers), ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: tensor_spectra(b, s, device=CPU), range(4)))
    for rows in results:
        for a, r in zip(alone, rows, strict=True):
            np.testing.assert_allclose(r["singular_values"], a["singular_values"],
                                       rtol=0, atol=1e-12 * a["singular_values"][0])


MIXED = [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
         (torch.bfloat16, torch.float16), (torch.float16, torch.float32)]


@pytest.mark.parametrize(("dtype_b", "dtype_s"), MIXED, ids=str)
@pytest.mark.parametrize("shape", [(300, 40), (40, 300)], ids=["tall", "wide"])
def test_mixed_storage_dtypes(shape, dtype_b, dtype_s, monkeypatch):
    """Base and SFT stored in different dtypes: the three spectra against NumPy's
    float64 SVD of the exact values (dW formed in fp64), sigma from np.spacing of
    each side in its own dtype (a float32 side adds almost nothing), each role row
    naming its storage; over several blocks."""
    monkeypatch.setattr(spectra, "BLOCK_ELEMS", 3000)
    b, s = pair(shape, torch.float32, seed=13)
    b, s = b.to(dtype_b), s.to(dtype_s)
    s.view(-1)[::5] = b.view(-1)[::5].to(dtype_s)  # unchanged where representable
    rows = tensor_spectra(b, s, device=CPU)
    b64, s64 = b.to(torch.float64), s.to(torch.float64)
    for r, mat in zip(rows, (b64, s64, s64 - b64), strict=True):
        assert rel_err(r["singular_values"], np_svals(mat)) < TOL, r["role"]
        assert r["n_zero"] == int((mat == 0).sum()), r["role"]
    ub, us = np_ulp(b, dtype_b), np_ulp(s, dtype_s)
    want = math.sqrt(np.mean((ub**2 + us**2) / 12))
    assert rows[2]["noise_sigma"] == pytest.approx(want, rel=1e-12)
    assert noise_sigma(b, s, dtype_b, dtype_s) == pytest.approx(want, rel=1e-12)
    names = [spectra.storage_name(d) for d in (dtype_b, dtype_s)]
    assert [r["storage_dtype"] for r in rows] == [*names, "float64"]
    if torch.float32 in (dtype_b, dtype_s):  # the other side's rounding dominates
        other = ub if dtype_s == torch.float32 else us
        assert want == pytest.approx(math.sqrt(np.mean(other**2 / 12)), rel=1e-4)
