"""Singular vectors of W_base, W_sft and dW, and what they say: new directions or old?

    rows, found = array_directions(w_base, w_sft, "bfloat16", k=32)  # CPU, NumPy
    rows, found = tensor_directions(w_base, w_sft, device=cuda, k=32)  # torch
    labels = token_labels(directions, unembedding, final_norm)      # logit lens

`rows` are compute.linalg.spectra's three spectra rows (the same numbers), `found` a
`Directions` (None when a matrix has NaN/Inf): the top-k left and right singular
vectors of each role and the measures below. compute.run calls this per matrix with
`--vectors K` (default DEFAULT_VECTORS; 0: spectra only) and writes the vectors to
Parquet beside the run's other files, the measures to the raw.direction_* tables.

How, from the Gram the spectra already form (no second Gram, no SVD):
- the eigenvectors of the short side's fp64 Gram are that side's singular vectors
  (top-k by LAPACK dsyevr's subset for W_sft and dW, the top max(k, 256) for W_base;
  on the CPU all of W_base's when min(m, n) <= FULL_BASIS_MAX, measured in
  bench/README.md; on a GPU always, torch.linalg.eigh);
- the long side's come from one more blocked pass over the pair: u_j = X v_j / s_j;
  the same pass accumulates the products the measures need, so memory stays at a few
  blocks plus (long side x k) vectors.

Measures (side: 'left' = rows, the output space of an (out, in) weight):
- overlap: share of ||dW||_F^2 inside W_base's top-r left and right singular
  subspaces, r in OVERLAP_RANKS, next to r / dim, what a random r-dimensional
  subspace holds on average;
- principal angles: cosines between the top-r subspaces of dW and of W_base
  (singular values of B_r^T D_r), r in ANGLE_RANKS up to k;
- intruders (Shuttleworth et al. 2024): for each of W_sft's top-k left singular
  vectors u_j, max_i |<u_j, u_i(W_base)>| over all of W_base's (thin) left singular
  vectors; with the same number for a direction drawn uniformly within the space
  W_base spans (null_max_cos), the null; overlap's chance level is r over that
  span's dimension too (a flag in the marts where r or k reaches it). On the long side of a
  tall matrix, <u_j, u_i(W_base)> = v_i(W_base)^T (W_base^T u_j) / s_i, so W_base's
  left vectors are never formed;
- row changes: ||dW[t, :]|| of embed_tokens and lm_head (token t's row).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import zlib
from typing import TYPE_CHECKING

import numpy as np

from compute.linalg import spectra

if TYPE_CHECKING:
    import torch

DEFAULT_VECTORS = 32
FULL_BASIS_MAX = 2048  # CPU: all of W_base's singular vectors up to this short side
OVERLAP_RANKS = (1, 4, 16, 64, 256)
ANGLE_RANKS = (1, 4, 16, 64)
TOKEN_DIRECTIONS = 8  # dW's top directions labelled with tokens per matrix
TOKENS_PER_POLE = 10
ROW_CHANGE_TOKENS = 50
# modules whose dW writes into the residual stream: the side in the hidden space
RESIDUAL_SIDE = {"o_proj": "left", "down_proj": "left", "embed_tokens": "right"}
ROW_TOKEN_MODULES = ("embed_tokens", "lm_head")
_TINY = 1e-13  # singular values below this x s_1 have no defined long-side vector


@dataclasses.dataclass
class Directions:
    """What one matrix's pass found. vectors[role][side] = (values (k,), vectors
    (dim, k)) with role in base/sft/delta and side left/right; sign: each pair's
    short-side vector has its largest entry positive."""

    k: int
    full_basis: bool
    vectors: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    overlap: list[dict]  # side, r, share, random_share
    angles: list[dict]  # side, r, cosines
    intruders: list[dict]  # j, singular_value, max_cos, null_max_cos
    row_changes: list[dict]  # token_id, score (||dW row||), rank


def _is_torch(x) -> bool:
    return not isinstance(x, np.ndarray)


def _np(x) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


class _Eigen:
    """The `eig` step of spectra._gram_spectra that keeps eigenvectors: role i's
    descending singular values and the matching short-side vectors (k x want)."""

    def __init__(self, k: int, full_basis: bool) -> None:
        self.k, self.full_basis = k, full_basis
        self.values: dict[int, np.ndarray] = {}
        self.vectors: dict[int, object] = {}
        self.energy = None  # ||dW v_i||^2 for W_base's short-side vectors v_i

    def want(self, i: int, n: int) -> int:
        if i == 0:
            return n if self.full_basis else min(n, max(self.k, OVERLAP_RANKS[-1]))
        return min(n, self.k)

    def __call__(self, i: int, g) -> np.ndarray:
        n, want = g.shape[0], self.want(i, g.shape[0])
        if _is_torch(g):
            import torch

            if i == 2:  # v_i^T G_dW v_i, from dW's Gram (base's came first)
                vb = self.vectors[0][:, :OVERLAP_RANKS[-1]]
                self.energy = _np(((g @ vb) * vb).sum(0))
            w, v = torch.linalg.eigh(g)  # ascending; the Gram is whole on torch
            w = _np(w)
            vecs = v[:, n - want:].flip(1)
        else:
            tri = _tridiagonal() if want < n and g.flags.c_contiguous else None
            sym = None
            if tri is None or i == 2:
                sym = np.triu(g)  # the upper triangle holds the Gram on every path
                sym += np.triu(g, 1).T
            if i == 2:
                vb = self.vectors[0][:, :OVERLAP_RANKS[-1]]
                self.energy = ((sym @ vb) * vb).sum(0)
            if want == n:
                w, v = np.linalg.eigh(sym)
            elif tri is not None:  # every value and the top vectors, one reduction
                w, v = tri(g.T, want)  # g.T: g's upper triangle as a lower one
            else:
                import scipy.linalg

                sv = spectra._spectrum(g, spectra._NUMPY)  # all values, as spectra
                _, v = scipy.linalg.eigh(sym, subset_by_index=[n - want, n - 1],
                                         driver="evr", overwrite_a=True,
                                         check_finite=False)
                w = None
            vecs = v[:, ::-1][:, :want]
        if w is not None:
            sv = np.sqrt(np.maximum(w, 0.0))[::-1].copy()
        self.values[i], self.vectors[i] = sv, vecs
        return sv


class _Tridiagonal:
    """All eigenvalues and the top eigenvectors of a symmetric matrix from one
    tridiagonal reduction, through the OpenBLAS that compute.linalg.spectra calls: dsytrd,
    then dsterf (every eigenvalue, as the spectra), dstemr (the top `want` vectors of
    the tridiagonal) and dormtr (back to the matrix's basis). Against dsyevr's
    subset plus the spectra's eigenvalues: one reduction instead of two."""

    COL_MAJOR = 102

    def __init__(self, blas) -> None:
        p, i, d, c = ctypes.c_void_p, blas.int_t, ctypes.c_double, ctypes.c_char
        self.blas, self.int_t = blas, i
        self.stemr = getattr(blas.lib, f"{blas.prefix}LAPACKE_dstemr{blas.suffix}")
        self.stemr.restype = i
        self.stemr.argtypes = [ctypes.c_int, c, c, i, p, p, d, d, i, i, p, p, p, i, i,
                               p, p]
        self.ormtr = getattr(blas.lib, f"{blas.prefix}LAPACKE_dormtr{blas.suffix}")
        self.ormtr.restype = i
        self.ormtr.argtypes = [ctypes.c_int, c, c, c, i, i, p, i, p, p, i]

    def __call__(self, a: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        """(ascending eigenvalues, (n, want) eigenvectors of the top `want`,
        ascending) of the Fortran-ordered a's lower triangle (a is overwritten)."""
        blas, n = self.blas, a.shape[0]
        assert a.flags.f_contiguous and a.dtype == np.float64 and 0 < want <= n
        d, e, tau, query = np.empty(n), np.zeros(n), np.empty(max(n - 1, 1)), np.empty(1)
        blas.sytrd(self.COL_MAJOR, b"L", n, a.ctypes.data, n, d.ctypes.data,
                   e.ctypes.data, tau.ctypes.data, query.ctypes.data, -1)
        work = np.empty(max(int(query[0]), n))
        info = blas.sytrd(self.COL_MAJOR, b"L", n, a.ctypes.data, n, d.ctypes.data,
                          e.ctypes.data, tau.ctypes.data, work.ctypes.data, work.size)
        values, off = d.copy(), e[:max(n - 1, 0)].copy()
        if info == 0:
            info = blas.sterf(n, values.ctypes.data, off.ctypes.data)
        z = np.empty((want, n)).T  # (n, want), Fortran order
        found, tryrac = self.int_t(0), self.int_t(1)
        isuppz = np.empty(2 * want, dtype=np.int64 if self.int_t is ctypes.c_int64
                          else np.int32)
        w = np.empty(n)
        if info == 0:
            info = self.stemr(self.COL_MAJOR, b"V", b"I", n, d.ctypes.data,
                              e.ctypes.data, 0.0, 0.0, n - want + 1, n,
                              ctypes.byref(found), w.ctypes.data, z.ctypes.data, n,
                              want, isuppz.ctypes.data, ctypes.byref(tryrac))
        if info == 0 and found.value != want:
            info = -1
        if info == 0 and n > 1:
            info = self.ormtr(self.COL_MAJOR, b"L", b"L", b"N", n, want,
                              a.ctypes.data, n, tau.ctypes.data, z.ctypes.data, n)
        if info != 0:
            raise np.linalg.LinAlgError(f"eigenvectors did not converge (info {info})")
        return values, z


def _tridiagonal() -> _Tridiagonal | None:
    """On spectra's OpenBLAS path (None: NumPy's and SciPy's LAPACK)."""
    blas = spectra._openblas()
    return None if blas is None else _tridiagonal_of(blas)


@functools.cache
def _tridiagonal_of(blas) -> _Tridiagonal | None:
    try:
        return _Tridiagonal(blas)
    except AttributeError:  # a build without these LAPACKE functions
        return None


def null_max_cos(rank: int, k: int, seed: int) -> np.ndarray:
    """The intruder null within the space W_base spans: for k directions drawn
    uniformly on the unit sphere of that rank-dimensional span (q = U_b g, so
    <q, u_i(W_base)> = g_i), max_i |g_i|, (k,). Drawn in the span, not in the whole
    long side: there a random direction is nearly orthogonal to all of W_base's
    rank directions and every one is an 'intruder' (the embedding's 2048 rows
    against the 128 dimensions its base spans)."""
    g = np.random.default_rng(seed).standard_normal((rank, k))
    g /= np.linalg.norm(g, axis=0)
    return np.minimum(np.abs(g).max(0), 1.0)


def _inverse(s: np.ndarray) -> np.ndarray:
    out = np.zeros_like(s)
    ok = s > (s[0] if s.size else 0.0) * _TINY
    out[ok] = 1.0 / s[ok]
    return out


def _cosines(c: np.ndarray) -> np.ndarray:
    """Descending cosines of the principal angles from a (r, r) cross product."""
    return np.clip(np.linalg.svd(c, compute_uv=False), 0.0, 1.0)


def gram_directions(wb, ws, storages: tuple[str, str], ops, *, k: int,
                    full_basis: bool, lowrank=None, transposed: bool = False,
                    row_changes: bool = False, seed: int = 0,
                    long_rank: int = OVERLAP_RANKS[-1]
                    ) -> tuple[list[dict], Directions | None]:
    """spectra._gram_spectra's rows and, from the same Grams and one more blocked
    pass, the Directions of the pair (arrays of `ops`' kind, as there).
    `transposed`: the matrix is stored [in, out], so its rows are the right side.
    `long_rank`: the overlap on the long side goes up to this r (its cost in the
    pass is ~4 m n r flops; the short side's comes from dW's Gram)."""
    eig = _Eigen(k, full_basis)
    rows = spectra._gram_spectra(wb, ws, storages, ops, lowrank, eig=eig)
    if any(r["n_nonfinite"] for r in rows):
        return rows, None
    m, n = wb.shape
    tall = m >= n
    short, long = (n, m) if tall else (m, n)
    kk = min(k, short)
    s = [eig.values[i] for i in range(3)]
    inv = [_inverse(v) for v in s]
    sv = [eig.vectors[i] for i in range(3)]  # short-side vectors (short, want)
    rb = sv[0].shape[1]  # W_base's short-side vectors held (>= kk)
    rl = min(rb, max(kk, long_rank))  # W_base's long-side vectors formed
    to_ops, empty = _allocators(sv[0])
    inv_o = [to_ops(v[:sv[i].shape[1]]) for i, v in enumerate(inv)]
    vb_l = sv[0][:, :rl]
    # intruders on the rows' side (the left one, unless stored transposed)
    rows_left = not transposed
    intr_long = tall == rows_left  # that side is the long one
    lv = [empty((long, kk)) for _ in range(3)]  # long-side vectors, top kk
    z_long = empty((rl, short))  # W_base's top-rl long vectors^T dW
    a_long = empty((kk, kk))  # W_base^T dW top-kk long vectors, cross product
    y = empty((short, kk)) if full_basis and intr_long else None
    row_sq = np.zeros(m) if row_changes else None
    blocks = spectra._blocks(long, short)
    bufs, _ = ops.workspace(spectra._block_elems(blocks, short), short)
    pair = storages if lowrank is None else (storages[0], storages[0])
    for j, sl in enumerate(blocks):
        xb, xs, xd = _block(ops, bufs, wb, ws, sl, tall, pair, lowrank)
        tb, ts, td = (x if tall else x.T for x in (xb, xs, xd))  # (rows of long, short)
        lb = (tb @ vb_l) * inv_o[0][:rl]  # (r, rl): W_base's long vectors here
        ls = (ts @ sv[1][:, :kk]) * inv_o[1][:kk]
        ld = (td @ sv[2][:, :kk]) * inv_o[2][:kk]
        for dst, src in zip(lv, (lb, ls, ld), strict=True):
            dst[sl] = src[:, :kk]
        _accumulate(j == 0, ((z_long, lb.T @ td), (a_long, lb[:, :kk].T @ ld)))
        if y is not None:
            _accumulate(j == 0, ((y, tb.T @ ls),))
        if row_sq is not None:  # dW's squared row norms
            row_sq[sl if tall else slice(None)] += _np((xd ** 2).sum(1))
    frob_d = rows[2]["frobenius_sq"]
    s_vec = [_np(v) for v in sv]
    l_vec = [_np(v) for v in lv]
    side_long, side_short = ("left", "right") if intr_long else ("right", "left")
    dims = {"left": m if rows_left else n, "right": n if rows_left else m}
    # the dimension W_base spans (its numerical rank; the short side where not all
    # of its values are known): chance levels are taken within it
    rank_b = int((s[0] > s[0][0] * _TINY).sum()) if full_basis and s[0].size else short
    rank_b = max(rank_b, 1)
    vectors = _signed_vectors(s, s_vec, l_vec, kk, (side_short, side_long))
    overlap, angles = [], []
    if frob_d > 0:
        overlap, angles = _overlap_and_angles(
            {side_short: np.cumsum(eig.energy),
             side_long: np.cumsum((_np(z_long) ** 2).sum(1))},
            {side_short: s_vec[0][:, :kk].T @ s_vec[2][:, :kk],
             side_long: _np(a_long)}, frob_d,
            {side: min(d, rank_b) for side, d in dims.items()}, kk)
    intruders = []
    if full_basis:
        if intr_long:  # <u_j, u_i(W_base)> = v_i^T (W_base^T u_j) / s_i
            c = s_vec[0].T @ _np(y) * inv[0][:, None]
        else:
            c = s_vec[0].T @ s_vec[1][:, :kk]
        intruders = _intruders(c, null_max_cos(rank_b, kk, seed), s[1], kk, rank_b)
    changes = [] if row_sq is None else _row_changes(row_sq)
    return rows, Directions(kk, full_basis, vectors, overlap, angles, intruders,
                            changes)


def _allocators(like):
    """(to `like`'s kind: a NumPy array as is, or a torch tensor on its device;
    an empty array of a shape, of `like`'s kind, dtype and device)."""
    if not _is_torch(like):
        return (lambda a: a), (lambda shape: np.empty(shape))
    import torch

    return ((lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(like.device)),
            (lambda shape: torch.empty(shape, dtype=like.dtype, device=like.device)))


def _block(ops, bufs, wb, ws, sl, tall: bool, pair: tuple[str, str], lowrank):
    """Block `sl` of the long side of W_base, W_sft and dW in `bufs` (rounded to
    working precision as spectra's pass does, an adapter's product added)."""
    src_b = spectra._block_source(wb, sl, tall)
    src_s = spectra._block_source(ws, sl, tall) if lowrank is None else src_b
    xb, xs, xd = (ops.view(buf, src_b.shape) for buf in bufs)  # (r, k) | (k, c)
    ops.prepare(*pair, src_b, src_s, xb, xs, xd)
    if lowrank is not None:
        left, right = lowrank
        ops.add_lowrank(xb, xs, xd, *((left[sl], right) if tall
                                      else (left, right[:, sl])))
    return xb, xs, xd


def _accumulate(first: bool, pairs) -> None:
    """acc = prod on the first block, acc += prod on the next ones."""
    for acc, prod in pairs:
        if first:
            acc[...] = prod
        else:
            acc += prod


def _signed_vectors(s, s_vec, l_vec, kk: int, sides: tuple[str, str]
                    ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{role: {side: (top-kk singular values, vectors)}}, signed so that each
    pair's short-side vector has its largest entry positive."""
    side_short, side_long = sides
    vectors: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for i, role in enumerate(spectra.ROLES):
        sh, lo = s_vec[i][:, :kk].copy(), l_vec[i].copy()
        flip = np.sign(sh[np.abs(sh).argmax(0), np.arange(kk)])
        flip[flip == 0] = 1.0
        sh *= flip
        lo *= flip
        vectors[role] = {side_short: (s[i][:kk].copy(), sh),
                         side_long: (s[i][:kk].copy(), lo)}
    return vectors


def _overlap_and_angles(cum: dict, cross: dict, frob_d: float, spans: dict,
                        kk: int) -> tuple[list[dict], list[dict]]:
    """Per side: the share of ||dW||_F^2 in W_base's top-r subspace (`cum`: its
    running sums) against a random subspace's r / span (`spans`: the dimension
    W_base spans on that side), for OVERLAP_RANKS; and the
    principal-angle cosines between W_base's and dW's top-r subspaces (`cross`:
    their vectors' cross products), for ANGLE_RANKS."""
    overlap, angles = [], []
    for side, c in cum.items():
        for r in OVERLAP_RANKS:
            if r <= c.size:
                overlap.append({"side": side, "r": r,
                                "share": float(min(c[r - 1] / frob_d, 1.0)),
                                "random_share": min(r / spans[side], 1.0),
                                "span_dim": spans[side]})
    for side, c in cross.items():
        for r in ANGLE_RANKS:
            if r <= kk:
                angles.append({"side": side, "r": r,
                               "cosines": _cosines(c[:r, :r]).tolist()})
    return overlap, angles


def _intruders(c: np.ndarray, best0: np.ndarray, s_sft, kk: int,
               null_dim: int) -> list[dict]:
    """W_sft's top-kk vectors' largest |cosine| with any of W_base's (`c`), and
    the null's (`best0`: null_max_cos of random directions in the `null_dim`
    dimensions W_base spans)."""
    best = np.minimum(np.abs(c).max(0), 1.0)
    return [{"j": j + 1, "singular_value": float(s_sft[j]),
             "max_cos": float(best[j]), "null_max_cos": float(best0[j]),
             "null_dim": null_dim}
            for j in range(kk)]


def _row_changes(row_sq: np.ndarray) -> list[dict]:
    """The ROW_CHANGE_TOKENS rows of dW with the largest norms (token ids)."""
    top = np.argsort(-row_sq, kind="stable")[:ROW_CHANGE_TOKENS]
    return [{"token_id": int(t), "score": float(np.sqrt(row_sq[t])), "rank": r + 1}
            for r, t in enumerate(top)]


def _check(storages, w_base, w_sft) -> None:
    for side, arr, st in (("base", w_base, storages[0]), ("SFT", w_sft, storages[1])):
        if arr.dtype != spectra.ARRAY_DTYPES[st]:
            raise ValueError(f"{side}: a {st} array is "
                             f"{spectra.ARRAY_DTYPES[st].__name__}, not {arr.dtype}")


def array_directions(w_base: np.ndarray, w_sft: np.ndarray, storage: str,
                     storage_sft: str | None = None, *, k: int = DEFAULT_VECTORS,
                     full_basis: bool | None = None, lowrank=None, **kw
                     ) -> tuple[list[dict], Directions | None]:
    """spectra.array_spectra's rows and the Directions, on the CPU without torch.
    `full_basis` None: all of W_base's vectors when min(m, n) <= FULL_BASIS_MAX."""
    spectra._check_pair(w_base, w_sft)
    storages = (storage, storage_sft or storage)
    _check(storages, w_base, w_sft)
    if full_basis is None:
        full_basis = min(w_base.shape) <= FULL_BASIS_MAX
    if lowrank is not None:
        lowrank = tuple(np.ascontiguousarray(f, dtype=np.float64) for f in lowrank)
    return gram_directions(w_base, w_sft, storages, spectra._NUMPY, k=k,
                           full_basis=full_basis, lowrank=lowrank, **kw)


def tensor_directions(w_base: torch.Tensor, w_sft: torch.Tensor, *,
                      device: torch.device, k: int = DEFAULT_VECTORS,
                      full_basis: bool | None = None, lowrank=None, **kw
                      ) -> tuple[list[dict], Directions | None]:
    """The same from torch tensors: on a CPU array_directions, on a GPU torch ops
    on the device (all of W_base's vectors unless `full_basis` is False)."""
    import torch

    spectra._check_pair(w_base, w_sft)
    if device.type == "cpu":
        (b, st_b), (s, st_s) = (spectra.as_array(w.cpu()) for w in (w_base, w_sft))
        return array_directions(b, s, st_b, st_s, k=k, full_basis=full_basis,
                                lowrank=lowrank and tuple(_np(f) for f in lowrank),
                                **kw)
    storages = spectra.storage_name(w_base.dtype), spectra.storage_name(w_sft.dtype)
    if lowrank is not None:
        lowrank = tuple(f.to(device=device, dtype=torch.float64).contiguous()
                        for f in lowrank)
    return gram_directions(w_base.to(device), w_sft.to(device), storages,
                           spectra._TorchOps(device), k=k,
                           full_basis=True if full_basis is None else full_basis,
                           lowrank=lowrank, **kw)


def seed_of(name: str) -> int:
    """The null's random seed for a matrix: stable across runs and machines."""
    return zlib.crc32(name.encode())


# --- token labels ---------------------------------------------------------------

def token_labels(directions: np.ndarray, unembedding: np.ndarray, storage: str,
                 final_norm: np.ndarray | None = None, *,
                 top: int = TOKENS_PER_POLE) -> list[dict]:
    """Logit lens of residual-stream directions: for each column d of `directions`
    (hidden, n), the logits W_U (g * d) (g the final norm's weight; the norm's
    1/rms scale does not change a ranking), in blocks of the vocabulary.
    A direction's sign is arbitrary, so its poles are named neutrally: '+u' (the
    largest logits of d) and '-u' (those of -d, scores negated to be positive);
    which one dW promotes is the effect sign from data (compute.direction_signs).
    Returns per (direction, pole, rank): token_id, score.
    `unembedding` (vocab, hidden) as spectra.ARRAY_DTYPES holds `storage`."""
    d = np.asarray(directions, dtype=np.float64)
    if final_norm is not None:
        d = d * np.asarray(final_norm, dtype=np.float64)[:, None]
    vocab, hidden = unembedding.shape
    if d.shape[0] != hidden:
        raise ValueError(f"directions of length {d.shape[0]} do not fit an "
                         f"unembedding of width {hidden}")
    top = min(top, vocab)
    hi_ids = np.empty((0, d.shape[1]), np.int64)
    lo_ids = hi_ids
    hi_val = np.empty((0, d.shape[1]))
    lo_val = hi_val
    step = max(1, spectra.BLOCK_ELEMS // max(hidden, d.shape[1]) // 4)
    for start in range(0, vocab, step):
        bits = unembedding[start:start + step].view(spectra.BITS[storage][0])
        w = spectra._from_bits(bits, storage).astype(np.float64)  # (rows, hidden)
        logits = w @ d  # (rows, n)
        ids = np.arange(start, start + w.shape[0])[:, None].repeat(d.shape[1], 1)
        hv, hi = np.concatenate([hi_val, logits]), np.concatenate([hi_ids, ids])
        lv, li = np.concatenate([lo_val, logits]), np.concatenate([lo_ids, ids])
        keep_h = np.argsort(-hv, axis=0, kind="stable")[:top]
        keep_l = np.argsort(lv, axis=0, kind="stable")[:top]
        hi_val, hi_ids = np.take_along_axis(hv, keep_h, 0), np.take_along_axis(
            hi, keep_h, 0)
        lo_val, lo_ids = np.take_along_axis(lv, keep_l, 0), np.take_along_axis(
            li, keep_l, 0)
    out = []
    for col in range(d.shape[1]):
        # '+u': the tokens d raises most, '-u': those -d raises most (scores of -d)
        poles = ((hi_ids, hi_val), (lo_ids, -lo_val))
        for pole, (ids, vals) in zip(("+u", "-u"), poles, strict=True):
            out += [{"direction": col + 1, "pole": pole, "rank": r + 1,
                     "token_id": int(ids[r, col]), "score": float(vals[r, col])}
                    for r in range(top)]
    return out
