"""Singular-value spectra of W_base, W_sft and dW = W_sft - W_base.

    rows = array_spectra(w_base, w_sft, "bfloat16")   # NumPy arrays, CPU: 3 dicts
    rows = tensor_spectra(w_base, w_sft, device=torch.device("cuda"))  # torch tensors

Default method `gram`: the eigenvalues of the fp64 Gram matrix of the short side,
G = X X^T with X (k, N), k <= N. sigma_i = sqrt(lambda_i) is accurate to about
sqrt(eps64) * s_1 ~ 1.5e-8 * s_1. Method `svd` is the reference: LAPACK `svdvals` in
fp32 (or fp64 with `svd64`).

Arrays in a storage dtype: bfloat16 has no NumPy dtype, so a bfloat16 array holds
its bits (uint16); float16/32/64 are NumPy's (compute.io.checkpoints reads them so).

How the gram method is fast (bench/spectra.py measures it; bench/README.md has the
figures):
- one pass over the pair, in blocks along the long side (<= BLOCK_ELEMS fp64 entries,
  so the 151936 x 896 embedding never has a full fp64 copy); each block is upcast once
  into reused buffers, dW's block is their difference in fp64 (exact), and the three
  Grams accumulate from the same blocks;
- on the CPU all of it is NumPy and C, without torch (whose import alone is ~2 s of a
  30 s run): per block one pass of compute/linalg/_kernels.c does the upcasts, dW and the
  counts below (NumPy does the same in ~15 passes when the extension is not built);
  the Gram is a symmetric rank-k update (BLAS dsyrk: half the flops of a gemm) and
  the eigenvalues come from LAPACK dsytrd + dsterf (what dsyevd does for eigenvalues
  only), both from the OpenBLAS that NumPy loaded, called through ctypes on one
  triangle in place (_OpenBLAS); NumPy's matmul and eigvalsh are the fallback (same
  kernels, ~4% slower); on a GPU everything stays torch ops on the device;
- the zero counts, the noise level and the finiteness come out of the same blocks,
  from the storage bits: no frexp/ldexp, no boolean masks of the whole matrix.
  Non-finite entries make the trace of the Gram non-finite (the squares of finite
  fp16/bf16/fp32 values cannot overflow in fp64), so they are counted only when
  there are some.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import itertools
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

try:
    from compute.linalg import _kernels
except ImportError:  # not built (a source checkout without `pip install -e .`)
    _kernels = None

if TYPE_CHECKING:
    import torch

METHODS = ("gram", "svd", "svd64")
MANTISSA_BITS = {"bfloat16": 7, "float16": 10, "float32": 23, "float64": 52}
MIN_NORMAL_EXP = {"bfloat16": -126, "float16": -14, "float32": -126, "float64": -1022}
# storage dtype -> (unsigned integer of its bits, mask without the sign bit, mask of
# the exponent)
BITS = {"bfloat16": (np.uint16, 0x7FFF, 0x7F80),
        "float16": (np.uint16, 0x7FFF, 0x7C00),
        "float32": (np.uint32, 0x7FFFFFFF, 0x7F800000),
        "float64": (np.uint64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}
# the NumPy dtype of an array in each storage dtype (bfloat16: its bits)
ARRAY_DTYPES = {"bfloat16": np.uint16, "float16": np.float16, "float32": np.float32,
                "float64": np.float64}
BLOCK_ELEMS = 9 << 19  # fp64 entries per block (36 MiB): a 4864 x 896 MLP matrix
ROLES = ("base", "sft", "delta")
MAX_WORKERS = 8  # CPU worker threads in compute.run (one tensor pair each)

_local = threading.local()  # per-thread reusable buffers (compute.run uses threads)


def storage_name(dtype) -> str:
    """"bfloat16", "float16", "float32" or "float64" of a torch or NumPy dtype (or a
    name); other dtypes (integers, fp8) are refused."""
    name = str(dtype).removeprefix("torch.")
    if name not in MANTISSA_BITS:
        raise ValueError(f"unsupported storage dtype {dtype}: spectra need bfloat16, "
                         "float16, float32 or float64 weights")
    return name


def spectra_workers(device, n_tasks: int) -> int:
    """Tensors computed at once: one per core on a CPU (<= MAX_WORKERS), 1 on a GPU.
    `device`: a torch.device or its type ("cpu", "cuda").

    Without threadpoolctl the BLAS thread count cannot be pinned to one per worker,
    and oversubscribed BLAS threads spin: then one worker with threaded BLAS.
    """
    if getattr(device, "type", device) != "cpu":
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
        self.lib, self.prefix, self.suffix = lib, prefix, suffix  # for more LAPACK
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
    """Single-threaded BLAS (and torch ops, when torch is loaded) while `workers` > 1
    threads share the cores."""
    if workers <= 1:
        yield
        return
    from threadpoolctl import threadpool_limits

    _openblas()  # found once, here, rather than by the first workers at once
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        if torch:
            torch.set_num_threads(torch_threads)


def _blocks(length: int, width: int) -> list[slice]:
    """Balanced slices of `length` such that a block holds <= BLOCK_ELEMS entries."""
    n_blocks = max(1, -(-length * width // BLOCK_ELEMS))
    step = -(-length // n_blocks)
    return [slice(i, min(i + step, length)) for i in range(0, length, step)]


def _block_elems(blocks: list[slice], width: int) -> int:
    return max(sl.stop - sl.start for sl in blocks) * width


def _block_source(w, sl: slice, tall: bool):
    return w[sl] if tall else w[:, sl]  # (r, k) tall, (k, c) wide (strided)


def _from_bits(bits: np.ndarray, storage: str) -> np.ndarray:
    """The values of storage bits (the unsigned integers of BITS), in a NumPy float."""
    if storage == "bfloat16":  # the upper half of an fp32
        return (bits.astype(np.uint32) << 16).view(np.float32)
    return bits.view(ARRAY_DTYPES[storage])


Prepared = tuple[int, int, int, int, int, float, float]


def prepare_numpy(storage_b: str, storage_s: str, src_b: np.ndarray,
                  src_s: np.ndarray, xb: np.ndarray, xs: np.ndarray, xd: np.ndarray
                  ) -> Prepared:
    """What compute/linalg/_kernels.c's `prepare` does, in NumPy: xb, xs = the blocks (base
    in `storage_b`, SFT in `storage_s`) in fp64, xd = xs - xb; returns (nonzero in
    base, in SFT, entries where the values differ (dW != 0 for finite entries: the
    bits differ, but not +0 against -0), subnormal entries of base, of SFT, and per
    side the sum of p^2 with p = |x| rounded down to a power of two, from the
    exponent bits). The fallback without the extension, and the reference the tests
    hold the extension to."""
    nonzero, subnormal, pow2_sq, bits = [], [], [], []
    for storage, src, x in ((storage_b, src_b, xb), (storage_s, src_s, xs)):
        uint, nonsign, exp_mask = BITS[storage]
        b = src.view(uint)
        nz = int(np.count_nonzero(b & uint(nonsign)))
        exps = b & uint(exp_mask)
        p = _from_bits(exps, storage).astype(np.float64).reshape(-1)
        nonzero.append(nz)
        subnormal.append(nz - int(np.count_nonzero(exps)))
        with np.errstate(over="ignore"):  # fp64's largest exponents: inf, as in C
            pow2_sq.append(float(np.dot(p, p)))
        x[...] = _from_bits(b, storage)
        bits.append(b)
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, reported by the trace
        np.subtract(xs, xb, out=xd)
    if storage_b == storage_s:
        bb, sb = bits
        nonsign = BITS[storage_b][0](BITS[storage_b][1])
        changed = int(np.count_nonzero((bb != sb) & ((bb | sb) & nonsign != 0)))
    else:
        changed = int(np.count_nonzero(xb != xs))
    return (nonzero[0], nonzero[1], changed, subnormal[0], subnormal[1], pow2_sq[0],
            pow2_sq[1])


def _workspace(key, n: int, k: int, empty) -> tuple[list, list]:
    """This thread's reusable buffers for `key` (NumPy, or a torch device), made by
    `empty(shape)` (fp64): three flat ones of >= n entries and four (k, k) matrices:
    the three Grams (not zeroed: the first block writes them) and a scratch product.
    Fresh large allocations cost page faults on every tensor; these are paid once."""
    ws = _local.__dict__.setdefault("ws", {}).setdefault(key, {"flat": [], "gram": {}})
    if not ws["flat"] or len(ws["flat"][0]) < n:
        ws["flat"] = [empty(n) for _ in range(3)]
    grams = ws["gram"].get(k)
    if grams is None:
        if len(ws["gram"]) > 4:  # bound what a thread keeps
            ws["gram"].clear()
        grams = ws["gram"][k] = [empty((k, k)) for _ in range(len(ROLES) + 1)]
    return ws["flat"], grams


class _NumPyOps:
    """The blocked pass on the CPU: NumPy arrays, _kernels.prepare, OpenBLAS."""

    @staticmethod
    def workspace(n: int, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return _workspace("numpy", n, k, np.empty)

    @staticmethod
    def view(buf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return buf[:math.prod(shape)].reshape(shape)

    @staticmethod
    def prepare(storage_b, storage_s, src_b, src_s, xb, xs, xd) -> Prepared:
        if _kernels is not None:
            return _kernels.prepare(storage_b, storage_s, src_b, src_s, xb, xs, xd)
        return prepare_numpy(storage_b, storage_s, src_b, src_s, xb, xs, xd)

    @staticmethod
    def add_lowrank(xb, xs, xd, left, right) -> tuple[int, int]:
        """xd = left @ right, xs = xb + xd (an adapter's block); (nonzero entries of
        xs, of xd)."""
        np.matmul(left, right, out=xd)
        np.add(xb, xd, out=xs)
        return int(np.count_nonzero(xs)), int(np.count_nonzero(xd))

    @staticmethod
    def copy(dst: np.ndarray, src: np.ndarray) -> None:
        dst[...] = src

    @staticmethod
    def syrk_acc(g: np.ndarray, x: np.ndarray, tall: bool, first: bool,
                 scratch: np.ndarray) -> None:
        """g += x.T @ x (tall block, (r, k)) or x @ x.T (wide block, (k, c)); x
        C-contiguous. `first`: g is zero, write the product into it. On the
        OpenBLAS path only the lower triangle of g.T (g's upper one) is sure to hold
        the Gram, and that is what eigvalsh reads. NumPy's path: the product goes to
        `scratch` (k, k), then is added."""
        if (blas := _openblas()) is not None:
            # x.T is x in Fortran order: (k, r) for a tall block (g = x.T x.T^T); for
            # a wide one (c, k), and g = x.T^T x.T = x x^T
            blas.syrk_lower(g.T, x.T, trans=not tall, beta=0.0 if first else 1.0)
            return
        a, b = (x.T, x) if tall else (x, x.T)
        # NumPy calls BLAS syrk when one operand is the transpose of the other: half
        # the flops of a gemm. NaN/Inf are not errors here (the trace reports them).
        with np.errstate(invalid="ignore", over="ignore"):
            if first:
                np.matmul(a, b, out=g)
            else:
                np.matmul(a, b, out=scratch)
                np.add(g, scratch, out=g)

    @staticmethod
    def trace(g: np.ndarray) -> float:
        return float(np.trace(g))

    @staticmethod
    def eigvalsh(g: np.ndarray) -> np.ndarray:
        """Ascending eigenvalues of the Gram (overwritten on the OpenBLAS path)."""
        if (blas := _openblas()) is not None:
            return blas.eigvalsh_lower(g.T)
        # g is symmetric: its transpose is the same matrix in Fortran order, which
        # NumPy hands to LAPACK with a contiguous copy instead of a strided one
        return np.linalg.eigvalsh(g.T)

    @staticmethod
    def count_nonfinite(wb: np.ndarray, ws: np.ndarray, role: int,
                        storages: tuple[str, str], lowrank=None) -> tuple[int, int]:
        """(NaN/Inf entries, zero entries) of base, sft or dW, in fp64 (rare: only
        when the trace says there are non-finite entries)."""
        nonfinite = zeros = 0
        for sl in _blocks(wb.shape[0], wb.shape[1]):
            b = _from_bits(wb[sl].view(BITS[storages[0]][0]), storages[0]
                           ).astype(np.float64)
            if lowrank is None:
                s = _from_bits(ws[sl].view(BITS[storages[1]][0]), storages[1]
                               ).astype(np.float64)
            else:
                s = b + lowrank[0][sl] @ lowrank[1]
            with np.errstate(invalid="ignore"):
                x = (b, s, s - b)[role]
            nonfinite += int(np.count_nonzero(~np.isfinite(x)))
            zeros += int(np.count_nonzero(x == 0))
        return nonfinite, zeros


_NUMPY = _NumPyOps()


class _TorchOps:
    """The blocked pass in torch ops on `device` (compute.run uses it on GPUs)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def workspace(self, n: int, k: int) -> tuple[list, list]:
        import torch

        return _workspace(self.device, n, k, functools.partial(
            torch.empty, dtype=torch.float64, device=self.device))

    @staticmethod
    def view(buf, shape):
        return buf[:math.prod(shape)].view(shape)

    @staticmethod
    def prepare(storage_b, storage_s, src_b, src_s, xb, xs, xd) -> Prepared:
        """prepare_numpy's results, in torch ops (signed integer views of the bits:
        the masks leave the sign bit out, so they fit)."""
        import torch

        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}
        nonzero, subnormal, pow2_sq, bits = [], [], [], []
        for storage, src, x in ((storage_b, src_b, xb), (storage_s, src_s, xs)):
            _, nonsign, exp_mask = BITS[storage]
            b = src.view(ints[src.element_size()])
            nz = int(torch.count_nonzero(b & nonsign))
            exps = b & exp_mask
            x.copy_(exps.view(src.dtype))  # p, in x until the block is copied there
            nonzero.append(nz)
            subnormal.append(nz - int(torch.count_nonzero(exps)))
            pow2_sq.append(float(torch.dot(x.reshape(-1), x.reshape(-1))))
            x.copy_(src)
            bits.append(b)
        torch.sub(xs, xb, out=xd)
        if storage_b == storage_s:
            bb, sb = bits
            nonsign = BITS[storage_b][1]
            changed = int(torch.count_nonzero((bb != sb) & (((bb | sb) & nonsign) != 0)))
        else:
            changed = int(torch.count_nonzero(xb != xs))
        return (nonzero[0], nonzero[1], changed, subnormal[0], subnormal[1],
                pow2_sq[0], pow2_sq[1])

    @staticmethod
    def add_lowrank(xb, xs, xd, left, right) -> tuple[int, int]:
        import torch

        torch.matmul(left, right, out=xd)
        torch.add(xb, xd, out=xs)
        return int(torch.count_nonzero(xs)), int(torch.count_nonzero(xd))

    @staticmethod
    def copy(dst, src) -> None:
        dst.copy_(src)

    @staticmethod
    def syrk_acc(g, x, tall: bool, first: bool, scratch) -> None:
        import torch

        a, b = (x.T, x) if tall else (x, x.T)
        if first:
            torch.matmul(a, b, out=g)
        else:
            g.addmm_(a, b)

    @staticmethod
    def trace(g) -> float:
        return float(g.diagonal().sum())

    @staticmethod
    def eigvalsh(g) -> np.ndarray:
        import torch

        return torch.linalg.eigvalsh(g).cpu().numpy()

    @staticmethod
    def count_nonfinite(wb, ws, role: int, storages: tuple[str, str], lowrank=None
                        ) -> tuple[int, int]:
        import torch

        nonfinite = zeros = 0
        for sl in _blocks(wb.shape[0], wb.shape[1]):
            b = wb[sl].to(torch.float64)
            s = (ws[sl].to(torch.float64) if lowrank is None
                 else b + lowrank[0][sl] @ lowrank[1])
            x = (b, s, s - b)[role]
            nonfinite += int((~torch.isfinite(x)).sum())
            zeros += int((x == 0).sum())
        return nonfinite, zeros


def _noise_from_sums(pow2_sq: tuple[float, float], subnormal: tuple[int, int],
                     numel: int, storages: tuple[str, str]) -> float:
    """sigma from the summed prepare() counts: sqrt(mean((ulp_b^2 + ulp_s^2) / 12)),
    each side's ulp in its own storage dtype (a float32 side adds 2^-30 of a
    bfloat16 one's share)."""
    ulp_sq = sum((sq + sub * 4.0 ** MIN_NORMAL_EXP[st]) * 4.0 ** -MANTISSA_BITS[st]
                 for sq, sub, st in zip(pow2_sq, subnormal, storages, strict=True))
    return math.sqrt(ulp_sq / (12 * numel))


def _row(role, sv, frob, n_zero, n_nonfinite, seconds) -> dict:
    return {"role": role, "singular_values": sv, "frobenius_sq": frob,
            "n_zero": n_zero, "n_nonfinite": n_nonfinite, "noise_sigma": None,
            "seconds": seconds}


def _spectrum(g, ops) -> np.ndarray:
    """Descending singular values from a Gram (its eigenvalues, clamped at 0)."""
    eig = ops.eigvalsh(g)  # ascending
    return np.sqrt(np.maximum(eig, 0.0))[::-1].copy()


def _gram_spectra(wb, ws, storages: tuple[str, str], ops, lowrank=None, eig=None
                  ) -> list[dict]:
    """All three roles from one blocked pass over the pair (see the module doc).

    `lowrank` (left (m, r), right (r, n), fp64 arrays of `ops`' kind): dW is
    left @ right (an adapter's, scale folded in) and W_sft = W_base + dW in fp64;
    `ws` is then unused, and dW carries no storage rounding (noise_sigma 0).
    `eig(i, g)`, when given, replaces the eigenvalue step of role i's Gram g (whose
    upper triangle holds it) and returns the descending singular values
    (compute.linalg.directions keeps the eigenvectors there)."""
    t_start = time.perf_counter()
    sums = _gram_pass(wb, ws, storages, ops, lowrank)
    return _gram_rows(sums, wb.shape[0] * wb.shape[1], storages, ops, t_start,
                      lowrank is not None, eig,
                      lambda i: ops.count_nonfinite(wb, ws, i, storages, lowrank))


@dataclasses.dataclass
class _Sums:
    """What one blocked pass adds up: the three Grams (upper triangles; a thread's
    workspace, reused by its next pass), the prepare() counts, each role's seconds."""
    grams: list
    nonzero: list[int]
    subnormal: list[int]
    pow2_sq: list[float]
    role_s: list[float]


def _gram_pass(wb, ws, storages: tuple[str, str], ops, lowrank=None) -> _Sums:
    m, n = wb.shape
    tall = m >= n
    k, long = (n, m) if tall else (m, n)
    blocks = _blocks(long, k)
    bufs, grams = ops.workspace(_block_elems(blocks, k), k)
    nonzero = [0, 0, 0]
    pow2_sq, subnormal = [0.0, 0.0], [0, 0]
    role_s = [0.0, 0.0, 0.0]  # seconds in each role's own Gram and eigensolve
    pair = storages if lowrank is None else (storages[0], storages[0])
    for j, sl in enumerate(blocks):
        src_b = _block_source(wb, sl, tall)
        src_s = _block_source(ws, sl, tall) if lowrank is None else src_b
        xb, xs, xd = (ops.view(buf, src_b.shape) for buf in bufs)  # (r, k) | (k, c)
        nz_b, nz_s, changed, sub_b, sub_s, sq_b, sq_s = ops.prepare(
            *pair, src_b, src_s, xb, xs, xd)
        if lowrank is not None:  # (r, rank) @ (rank, k) | (k, rank) @ (rank, c)
            left, right = lowrank
            nz_s, changed = ops.add_lowrank(
                xb, xs, xd, *((left[sl], right) if tall else (left, right[:, sl])))
        nonzero[0] += nz_b
        nonzero[1] += nz_s
        nonzero[2] += changed
        subnormal[0] += sub_b
        subnormal[1] += sub_s
        pow2_sq[0] += sq_b
        pow2_sq[1] += sq_s
        for i, x in enumerate((xb, xs, xd)):
            t0 = time.perf_counter()
            ops.syrk_acc(grams[i], x, tall, first=j == 0, scratch=grams[-1])
            role_s[i] += time.perf_counter() - t0
    return _Sums(grams[:len(ROLES)], nonzero, subnormal, pow2_sq, role_s)


def _gram_rows(sums: _Sums, numel: int, storages: tuple[str, str], ops,
               t_start: float, adapter: bool, eig, nonfinite) -> list[dict]:
    """The three role rows from a pass's sums: eigenvalues, norms, counts, noise.
    `nonfinite(i)`: (NaN/Inf entries, zero entries) of role i, asked for only when
    its Gram's trace is not finite."""
    nonzero, role_s = list(sums.nonzero), list(sums.role_s)
    rows = []
    for i, (role, g) in enumerate(zip(ROLES, sums.grams, strict=True)):
        t0 = time.perf_counter()
        frob_sq = ops.trace(g)
        if math.isfinite(frob_sq):  # squares of finite fp16/bf16/fp32 cannot overflow
            sv, n_nonfinite = (_spectrum(g, ops) if eig is None else eig(i, g)), 0
        else:
            sv, frob_sq = np.array([], dtype=np.float64), float("nan")
            n_nonfinite, n_zero = nonfinite(i)
            nonzero[i] = numel - n_zero  # dW: inf - inf, NaN - NaN are not zeros
        role_s[i] += time.perf_counter() - t0
        rows.append(_row(role, sv, frob_sq, numel - nonzero[i], n_nonfinite,
                         role_s[i]))
    shared = (time.perf_counter() - t_start - sum(role_s)) / 3  # reading bits, upcasts
    for r, dtype in zip(rows, _role_storage(storages, adapter), strict=True):
        r["seconds"] += shared
        r["storage_dtype"] = dtype
    if adapter:
        rows[2]["noise_sigma"] = 0.0
    elif rows[0]["n_nonfinite"] == 0 and rows[1]["n_nonfinite"] == 0:
        rows[2]["noise_sigma"] = _noise_from_sums(tuple(sums.pow2_sq),
                                                  tuple(sums.subnormal), numel,
                                                  storages)
    return rows


def gram_piece(w_base: np.ndarray, w_sft: np.ndarray, storage: str,
               storage_sft: str) -> dict[str, np.ndarray]:
    """One piece of a tall matrix split by rows (compute.plan.shards): its three partial
    Grams (upper triangles, (3, k, k) fp64) and counts, as arrays to save; the
    pieces' sums give the whole matrix's spectra (merge_pieces). CPU, NumPy."""
    _check_pair(w_base, w_sft)
    assert w_base.shape[0] >= w_base.shape[1], "pieces split the long side (rows)"
    storages = (storage, storage_sft)
    t_start = time.perf_counter()
    sums = _gram_pass(w_base, w_sft, storages, _NUMPY)
    grams = np.stack([np.triu(g) for g in sums.grams])  # copies of the workspace
    # per role: NaN/Inf entries and zeros, counted only where the trace says so
    counts = [_NUMPY.count_nonfinite(w_base, w_sft, i, storages)
              if not math.isfinite(float(np.trace(grams[i]))) else (0, -1)
              for i in range(len(ROLES))]
    return {"grams": grams, "nonzero": np.array(sums.nonzero, dtype=np.int64),
            "subnormal": np.array(sums.subnormal, dtype=np.int64),
            "pow2_sq": np.array(sums.pow2_sq), "counts": np.array(counts, np.int64),
            "numel": np.array(w_base.size, dtype=np.int64),
            "role_s": np.array(sums.role_s) + (time.perf_counter() - t_start
                                               - sum(sums.role_s)) / 3}


def merge_pieces(pieces: list[dict], storages: tuple[str, str]) -> list[dict]:
    """The three role rows of a matrix from its pieces (gram_piece, in row order):
    the Grams and counts summed, then one eigensolve per role, as array_spectra
    does for the whole matrix (the sums' rounding differs from one pass's at the
    level of fp64 rounding, ~1e-16 of the Gram's entries)."""
    t_start = time.perf_counter()
    grams = pieces[0]["grams"].copy()
    for p in pieces[1:]:
        grams += p["grams"]
    total = {key: sum(p[key] for p in pieces)
             for key in ("nonzero", "subnormal", "pow2_sq", "role_s")}
    numel = int(sum(int(p["numel"]) for p in pieces))

    def nonfinite(i: int) -> tuple[int, int]:
        """Summed over the pieces; a piece whose part is finite has no NaN/Inf and
        its zeros are the entries it did not count as nonzero."""
        out = [0, 0]
        for p in pieces:
            n_nf, n_zero = (int(c) for c in p["counts"][i])
            out[0] += n_nf
            out[1] += n_zero if n_zero >= 0 else int(p["numel"]) - int(p["nonzero"][i])
        return out[0], out[1]

    sums = _Sums(list(grams), [int(x) for x in total["nonzero"]],
                 [int(x) for x in total["subnormal"]],
                 [float(x) for x in total["pow2_sq"]],
                 [float(x) for x in total["role_s"]])
    return _gram_rows(sums, numel, storages, _NUMPY,
                      t_start - float(sum(total["role_s"])), False, None, nonfinite)


def _role_storage(storages: tuple[str, str], adapter: bool) -> tuple[str, str, str]:
    """Each role row's storage_dtype: base's and SFT's own (an adapter-made W_sft is
    formed in fp64), dW formed exactly in fp64."""
    return storages[0], "float64" if adapter else storages[1], "float64"


def _check_pair(w_base, w_sft) -> None:
    assert w_base.shape == w_sft.shape and w_base.ndim == 2, (w_base.shape, w_sft.shape)


def array_spectra(w_base: np.ndarray, w_sft: np.ndarray, storage: str,
                  storage_sft: str | None = None, *, lowrank=None) -> list[dict]:
    """One row (dict) per role (base, sft, delta) by the gram method, on the CPU,
    without torch. Arrays as ARRAY_DTYPES holds them: the base in `storage`, the
    SFT in `storage_sft` (default: the same). `lowrank` = (left, right): dW is
    left @ right (an adapter's; fp64 arrays, scale folded in) and `w_sft` is not
    read (pass w_base)."""
    _check_pair(w_base, w_sft)
    storages = (storage, storage_sft or storage)
    for side, arr, st in (("base", w_base, storages[0]), ("SFT", w_sft, storages[1])):
        if arr.dtype != ARRAY_DTYPES[st]:
            raise ValueError(f"{side}: a {st} array is {ARRAY_DTYPES[st].__name__}, "
                             f"not {arr.dtype}")
    if lowrank is not None:
        left, right = (np.ascontiguousarray(f, dtype=np.float64) for f in lowrank)
        assert left.shape[0] == w_base.shape[0] and right.shape[1] == w_base.shape[1]
        lowrank = left, right
    return _gram_spectra(w_base, w_sft, storages, _NUMPY, lowrank)


def as_array(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """(NumPy array in the ARRAY_DTYPES layout, storage dtype) of a CPU tensor; no
    copy."""
    import torch

    storage = storage_name(t.dtype)
    if storage == "bfloat16":
        return t.view(torch.int16).numpy().view(np.uint16), storage
    return t.numpy(), storage


def tensor_spectra(
    w_base: torch.Tensor, w_sft: torch.Tensor, *, device: torch.device,
    method: str = "gram", lowrank: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[dict]:
    """One row (dict) per role: base, sft, delta. Inputs each in its own storage
    dtype; the gram method on a CPU is array_spectra's (`lowrank` as there, torch
    tensors)."""
    import torch

    _check_pair(w_base, w_sft)
    storages = storage_name(w_base.dtype), storage_name(w_sft.dtype)
    if lowrank is not None:
        lowrank = tuple(f.to(device=device, dtype=torch.float64).contiguous()
                        for f in lowrank)
    if method == "gram":
        if device.type == "cpu":
            (b, _), (s, _) = as_array(w_base.cpu()), as_array(w_sft.cpu())
            return _gram_spectra(b, s, storages, _NUMPY, lowrank and tuple(
                f.numpy() for f in lowrank))
        return _gram_spectra(w_base.to(device), w_sft.to(device), storages,
                             _TorchOps(device), lowrank)
    b = w_base.to(device=device, dtype=torch.float32)  # (m, n)
    if lowrank is None:
        s = w_sft.to(device=device, dtype=torch.float32)  # (m, n)
        d = s - b  # the reference, as the seed computed it
    else:
        d = (lowrank[0] @ lowrank[1]).float()
        s = b + d
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
    for r, dtype in zip(rows, _role_storage(storages, lowrank is not None),
                        strict=True):
        r["storage_dtype"] = dtype
    if lowrank is not None:
        rows[2]["noise_sigma"] = 0.0
    elif rows[2]["n_nonfinite"] == 0:
        rows[2]["noise_sigma"] = noise_sigma(b, s, *storages)
    return rows


def gram_singular_values(a: torch.Tensor | np.ndarray) -> tuple[np.ndarray, float]:
    """(descending singular values, sum of squares) of a 2-D float tensor, or of a
    NumPy float array (then without importing torch)."""
    m, n = a.shape
    tall = m >= n
    k, long = (n, m) if tall else (m, n)
    blocks = _blocks(long, k)
    if isinstance(a, np.ndarray):
        ops = _NUMPY
        a = a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)
    elif a.device.type == "cpu":
        import torch

        ops = _NUMPY
        a = (a if a.dtype in (torch.float32, torch.float64) else a.double()).numpy()
    else:
        ops = _TorchOps(a.device)
    bufs, grams = ops.workspace(_block_elems(blocks, k), k)
    for j, sl in enumerate(blocks):
        src = _block_source(a, sl, tall)
        x = ops.view(bufs[0], src.shape)
        ops.copy(x, src)
        ops.syrk_acc(grams[0], x, tall, first=j == 0, scratch=grams[-1])
    frob_sq = ops.trace(grams[0])
    return _spectrum(grams[0], ops), frob_sq


def svd_singular_values(a: torch.Tensor, dtype=None) -> tuple[np.ndarray, float]:
    """(LAPACK's singular values of `a` in `dtype`, default fp32, as fp64;
    ||a||_F^2)."""
    import torch

    x = a.to(dtype or torch.float32)
    s = torch.linalg.svdvals(x)
    return s.to(torch.float64).cpu().numpy(), float((x.to(torch.float64) ** 2).sum())


def singular_values(a: torch.Tensor, method: str = "gram") -> tuple[np.ndarray, float]:
    """(singular values of `a`, ||a||_F^2) by `method`: gram (eigenvalues of the
    fp64 Gram matrix), svd (fp32 svdvals) or svd64 (fp64)."""
    import torch

    if method == "gram":
        return gram_singular_values(a)
    if method == "svd":
        return svd_singular_values(a, torch.float32)
    if method == "svd64":
        return svd_singular_values(a, torch.float64)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def ulp(w: torch.Tensor, storage) -> torch.Tensor:
    """Unit in the last place of each entry of `w` (values exact in `storage`), fp32.

    For |x| in [2^e, 2^(e+1)) the spacing is 2^(e - mantissa bits), and the constant
    2^(emin - mantissa bits) below the smallest normal 2^emin (np.spacing's values);
    0 for x == 0.
    """
    import torch

    storage = storage_name(storage)
    _, exp = torch.frexp(w.float())  # x = m * 2^exp, m in [0.5, 1)
    exp = torch.clamp_min(exp - 1, MIN_NORMAL_EXP[storage])
    u = torch.ldexp(torch.ones_like(w, dtype=torch.float32),
                    (exp - MANTISSA_BITS[storage]).to(torch.int32))
    return torch.where(w == 0, torch.zeros_like(u), u)


def noise_sigma(w_base: torch.Tensor, w_sft: torch.Tensor, storage,
                storage_sft=None) -> float:
    """Rounding-noise std per entry of dW: sqrt(mean((ulp_b^2 + ulp_s^2) / 12)), the
    base's ulp in `storage`, the SFT's in `storage_sft` (default: the same).

    Inputs hold values exact in their storage dtype (in it or a wider one)."""
    import torch

    names = storage_name(storage), storage_name(storage_sft or storage)
    wb = w_base.reshape(w_base.shape[0], -1).to(getattr(torch, names[0]))
    ws = w_sft.reshape(wb.shape).to(getattr(torch, names[1]))
    if wb.device.type == "cpu":
        ops, (wb, _), (ws, _) = _NUMPY, as_array(wb), as_array(ws)
    else:
        ops = _TorchOps(wb.device)
    m, n = wb.shape
    blocks = _blocks(m, n)
    bufs, _ = ops.workspace(_block_elems(blocks, n), 1)
    pow2_sq, subnormal = [0.0, 0.0], [0, 0]
    for sl in blocks:
        xb, xs, xd = (ops.view(buf, wb[sl].shape) for buf in bufs)
        *_, sub_b, sub_s, sq_b, sq_s = ops.prepare(*names, wb[sl], ws[sl], xb, xs, xd)
        pow2_sq = [pow2_sq[0] + sq_b, pow2_sq[1] + sq_s]
        subnormal = [subnormal[0] + sub_b, subnormal[1] + sub_s]
    return _noise_from_sums(tuple(pow2_sq), tuple(subnormal), m * n, names)


def to_float64(arr: np.ndarray, storage: str) -> np.ndarray:
    """The values of an array in the ARRAY_DTYPES layout of `storage`, in fp64."""
    return _from_bits(arr.view(BITS[storage][0]), storage).astype(np.float64)


def vector_change(w_base: np.ndarray, w_sft: np.ndarray, storage: str,
                  storage_sft: str | None = None) -> dict:
    """Norms of base, SFT and dW of a 1-D tensor (arrays as ARRAY_DTYPES holds them:
    the base in `storage`, the SFT in `storage_sft`, default the same), and the zero
    and non-finite entry counts."""
    b, s = to_float64(w_base, storage), to_float64(w_sft, storage_sft or storage)
    with np.errstate(invalid="ignore"):
        d = s - b
    finite = bool(np.isfinite(b).all() and np.isfinite(s).all())
    return {
        "numel": int(b.size),
        "base_norm": float(np.linalg.norm(b)) if finite else None,
        "sft_norm": float(np.linalg.norm(s)) if finite else None,
        "delta_norm": float(np.linalg.norm(d)) if finite else None,
        "n_zero": int(np.count_nonzero(d == 0)),
        "n_nonfinite": int(np.count_nonzero(~np.isfinite(b))
                           + np.count_nonzero(~np.isfinite(s))),
    }
