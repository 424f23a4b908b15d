"""Singular-value spectra of W_base, W_sft and dW = W_sft - W_base.

    rows = tensor_spectra(w_base, w_sft, device=torch.device("cpu"))  # 3 dicts

Default method `gram`: the eigenvalues of the fp64 Gram matrix of the short side,
G = X X^T with X (k, N), k <= N. sigma_i = sqrt(lambda_i) is accurate to about
sqrt(eps64) * s_1 ~ 1.5e-8 * s_1. Method `svd` is the reference: LAPACK `svdvals` in
fp32 (or fp64 with `svd64`).

How the gram method is fast (bench/spectra.py measures it; bench/README.md has the
figures):
- one pass over the pair, in blocks along the long side (<= BLOCK_ELEMS fp64 entries,
  so the 151936 x 896 embedding never has a full fp64 copy); each block is upcast once
  into reused buffers, dW's block is their difference in fp64 (exact), and the three
  Grams accumulate from the same blocks;
- on the CPU the Gram is a symmetric rank-k update (BLAS dsyrk: half the flops of a
  gemm) and the eigenvalues come from LAPACK dsytrd + dsterf (what dsyevd does for
  eigenvalues only), both from the OpenBLAS that NumPy loaded, called through ctypes
  on one triangle in place (_OpenBLAS); NumPy's matmul and eigvalsh are the fallback
  (same kernels, ~4% slower); OpenBLAS is faster than torch's MKL here; on a GPU
  both stay torch ops on the device;
- the zero counts, the noise level and the finiteness come out of the same blocks:
  no frexp/ldexp, no fp32 copies, no boolean masks of the whole matrix; dW's zeros
  are counted on the storage bits (2 bytes an entry, not 8). Non-finite
  entries make the trace of the Gram non-finite (the squares of finite fp16/bf16/fp32
  values cannot overflow in fp64), so they are counted only when there are some.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import math
import os
import threading
import time
from collections.abc import Iterator

import numpy as np
import torch

METHODS = ("gram", "svd", "svd64")
MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23,
                 torch.float64: 52}
MIN_NORMAL_EXP = {torch.bfloat16: -126, torch.float16: -14, torch.float32: -126,
                  torch.float64: -1022}
STORAGE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16",
                 torch.float32: "float32", torch.float64: "float64"}
# storage dtype -> (integer view, mask without the sign bit, mask of the exponent)
BITS = {torch.bfloat16: (torch.int16, 0x7FFF, 0x7F80),
        torch.float16: (torch.int16, 0x7FFF, 0x7C00),
        torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800000),
        torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}
BLOCK_ELEMS = 9 << 19  # fp64 entries per block (36 MiB): a 4864 x 896 MLP matrix
ROLES = ("base", "sft", "delta")
MAX_WORKERS = 8  # CPU worker threads in compute.run (one tensor pair each)

_local = threading.local()  # per-thread reusable buffers (compute.run uses threads)


def spectra_workers(device: torch.device, n_tasks: int) -> int:
    """Tensors computed at once: one per core on a CPU (<= MAX_WORKERS), 1 on a GPU.

    Without threadpoolctl the BLAS thread count cannot be pinned to one per worker,
    and oversubscribed BLAS threads spin: then one worker with threaded BLAS.
    """
    if device.type != "cpu":
        return 1
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return 1
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else (os.cpu_count() or 1))
    return max(1, min(cores, MAX_WORKERS, n_tasks))


class _OpenBLAS:
    """BLAS dsyrk and LAPACK dsytrd + dsterf of the OpenBLAS that NumPy loaded,
    called through ctypes (which releases the GIL; SciPy's wrappers hold it, so two
    worker threads would take turns).

    Against NumPy's matmul and eigvalsh, which run the same kernels: no mirrored
    copy of the Gram's triangle after syrk, no temporary product per block (beta = 1
    accumulates in place), no copy of the matrix and no norm pass before the
    reduction: ~4% of the CPU time of a tensor here. Matrices are column-major
    views: g.T of a C-ordered g."""

    COL_MAJOR, LOWER, NO_TRANS, TRANS = 102, 122, 111, 112

    def __init__(self, lib: ctypes.CDLL, prefix: str, suffix: str, int_t) -> None:
        p, i, d = ctypes.c_void_p, int_t, ctypes.c_double
        self.int_t = int_t
        self.syrk = getattr(lib, f"{prefix}cblas_dsyrk{suffix}")
        self.syrk.restype = None
        self.syrk.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i, i, d, p, i,
                              d, p, i]
        self.sytrd = getattr(lib, f"{prefix}LAPACKE_dsytrd_work{suffix}")
        self.sytrd.restype = i
        self.sytrd.argtypes = [ctypes.c_int, ctypes.c_char, i, p, i, p, p, p, p, i]
        self.sterf = getattr(lib, f"{prefix}LAPACKE_dsterf{suffix}")
        self.sterf.restype = i
        self.sterf.argtypes = [i, p, p]

    def syrk_lower(self, c: np.ndarray, a: np.ndarray, trans: bool, beta: float
                   ) -> None:
        """Lower triangle of c = a a^T (or a^T a with `trans`) + beta c; c (n, n)
        and a Fortran-ordered fp64."""
        n = c.shape[0]
        k = a.shape[0] if trans else a.shape[1]
        assert c.shape == (n, n) and a.shape[1 if trans else 0] == n, (c.shape, a.shape)
        assert all(m.flags.f_contiguous and m.dtype == np.float64 for m in (a, c))
        self.syrk(self.COL_MAJOR, self.LOWER, self.TRANS if trans else self.NO_TRANS,
                  n, k, 1.0, a.ctypes.data, max(1, a.shape[0]), beta, c.ctypes.data,
                  max(1, n))

    def eigvalsh_lower(self, a: np.ndarray) -> np.ndarray:
        """Ascending eigenvalues of the symmetric matrix in the lower triangle of the
        Fortran-ordered fp64 a (overwritten): tridiagonal reduction, root-free QR."""
        n = a.shape[0]
        assert a.shape == (n, n) and a.flags.f_contiguous and a.dtype == np.float64
        if n <= 1:
            return a.diagonal().copy()
        bufs = _local.__dict__.setdefault("lapack", {})
        if n not in bufs:
            d, e = np.empty(n), np.empty(n - 1)
            tau, query = np.empty(n - 1), np.empty(1)
            self.sytrd(self.COL_MAJOR, b"L", n, a.ctypes.data, n, d.ctypes.data,
                       e.ctypes.data, tau.ctypes.data, query.ctypes.data, -1)
            work = np.empty(max(int(query[0]), n))
            if len(bufs) > 4:  # bound what a thread keeps
                bufs.clear()
            bufs[n] = d, e, tau, work
        d, e, tau, work = bufs[n]
        info = self.sytrd(self.COL_MAJOR, b"L", n, a.ctypes.data, n, d.ctypes.data,
                          e.ctypes.data, tau.ctypes.data, work.ctypes.data, work.size)
        if info == 0:
            info = self.sterf(n, d.ctypes.data, e.ctypes.data)
        if info != 0:
            raise np.linalg.LinAlgError(f"eigenvalues did not converge (info {info})")
        return d.copy()


@functools.cache
def _openblas() -> _OpenBLAS | None:
    """NumPy's OpenBLAS (found by threadpoolctl) with dsyrk, dsytrd and dsterf, or
    None: then NumPy's matmul and eigvalsh (other BLAS builds, or no threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    own = os.path.dirname(os.path.abspath(np.__file__))  # numpy/.dylibs, numpy.libs
    libs = sorted((i for i in threadpool_info() if i.get("internal_api") == "openblas"),
                  key=lambda i: not i["filepath"].startswith((own + os.sep, own + ".")))
    for info in libs:
        try:
            lib = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for prefix, suffix in itertools.product(("scipy_", ""), ("64_", "_64", "")):
            get_config = getattr(lib, f"{prefix}openblas_get_config{suffix}", None)
            if get_config is None:
                continue
            get_config.restype = ctypes.c_char_p
            int_t = (ctypes.c_int64 if b"USE64BITINT" in (get_config() or b"")
                     else ctypes.c_int)
            try:
                return _OpenBLAS(lib, prefix, suffix, int_t)
            except AttributeError:  # a build without LAPACKE or CBLAS
                break
    return None


@contextlib.contextmanager
def worker_threads(workers: int) -> Iterator[None]:
    """Single-threaded BLAS and torch ops while `workers` > 1 threads share the cores."""
    if workers <= 1:
        yield
        return
    from threadpoolctl import threadpool_limits

    _openblas()  # found once, here, rather than by the first workers at once
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(torch_threads)


def _workspace(device: torch.device, n: int, k: int, int_dtype: torch.dtype
               ) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """This thread's reusable buffers: three flat fp64 of >= n entries, one flat
    integer of >= n, four (k, k) fp64 matrices: the three Grams (not zeroed: the
    first block writes them) and the next block's product, added to a Gram. Fresh
    large allocations cost page faults on every tensor; these are paid once."""
    cache = _local.__dict__.setdefault("ws", {})
    key = (device.type, device.index)
    ws = cache.get(key)
    if ws is None or ws["f64"][0].numel() < n:
        ws = {"f64": [torch.empty(n, dtype=torch.float64, device=device)
                      for _ in range(3)], "gram": {}}
        cache[key] = ws
    ints = _flat(device, int_dtype, n)
    grams = ws["gram"].get(k)
    if grams is None:
        grams = [torch.empty(k, k, dtype=torch.float64, device=device)
                 for _ in range(len(ROLES) + 1)]
        if len(ws["gram"]) > 4:  # bound what a thread keeps
            ws["gram"].clear()
        ws["gram"][k] = grams
    return ws["f64"], ints, grams


def _flat(device: torch.device, dtype: torch.dtype, n: int) -> torch.Tensor:
    """This thread's reusable flat buffer of `dtype` with >= n entries."""
    cache = _local.__dict__.setdefault("flat", {})
    key = (device.type, device.index, dtype)
    buf = cache.get(key)
    if buf is None or buf.numel() < n:
        buf = cache[key] = torch.empty(n, dtype=dtype, device=device)
    return buf


def _blocks(length: int, width: int) -> list[slice]:
    """Balanced slices of `length` such that a block holds <= BLOCK_ELEMS entries."""
    n_blocks = max(1, -(-length * width // BLOCK_ELEMS))
    step = -(-length // n_blocks)
    return [slice(i, min(i + step, length)) for i in range(0, length, step)]


def _block_elems(blocks: list[slice], width: int) -> int:
    return max(sl.stop - sl.start for sl in blocks) * width


def _view(buf: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return buf[:math.prod(shape)].view(shape)


def _block_source(w: torch.Tensor, sl: slice, tall: bool) -> torch.Tensor:
    return w[sl] if tall else w[:, sl]  # (r, k) tall, (k, c) wide (strided)


def _syrk_acc(g: torch.Tensor, x: torch.Tensor, tall: bool, first: bool,
              scratch: torch.Tensor) -> None:
    """g += x.T @ x (tall block, (r, k)) or x @ x.T (wide block, (k, c)); x contiguous.

    `first`: g is zero, write the product into it. On the CPU only the lower
    triangle of g.T (g's upper one) is sure to hold the Gram, and that is what
    _eigvalsh reads. NumPy's path: the product goes to `scratch` (k, k), then is
    added."""
    if x.device.type == "cpu" and (blas := _openblas()) is not None:
        # x.T is x in Fortran order: (k, r) for a tall block (g = x.T x.T^T); for a
        # wide one (c, k), and g = x.T^T x.T = x x^T
        blas.syrk_lower(g.numpy().T, x.numpy().T, trans=not tall,
                        beta=0.0 if first else 1.0)
        return
    if x.device.type == "cpu":
        xn, gn = x.numpy(), g.numpy()
        a, b = (xn.T, xn) if tall else (xn, xn.T)
        # NumPy calls BLAS syrk when one operand is the transpose of the other: half
        # the flops of a gemm. NaN/Inf are not errors here (the trace reports them).
        with np.errstate(invalid="ignore", over="ignore"):
            if first:
                np.matmul(a, b, out=gn)
            else:
                sn = scratch.numpy()
                np.matmul(a, b, out=sn)
                np.add(gn, sn, out=gn)
    else:
        a, b = (x.T, x) if tall else (x, x.T)
        if first:
            torch.matmul(a, b, out=g)
        else:
            g.addmm_(a, b)


def _eigvalsh(g: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of a symmetric fp64 matrix, on its device; on the CPU
    from the lower triangle of g.T (g is overwritten on the OpenBLAS path)."""
    if g.device.type == "cpu" and (blas := _openblas()) is not None:
        return torch.from_numpy(blas.eigvalsh_lower(g.numpy().T))
    if g.device.type == "cpu":  # OpenBLAS dsyevd: 1.6x faster than torch's here
        # g is symmetric: its transpose is the same matrix in Fortran order, which
        # NumPy hands to LAPACK with a contiguous copy instead of a strided one
        return torch.from_numpy(np.linalg.eigvalsh(g.numpy().T))
    return torch.linalg.eigvalsh(g)


def _count_nonzero(x: torch.Tensor) -> int:
    if x.device.type == "cpu":
        return int(np.count_nonzero(x.numpy()))
    return int(torch.count_nonzero(x))


def _bits_stats(src: torch.Tensor, tmp: torch.Tensor, p64: torch.Tensor
                ) -> tuple[int, int, float]:
    """(nonzero entries, subnormal entries, sum of p^2) of a block in its storage
    dtype, from its bits: p = 2^floor(log2|x|) for normal x, 0 for zeros and
    subnormals; the rounding error of x is ulp = p * 2^-mantissa bits (normal) or
    2^(emin - mantissa bits) (subnormal). Buffers: integer `tmp`, fp64 `p64`."""
    int_dtype, nonsign, exp_mask = BITS[src.dtype]
    z = _view(tmp, src.shape)
    torch.bitwise_and(src.view(int_dtype), nonsign, out=z)  # |x| as bits
    nonzero = _count_nonzero(z)
    z.bitwise_and_(exp_mask)  # keep the exponent: |x| rounded down to a power of 2
    normal = _count_nonzero(z)
    p = _view(p64, src.shape)
    p.copy_(z.view(src.dtype))
    if p.device.type == "cpu":
        pn = p.numpy().reshape(-1)
        pow2_sq = float(np.dot(pn, pn))
    else:
        pow2_sq = float(torch.dot(p.view(-1), p.view(-1)))
    return nonzero, nonzero - normal, pow2_sq


def _count_changed(src_b: torch.Tensor, src_s: torch.Tensor, flags: torch.Tensor,
                   tmp: torch.Tensor, signed_zeros: bool) -> int:
    """Entries of a block where base and SFT differ in value (dW != 0), from the
    storage bits (a quarter of the memory traffic of counting dW in fp64): the bits
    differ, less the pairs +0/-0 when both blocks hold zeros (`signed_zeros`).
    Exact for finite values; a block with NaN/Inf makes dW's trace non-finite and
    the caller recounts it in fp64. Buffers: boolean `flags`, integer `tmp`."""
    int_dtype, nonsign, _ = BITS[src_b.dtype]
    bb, sb = src_b.view(int_dtype), src_s.view(int_dtype)
    if bb.device.type != "cpu":
        changed = bb != sb
        if signed_zeros:
            changed &= ((bb | sb) & nonsign) != 0
        return int(torch.count_nonzero(changed))
    bn, sn = bb.numpy(), sb.numpy()
    f = _view(flags, src_b.shape).numpy()
    np.not_equal(bn, sn, out=f)
    changed = int(np.count_nonzero(f))
    if signed_zeros:  # both +-0 (no magnitude bit in either) with different bits
        t = _view(tmp, src_b.shape).numpy()
        np.bitwise_or(bn, sn, out=t)
        np.bitwise_and(t, nonsign, out=t)
        zero_pair = _view(flags, src_b.shape).numpy()
        np.logical_and(f, t == 0, out=zero_pair)
        changed -= int(np.count_nonzero(zero_pair))
    return changed


def _noise_from_sums(pow2_sq: float, subnormal: int, numel: int,
                     storage: torch.dtype) -> float:
    """sigma from the summed _bits_stats of base and SFT."""
    ulp_sq = (pow2_sq + subnormal * 4.0 ** MIN_NORMAL_EXP[storage]) \
        * 4.0 ** -MANTISSA_BITS[storage]
    return math.sqrt(ulp_sq / (12 * numel))


def gram_singular_values(a: torch.Tensor) -> tuple[np.ndarray, float]:
    """(descending singular values, sum of squares) of a 2-D float tensor."""
    m, n = a.shape
    tall = m >= n
    k, long = (n, m) if tall else (m, n)
    blocks = _blocks(long, k)
    bufs, _, grams = _workspace(a.device, _block_elems(blocks, k), k, torch.int16)
    for j, sl in enumerate(blocks):
        src = _block_source(a, sl, tall)
        x = _view(bufs[0], src.shape)
        x.copy_(src)
        _syrk_acc(grams[0], x, tall, first=j == 0, scratch=grams[-1])
    return _spectrum(grams[0])


def _spectrum(g: torch.Tensor) -> tuple[np.ndarray, float]:
    frob_sq = float(torch.diagonal(g).sum())
    eig = _eigvalsh(g)  # ascending
    s = torch.sqrt(torch.clamp(eig, min=0.0)).flip(0)
    return s.cpu().numpy(), frob_sq


def svd_singular_values(a: torch.Tensor, dtype=torch.float32) -> tuple[np.ndarray, float]:
    x = a.to(dtype)
    s = torch.linalg.svdvals(x)
    return s.to(torch.float64).cpu().numpy(), float((x.to(torch.float64) ** 2).sum())


def singular_values(a: torch.Tensor, method: str = "gram") -> tuple[np.ndarray, float]:
    if method == "gram":
        return gram_singular_values(a)
    if method == "svd":
        return svd_singular_values(a, torch.float32)
    if method == "svd64":
        return svd_singular_values(a, torch.float64)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def ulp(w: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    """Unit in the last place of each entry of `w` (values exact in `storage`), fp32.

    For |x| in [2^e, 2^(e+1)) the spacing is 2^(e - mantissa bits), and the constant
    2^(emin - mantissa bits) below the smallest normal 2^emin (np.spacing's values);
    0 for x == 0.
    """
    _, exp = torch.frexp(w.float())  # x = m * 2^exp, m in [0.5, 1)
    exp = torch.clamp_min(exp - 1, MIN_NORMAL_EXP[storage])
    u = torch.ldexp(torch.ones_like(w, dtype=torch.float32),
                    (exp - MANTISSA_BITS[storage]).to(torch.int32))
    return torch.where(w == 0, torch.zeros_like(u), u)


def noise_sigma(w_base: torch.Tensor, w_sft: torch.Tensor, storage: torch.dtype) -> float:
    """Rounding-noise std per entry of dW: sqrt(mean((ulp_b^2 + ulp_s^2) / 12)).

    Inputs hold values exact in `storage` (in that dtype or a wider one)."""
    wb = w_base.reshape(w_base.shape[0], -1).to(storage)
    ws = w_sft.reshape(wb.shape).to(storage)
    m, n = wb.shape
    blocks = _blocks(m, n)
    bufs, ints, _ = _workspace(wb.device, _block_elems(blocks, n), 1, BITS[storage][0])
    pow2_sq, subnormal = 0.0, 0
    for sl in blocks:
        for w in (wb, ws):
            _, sub, sq = _bits_stats(w[sl], ints, bufs[0])
            pow2_sq += sq
            subnormal += sub
    return _noise_from_sums(pow2_sq, subnormal, m * n, storage)


def tensor_spectra(
    w_base: torch.Tensor, w_sft: torch.Tensor, *, device: torch.device,
    method: str = "gram",
) -> list[dict]:
    """One row (dict) per role: base, sft, delta. Inputs in their storage dtype."""
    assert w_base.shape == w_sft.shape and w_base.ndim == 2, (w_base.shape, w_sft.shape)
    assert w_base.dtype == w_sft.dtype, (w_base.dtype, w_sft.dtype)
    if method == "gram":
        return _gram_spectra(w_base.to(device), w_sft.to(device))
    storage = w_base.dtype
    b = w_base.to(device=device, dtype=torch.float32)  # (m, n)
    s = w_sft.to(device=device, dtype=torch.float32)  # (m, n)
    d = s - b  # the reference, as the seed computed it
    rows = []
    for role, mat in zip(ROLES, (b, s, d), strict=True):
        t0 = time.perf_counter()
        n_nonfinite = int((~torch.isfinite(mat)).sum())
        if n_nonfinite:
            sv, frob = np.array([], dtype=np.float64), float("nan")
        else:
            sv, frob = singular_values(mat, method)
        rows.append(_row(role, sv, frob, int((mat == 0).sum()), n_nonfinite,
                         time.perf_counter() - t0))
    if rows[2]["n_nonfinite"] == 0:
        rows[2]["noise_sigma"] = noise_sigma(b, s, storage)
    return rows


def _row(role, sv, frob, n_zero, n_nonfinite, seconds) -> dict:
    return {"role": role, "singular_values": sv, "frobenius_sq": frob,
            "n_zero": n_zero, "n_nonfinite": n_nonfinite, "noise_sigma": None,
            "seconds": seconds}


def _gram_spectra(wb: torch.Tensor, ws: torch.Tensor) -> list[dict]:
    """All three roles from one blocked pass over the pair (see the module doc)."""
    t_start = time.perf_counter()
    storage, device = wb.dtype, wb.device
    m, n = wb.shape
    tall = m >= n
    k, long = (n, m) if tall else (m, n)
    blocks = _blocks(long, k)
    bufs, ints, grams = _workspace(device, _block_elems(blocks, k), k, BITS[storage][0])
    flags = _flat(device, torch.bool, _block_elems(blocks, k))
    nonzero = [0, 0, 0]
    pow2_sq, subnormal = 0.0, 0
    role_s = [0.0, 0.0, 0.0]  # seconds in each role's own Gram and eigensolve
    for j, sl in enumerate(blocks):
        src_b, src_s = _block_source(wb, sl, tall), _block_source(ws, sl, tall)
        block_nz = []
        for i, src in enumerate((src_b, src_s)):  # bufs[2] is free until dW
            nz, sub, sq = _bits_stats(src, ints, bufs[2])
            block_nz.append(nz)
            nonzero[i] += nz
            subnormal += sub
            pow2_sq += sq
        nonzero[2] += _count_changed(src_b, src_s, flags, ints,
                                     signed_zeros=max(block_nz) < src_b.numel())
        xb, xs, xd = (_view(buf, src_b.shape) for buf in bufs)  # (r, k) | (k, c)
        xb.copy_(src_b)
        xs.copy_(src_s)
        torch.sub(xs, xb, out=xd)  # exact in fp64
        for i, x in enumerate((xb, xs, xd)):
            t0 = time.perf_counter()
            _syrk_acc(grams[i], x, tall, first=j == 0, scratch=grams[-1])
            role_s[i] += time.perf_counter() - t0
    numel = m * n
    rows = []
    for i, (role, g) in enumerate(zip(ROLES, grams[:len(ROLES)], strict=True)):
        t0 = time.perf_counter()
        frob_sq = float(torch.diagonal(g).sum())
        if math.isfinite(frob_sq):  # squares of finite fp16/bf16/fp32 cannot overflow
            sv, frob = _spectrum(g)
            n_nonfinite = 0
        else:
            sv, frob = np.array([], dtype=np.float64), float("nan")
            n_nonfinite, n_zero = _count_nonfinite(wb, ws, i)
            nonzero[i] = numel - n_zero  # dW: inf - inf, NaN - NaN are not zeros
        role_s[i] += time.perf_counter() - t0
        rows.append(_row(role, sv, frob, numel - nonzero[i], n_nonfinite, role_s[i]))
    shared = (time.perf_counter() - t_start - sum(role_s)) / 3  # reading bits, upcasts
    for r in rows:
        r["seconds"] += shared
    if rows[0]["n_nonfinite"] == 0 and rows[1]["n_nonfinite"] == 0:
        rows[2]["noise_sigma"] = _noise_from_sums(pow2_sq, subnormal, numel, storage)
    return rows


def _count_nonfinite(wb: torch.Tensor, ws: torch.Tensor, role: int
                     ) -> tuple[int, int]:
    """(NaN/Inf entries, zero entries) of base, sft or dW, in fp64 (rare: only when
    the trace says there are non-finite entries)."""
    nonfinite = zeros = 0
    for sl in _blocks(wb.shape[0], wb.shape[1]):
        b, s = wb[sl].to(torch.float64), ws[sl].to(torch.float64)
        x = (b, s, s - b)[role]
        nonfinite += int((~torch.isfinite(x)).sum())
        zeros += int((x == 0).sum())
    return nonfinite, zeros


def vector_change(w_base: torch.Tensor, w_sft: torch.Tensor) -> dict:
    b, s = w_base.double(), w_sft.double()
    d = s - b
    finite = torch.isfinite(b).all() and torch.isfinite(s).all()
    return {
        "numel": b.numel(),
        "base_norm": float(b.norm()) if finite else None,
        "sft_norm": float(s.norm()) if finite else None,
        "delta_norm": float(d.norm()) if finite else None,
        "n_zero": int((d == 0).sum()),
        "n_nonfinite": int((~torch.isfinite(b)).sum() + (~torch.isfinite(s)).sum()),
    }
