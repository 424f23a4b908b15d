"""Singular-value spectra of W_base, W_sft and dW = W_sft - W_base.

    rows = tensor_spectra(w_base, w_sft, device=torch.device("cpu"))  # 3 dicts

Default method `gram`: the eigenvalues of the fp64 Gram matrix of the short side,
G = X X^T with X (k, N), k <= N, accumulated over column blocks of X, so no full fp64
copy of a long matrix (the 151936 x 896 embedding) is ever made. sigma_i = sqrt(lambda_i)
is accurate to about sqrt(eps64) * s_1 ~ 1.5e-8 * s_1. Method `svd` is the reference:
LAPACK `svdvals` in fp32 (or fp64 with `svd64`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

METHODS = ("gram", "svd", "svd64")
MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23,
                 torch.float64: 52}
STORAGE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16",
                 torch.float32: "float32", torch.float64: "float64"}
BLOCK_ELEMS = 1 << 22  # fp64 elements per Gram block (32 MiB)


def gram_singular_values(a: torch.Tensor) -> tuple[np.ndarray, float]:
    """(descending singular values, sum of squares) of a 2-D float tensor."""
    x = a if a.shape[0] <= a.shape[1] else a.T  # (k, N), k <= N
    k, n = x.shape
    block = max(1, BLOCK_ELEMS // k)
    g = torch.zeros(k, k, dtype=torch.float64, device=a.device)  # (k, k)
    for j in range(0, n, block):
        xb = x[:, j:j + block].to(torch.float64)  # (k, b)
        g.addmm_(xb, xb.T)
    frob_sq = float(torch.diagonal(g).sum())
    eig = torch.linalg.eigvalsh(g)  # ascending
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

    For |x| in [2^e, 2^(e+1)) the spacing is 2^(e - mantissa bits); 0 for x == 0.
    """
    _, exp = torch.frexp(w.float())  # x = m * 2^exp, m in [0.5, 1)
    u = torch.ldexp(torch.ones_like(w, dtype=torch.float32),
                    (exp - 1 - MANTISSA_BITS[storage]).to(torch.int32))
    return torch.where(w == 0, torch.zeros_like(u), u)


def noise_sigma(w_base: torch.Tensor, w_sft: torch.Tensor, storage: torch.dtype) -> float:
    """Rounding-noise std per entry of dW: sqrt(mean((ulp_b^2 + ulp_s^2) / 12))."""
    total = 0.0
    rows = max(1, BLOCK_ELEMS // max(1, w_base.shape[-1]))
    for i in range(0, w_base.shape[0], rows):
        ub = ulp(w_base[i:i + rows], storage).double()
        us = ulp(w_sft[i:i + rows], storage).double()
        total += float((ub * ub + us * us).sum())
    return math.sqrt(total / (12 * w_base.numel()))


def tensor_spectra(
    w_base: torch.Tensor, w_sft: torch.Tensor, *, device: torch.device,
    method: str = "gram",
) -> list[dict]:
    """One row (dict) per role: base, sft, delta. Inputs in their storage dtype."""
    assert w_base.shape == w_sft.shape and w_base.ndim == 2, (w_base.shape, w_sft.shape)
    storage = w_base.dtype
    b = w_base.to(device=device, dtype=torch.float32)  # (m, n)
    s = w_sft.to(device=device, dtype=torch.float32)  # (m, n)
    d = s - b  # exact: both are bf16 values, the difference fits fp32
    rows = []
    for role, mat in (("base", b), ("sft", s), ("delta", d)):
        t0 = time.perf_counter()
        n_nonfinite = int((~torch.isfinite(mat)).sum())
        if n_nonfinite:
            sv, frob = np.array([], dtype=np.float64), float("nan")
        else:
            sv, frob = singular_values(mat, method)
        rows.append({
            "role": role,
            "singular_values": sv,
            "frobenius_sq": frob,
            "n_zero": int((mat == 0).sum()),
            "n_nonfinite": n_nonfinite,
            "noise_sigma": None,
            "seconds": time.perf_counter() - t0,
        })
    if rows[2]["n_nonfinite"] == 0:
        rows[2]["noise_sigma"] = noise_sigma(b, s, storage)
    return rows


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
