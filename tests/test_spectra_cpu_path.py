"""The CPU spectra path without torch: compute/linalg/_kernels.c's per-block pass against
its NumPy twin and against values computed independently (torch's upcasts, np.frexp),
the safetensors reader against safetensors' own, the torch ops path (what runs on a
GPU) against NumPy, and compute.run on a CPU never importing torch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from compute.io.checkpoints import CheckpointError, resolve
from compute.linalg import spectra
from tests.conftest import ROOT, run_py

STORAGES = ["bfloat16", "float16", "float32", "float64"]
SPECIALS = {  # +0, -0, smallest subnormal, largest subnormal, inf, -inf, nan, max
    "bfloat16": [0x0000, 0x8000, 0x0001, 0x007F, 0x7F80, 0xFF80, 0x7FC0, 0x7F7F],
    "float16": [0x0000, 0x8000, 0x0001, 0x03FF, 0x7C00, 0xFC00, 0x7E00, 0x7BFF],
    "float32": [0, 0x80000000, 1, 0x007FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000,
                0x7F7FFFFF],
    "float64": [0, 0x8000000000000000, 1, 0x000FFFFFFFFFFFFF, 0x7FF0000000000000,
                0xFFF0000000000000, 0x7FF8000000000000, 0x7FEFFFFFFFFFFFFF],
}
NOT_BUILT = ("compute.linalg._kernels is not built: `pip install -e .` compiles it (needs a C "
             "compiler); `make test-pure-python` tests the NumPy fallback alone")
needs_kernels = pytest.mark.c_extension
C = pytest.param("c", marks=needs_kernels)


@pytest.fixture(autouse=True)
def kernels_built(request):
    """A test that needs the C pass fails, not skips, where it did not build."""
    if request.node.get_closest_marker("c_extension"):
        assert spectra._kernels is not None, NOT_BUILT


def stored(w: np.ndarray, storage: str) -> np.ndarray:
    """fp64 values rounded to `storage`, in the ARRAY_DTYPES layout (bfloat16:
    truncated fp32 bits)."""
    if storage == "bfloat16":
        return (w.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return w.astype(spectra.ARRAY_DTYPES[storage])


def random_pair(storage: str, shape, seed: int, specials: bool = True,
                storage_sft: str | None = None):
    """(base, sft) arrays in the ARRAY_DTYPES layout (the SFT in `storage_sft`,
    default the same): random weights, an SFT that keeps a third of the entries
    (their value, in its own dtype), and every special bit pattern in both roles and
    against each other."""
    storage_sft = storage_sft or storage
    gen = np.random.default_rng(seed)
    w = gen.normal(0, 0.02, shape)
    b = stored(w, storage)
    sft = w + gen.normal(0, 1e-3, shape)
    keep = gen.random(shape) < 0.3
    sft[keep] = to_f64(b, storage)[keep]
    s = stored(sft, storage_sft)
    if specials:
        n = len(SPECIALS[storage])
        for arr, st, whole in ((b, storage, False), (s, storage_sft, True)):
            uint = spectra.BITS[st][0]
            sp = np.array(SPECIALS[st], dtype=np.uint64).astype(uint)
            flat = arr.reshape(-1).view(uint)
            for i in range(n):  # every special in base against every one in SFT
                flat[i * n:(i + 1) * n] = sp if whole else sp[i]
    return b, s


def as_tensor(a: np.ndarray, storage: str) -> torch.Tensor:
    """The torch tensor of an array in the ARRAY_DTYPES layout (no copy)."""
    if storage == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def to_f64(a: np.ndarray, storage: str) -> np.ndarray:
    """fp64 values through torch's own conversion (an independent upcast)."""
    return as_tensor(a, storage).double().numpy()


def reference_stats(b: np.ndarray, s: np.ndarray, storage: str,
                    storage_sft: str | None = None):
    """The seven counts of prepare() from the fp64 values, by np.frexp."""
    storages = storage, storage_sft or storage
    vb, vs = to_f64(b, storages[0]), to_f64(s, storages[1])
    pow2_sq, subnormal = [], []
    for v, st in zip((vb, vs), storages, strict=True):
        tiny = 2.0 ** spectra.MIN_NORMAL_EXP[st]
        a = np.abs(v)
        finite = np.isfinite(a)
        normal = finite & (a >= tiny)
        _, e = np.frexp(np.where(normal, a, 1.0))
        p = np.where(normal, np.ldexp(1.0, e - 1), 0.0)
        with np.errstate(over="ignore"):  # fp64's largest powers of two square to inf
            pow2_sq.append(float(np.sum(p * p)) + (math.inf if (~finite).any()
                                                    else 0.0))
        subnormal.append(int(np.count_nonzero(finite & (a > 0) & (a < tiny))))
    with np.errstate(invalid="ignore"):
        d = vs - vb
    both = np.isfinite(vb) & np.isfinite(vs)
    return (int(np.count_nonzero(vb)), int(np.count_nonzero(vs)),
            int(np.count_nonzero(both & (d != 0))), *subnormal, *pow2_sq), \
        (vb, vs, d), both


def run_prepare(fn, storage, b, s, storage_sft=None):
    xs = [np.full(b.size, 7.0) for _ in range(3)]
    views = [x.reshape(b.shape) for x in xs]
    return fn(storage, storage_sft or storage, b, s, *views), views


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("impl", [C, "numpy"])
def test_prepare_against_independent_values(storage, impl):
    fn = spectra._kernels.prepare if impl == "c" else spectra.prepare_numpy
    b, s = random_pair(storage, (70, 90), seed=1)
    (nz_b, nz_s, changed, *sub, sq_b, sq_s), (xb, xs, xd) = run_prepare(fn, storage,
                                                                        b, s)
    (rnz_b, rnz_s, rchanged, *rsub, _, _), (vb, vs, d), both = reference_stats(
        b, s, storage)
    np.testing.assert_array_equal(xb, vb)  # NaN at the same places
    np.testing.assert_array_equal(xs, vs)
    np.testing.assert_array_equal(xd, d)
    assert (nz_b, nz_s, *sub) == (rnz_b, rnz_s, *rsub)
    # exact for finite pairs; a pair with NaN/Inf counts as changed unless its bits
    # are equal (the caller recounts those in fp64)
    fb, fs = (a.reshape(-1).view(spectra.BITS[storage][0]) for a in (b, s))
    odd = ~both.reshape(-1)
    assert changed == rchanged + int(np.count_nonzero(odd & (fb != fs)))
    assert math.isinf(sq_b) and math.isinf(sq_s)  # the specials hold Inf


MIXED = [(b, s) for b in STORAGES for s in STORAGES if b != s]


@pytest.mark.parametrize(("storage_b", "storage_s"), MIXED)
@pytest.mark.parametrize("impl", [C, "numpy"])
def test_prepare_mixed_dtypes_against_independent_values(storage_b, storage_s, impl):
    """Base and SFT in different storage dtypes: the upcasts, dW and the counts of
    each side in its own dtype, specials of one dtype against the other's."""
    fn = spectra._kernels.prepare if impl == "c" else spectra.prepare_numpy
    for specials in (True, False):
        b, s = random_pair(storage_b, (70, 90), seed=6, specials=specials,
                           storage_sft=storage_s)
        got, (xb, xs, xd) = run_prepare(fn, storage_b, b, s, storage_s)
        want, (vb, vs, d), both = reference_stats(b, s, storage_b, storage_s)
        np.testing.assert_array_equal(xb, vb)
        np.testing.assert_array_equal(xs, vs)
        np.testing.assert_array_equal(xd, d)
        # a pair with NaN/Inf counts as changed unless the values are equal
        with np.errstate(invalid="ignore"):
            odd = int(np.count_nonzero(~both & (vb != vs)))
        assert got[:2] == want[:2] and got[3:5] == want[3:5]
        assert got[2] == want[2] + odd
        if not specials:
            assert got[5:] == pytest.approx(want[5:], rel=1e-13)


@pytest.mark.parametrize("storage", STORAGES)
def test_prepare_finite_sums_and_subnormals(storage):
    b, s = random_pair(storage, (50, 64), seed=2, specials=False)
    uint = spectra.BITS[storage][0]
    b.reshape(-1).view(uint)[:20] = 1  # subnormals
    s.reshape(-1).view(uint)[10:30] = 0  # zeros, some against subnormals
    want, _, _ = reference_stats(b, s, storage)
    for fn in filter(None, (spectra.prepare_numpy,
                            getattr(spectra._kernels, "prepare", None))):
        got, _ = run_prepare(fn, storage, b, s)
        assert got[:5] == want[:5], fn
        assert got[5:] == pytest.approx(want[5:], rel=1e-13), fn


@needs_kernels
@pytest.mark.parametrize("storage", STORAGES)
def test_kernel_equals_numpy_twin_on_strided_and_1d_blocks(storage):
    b, s = random_pair(storage, (40, 300), seed=3)
    for sl in (np.s_[:, 17:250], np.s_[5:6, :], np.s_[:, 0:1], np.s_[3:3, :]):
        bb, sb = b[sl], s[sl]
        c, cx = run_prepare(spectra._kernels.prepare, storage, bb, sb)
        p, px = run_prepare(spectra.prepare_numpy, storage, bb, sb)
        assert c[:5] == p[:5]
        for u, v in zip(c[5:], p[5:], strict=True):
            assert u == v or u == pytest.approx(v, rel=1e-13)
        for u, v in zip(cx, px, strict=True):
            np.testing.assert_array_equal(u, v)
    c, _ = run_prepare(spectra._kernels.prepare, storage, b[7], s[7])  # 1-D
    p, _ = run_prepare(spectra.prepare_numpy, storage, b[7], s[7])
    assert c[:5] == p[:5]


@needs_kernels
def test_kernel_refuses_bad_buffers():
    prep = spectra._kernels.prepare
    b = np.zeros((4, 6), np.uint16)
    out = [np.empty(24) for _ in range(3)]
    bf = ("bfloat16", "bfloat16")
    with pytest.raises(ValueError, match="unknown storage dtype int8"):
        prep("int8", "bfloat16", b, b, *out)
    with pytest.raises(ValueError, match="unknown storage dtype int8"):
        prep("bfloat16", "int8", b, b, *out)
    with pytest.raises(ValueError, match="base block: 4-byte entries"):
        prep(*bf, b.astype(np.uint32), b, *out)
    with pytest.raises(ValueError, match="SFT block: 2-byte entries, the storage "
                       "dtype has 4"):
        prep("bfloat16", "float32", b, b, *out)
    with pytest.raises(ValueError, match="rows are not contiguous"):
        prep(*bf, b[:, ::2], b[:, ::2], *out)
    with pytest.raises(ValueError, match="base block is 4 x 6, SFT block 4 x 5"):
        prep(*bf, b, b[:, :5], *out)
    with pytest.raises(ValueError, match="delta output: needs 24 fp64 entries"):
        prep(*bf, b, b, out[0], out[1], np.empty(23))
    with pytest.raises(ValueError, match="3 dimensions"):
        prep(*bf, b.reshape(2, 2, 6), b.reshape(2, 2, 6), *out)
    with pytest.raises(BufferError):  # outputs must be writable
        prep(*bf, b, b, out[0], out[1], bytes(192))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32,
                                   torch.float64])
def test_reader_matches_safetensors(tmp_path, dtype):
    """Checkpoint.read_array / read against safetensors' load_file, every dtype,
    several tensors per file (so nonzero offsets), 1-D and 2-D."""
    gen = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": (torch.randn(shape, generator=gen) * 0.02).to(dtype)
               for i, shape in enumerate([(7, 5), (3,), (64, 33), (1, 1)])}
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    ckpt = resolve(str(folder))
    want = load_file(str(folder / "model.safetensors"))
    for name, t in want.items():
        arr, storage = ckpt.read_array(name)
        assert storage == spectra.storage_name(dtype)
        assert arr.shape == tuple(t.shape) and arr.dtype == spectra.ARRAY_DTYPES[storage]
        np.testing.assert_array_equal(to_f64(arr, storage), t.double().numpy())
        assert torch.equal(ckpt.read(name), t)


def test_reader_errors_name_file_and_tensor(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({"a": torch.zeros(4, 4, dtype=torch.int32),
               "b": torch.ones(256, 256, dtype=torch.bfloat16)},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    ckpt = resolve(str(folder))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor a is "
                       r"stored as I32; sftscope reads BF16, F16, F32, F64"):
        ckpt.read_array("a")
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-1000])  # shrunk after the scan
    with pytest.raises(CheckpointError, match=r"truncated in tensor b .*1000 bytes "
                       "early"):
        ckpt.read_array("b")


@pytest.mark.parametrize(("storage", "storage_s"),
                         [("bfloat16", "bfloat16"), ("float16", "float16"),
                          ("float32", "float32"), ("bfloat16", "float32"),
                          ("float32", "float16")])
@pytest.mark.parametrize("shape", [(120, 40), (30, 200)], ids=["tall", "wide"])
def test_torch_ops_path_matches_numpy(storage, storage_s, shape, monkeypatch):
    """The torch ops pass (compute.run's GPU path), run here on the CPU, against
    NumPy float64 SVD and the NumPy path, over several blocks; base and SFT in one
    storage dtype or in two."""
    monkeypatch.setattr(spectra, "BLOCK_ELEMS", 1500)
    b, s = random_pair(storage, shape, seed=4, specials=False, storage_sft=storage_s)
    b.reshape(-1)[:9] = 0
    s.reshape(-1)[:5] = 0
    if storage_s != "float32":  # -0 against +0: not a change
        s.reshape(-1).view(np.uint16)[5:9] = 0x8000
    tb, ts = as_tensor(b, storage), as_tensor(s, storage_s)
    rows_t = spectra._gram_spectra(tb, ts, (storage, storage_s),
                                   spectra._TorchOps(torch.device("cpu")))
    rows_n = spectra.array_spectra(b, s, storage, storage_s)
    vb, vs = to_f64(b, storage), to_f64(s, storage_s)
    for rt, rn, mat in zip(rows_t, rows_n, (vb, vs, vs - vb), strict=True):
        want = np.linalg.svd(mat, compute_uv=False)
        for r in (rt, rn):
            assert np.max(np.abs(r["singular_values"] - want)) < 1e-7 * want[0]
            assert r["n_zero"] == int(np.count_nonzero(mat == 0)), r["role"]
            assert r["frobenius_sq"] == pytest.approx(float(np.sum(mat**2)), rel=1e-12)
        assert rt["storage_dtype"] == rn["storage_dtype"]
    assert rows_t[2]["noise_sigma"] == pytest.approx(rows_n[2]["noise_sigma"], rel=1e-12)


@pytest.mark.parametrize("shape", [(120, 40), (30, 200)], ids=["tall", "wide"])
def test_lowrank_delta_against_numpy(shape, monkeypatch):
    """dW = left @ right (an adapter's) with W_sft = W_base + dW in fp64: spectra
    against NumPy's SVD, rank exactly r, no rounding noise; NumPy and torch paths."""
    monkeypatch.setattr(spectra, "BLOCK_ELEMS", 1500)
    gen = np.random.default_rng(9)
    b, _ = random_pair("bfloat16", shape, seed=9, specials=False)
    left = gen.normal(0, 1e-2, (shape[0], 3))
    right = gen.normal(0, 1e-2, (3, shape[1]))
    vb = to_f64(b, "bfloat16")
    d = left @ right
    tb = as_tensor(b, "bfloat16")
    factors = torch.from_numpy(left), torch.from_numpy(right)
    rows_n = spectra.array_spectra(b, b, "bfloat16", lowrank=(left, right))
    rows_c = spectra.tensor_spectra(tb, tb, device=torch.device("cpu"),
                                    lowrank=factors)
    # the torch ops pass (what a GPU runs) and the fp64 SVD reference method
    rows_t = spectra._gram_spectra(tb, tb, ("bfloat16", "bfloat16"),
                                   spectra._TorchOps(torch.device("cpu")), factors)
    rows_s = spectra.tensor_spectra(tb, tb, device=torch.device("cpu"),
                                    method="svd64", lowrank=factors)
    for rows in (rows_n, rows_c, rows_t, rows_s):
        for r, mat in zip(rows, (vb, vb + d, d), strict=True):
            want = np.linalg.svd(mat, compute_uv=False)
            assert np.max(np.abs(r["singular_values"] - want)) < 1e-7 * want[0]
        sv = rows[2]["singular_values"]
        assert np.all(sv[3:] < 1e-7 * sv[0]) and sv[2] > 1e-3 * sv[0]
        assert rows[2]["noise_sigma"] == 0.0 and rows[2]["n_zero"] == 0
        assert [r["storage_dtype"] for r in rows] == ["bfloat16", "float64", "float64"]


def test_torch_ops_path_nonfinite():
    b, s = random_pair("bfloat16", (30, 20), seed=5, specials=False)
    s.reshape(-1)[3] = 0x7FC0  # NaN
    tb, ts = as_tensor(b, "bfloat16"), as_tensor(s, "bfloat16")
    rows_t = spectra._gram_spectra(tb, ts, ("bfloat16", "bfloat16"),
                                   spectra._TorchOps(torch.device("cpu")))
    rows_n = spectra.array_spectra(b, s, "bfloat16")
    for rt, rn in zip(rows_t, rows_n, strict=True):
        assert (rt["n_nonfinite"], rt["n_zero"]) == (rn["n_nonfinite"], rn["n_zero"])
    assert [r["n_nonfinite"] for r in rows_n] == [0, 1, 1]


def test_array_spectra_refuses_the_wrong_layout():
    b = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="base: a bfloat16 array is uint16, not "
                       "float32"):
        spectra.array_spectra(b, b, "bfloat16")
    with pytest.raises(ValueError, match="unsupported storage dtype int8"):
        spectra.storage_name("int8")


def test_torch_build_detection(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util

    from compute.run import cli as run

    pkg = tmp_path / "torch"
    pkg.mkdir()
    spec = importlib.machinery.ModuleSpec("torch", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: spec if name == "torch" else real(name, *a))
    for text, gpu in [("cuda: Optional[str] = None\nhip: Optional[str] = None\n", False),
                      ("cuda = '12.4'\nhip = None\n", True),
                      ("cuda = None\nhip: Optional[str] = '6.2.4'\n", True),
                      ("not python (\n", True)]:
        (pkg / "version.py").write_text("from typing import Optional\n" + text)
        assert run.torch_build_has_gpu() is gpu, text
    (pkg / "version.py").unlink()
    assert run.torch_build_has_gpu() is True  # unknown: torch is asked


def test_cpu_run_does_not_import_torch(demo_pair, tmp_path):
    """compute.run on a CPU: spectra and vectors through NumPy, torch never loaded
    (its import is ~2 s of a 30 s run); its spectra equal NumPy's SVD of the
    weights as safetensors reads them."""
    code = ("import sys\nfrom compute.run.cli import main\n"
            f"rc = main(['--base', {str(demo_pair / 'base')!r}, '--sft', "
            f"{str(demo_pair / 'sft')!r}, '--name', 'x', '--no-load', "
            f"'--skip-behaviour', '--no-progress', '--device', 'cpu', '--out', "
            f"{str(tmp_path)!r}])\n"
            "print('torch loaded:', 'torch' in sys.modules, 'rc', rc)")
    proc = run_py("-c", code, cwd=ROOT)
    assert "torch loaded: False rc 0" in proc.stdout, proc.stdout + proc.stderr
    import pyarrow.parquet as pq

    from compute.plan.pair import pair_plan

    base, sft = resolve(str(demo_pair / "base")), resolve(str(demo_pair / "sft"))
    plan = pair_plan(base, sft)
    manifest = json.loads((tmp_path / "x" / "run.json").read_text())
    assert manifest["kinds"]["spectra"]["options"]["torch"] is None
    from tests.test_weights_pipeline import weights

    wb, ws = weights(demo_pair / "base"), weights(demo_pair / "sft")
    for i in (0, len(plan.matrices) - 1):
        got = pq.read_table(tmp_path / "x" / "spectra" / f"{i:05d}.parquet").to_pylist()
        name = plan.matrices[i]
        mats = {"base": wb[name], "sft": ws[name], "delta": ws[name] - wb[name]}
        assert [g["role"] for g in got] == list(mats)
        for g in got:
            mat = mats[g["role"]]
            want = np.linalg.svd(mat, compute_uv=False)
            assert g["tensor"] == name
            np.testing.assert_allclose(g["singular_values"], want, rtol=0,
                                       atol=1e-7 * want[0])
            assert g["n_zero"] == int(np.count_nonzero(mat == 0))
            assert g["storage_dtype"] == ("float64" if g["role"] == "delta"
                                          else "bfloat16")
