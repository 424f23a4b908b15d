"""Extraction choices as mergekit and kohya's sd-scripts offer them, for
compute.lora.extract (docs/lora.md, "Extraction choices"):

    python -m compute.extract_lora --pair demo --rank 64 --embed full --out DIR
    python -m compute.extract_lora ... --include 'layers\\.[0-3]\\.' --exclude 'mlp'
    python -m compute.extract_lora ... --rank 128 --sv-epsilon 0.01
    python -m compute.extract_lora ... --rank 64 --dynamic sv_fro --dynamic-param 0.9

The definitions, written from mergekit's `mergekit-extract-lora` and kohya's
`networks/resize_lora.py` (the code here is this project's own):

- embeddings and the LM head (`--embed`): `lora` factors them like any matrix
  (mergekit's `--embed-lora`); `full` stores W_sft's whole matrix as PEFT's
  `modules_to_save` (mergekit's default); `skip` leaves them out (the base's).
- `--include` / `--exclude` REGEX (repeatable): a module (its name without
  `.weight`) is extracted when it matches one `--include` (if any is given,
  `re.search`) and no `--exclude`; an excluded embedding is left out even with
  `--embed full`, as mergekit does.
- `--sv-epsilon e`: keep only the singular values s_i > e (absolute; mergekit:
  r = min(#{s_i > e}, max rank) when e > 0).
- kohya's dynamic ranks, each capped by `--rank` (kohya's `--new_rank`), with s_i the
  singular values in descending order and p the `--dynamic-param`:
  sv_ratio: r = #{s_i > s_1 / p};
  sv_cumulative: r = 1 + the first index i (0-based) with sum_{j<=i} s_j / sum s >= p;
  sv_fro: r = 1 + the first index i with sum_{j<=i} s_j^2 / sum s^2 >= p^2;
  each clipped to 1 .. len(s); a matrix whose s_1 <= 1e-6 gets r = 1.
"""

from __future__ import annotations

import re

import numpy as np

EMBED_MODES = ("lora", "full", "skip")
DYNAMIC = ("sv_ratio", "sv_cumulative", "sv_fro")
KOHYA_MIN_SV = 1e-6  # kohya's MIN_SV: below it a matrix counts as zero


class ChoiceError(ValueError):
    """A choice the extraction refuses (the message names the option)."""


def kohya_rank(s, method: str, param: float, cap: int) -> int:
    """The rank kohya's resize_lora gives singular values `s` (descending) by its
    dynamic `method` with target `param`, at most `cap`."""
    s = np.asarray(s, dtype=np.float64)
    n = len(s)
    if method == "sv_ratio":
        index = int(np.count_nonzero(s > s[0] / param)) - 1
    elif method == "sv_cumulative":
        index = int(np.searchsorted(np.cumsum(s) / np.sum(s), param, side="left"))
    elif method == "sv_fro":
        sq = s * s
        index = int(np.searchsorted(np.cumsum(sq) / np.sum(sq), param ** 2,
                                    side="left"))
    else:
        raise ChoiceError(f"--dynamic {method!r}: one of {', '.join(DYNAMIC)}")
    rank = max(0, min(index, n - 1)) + 1
    if s[0] <= KOHYA_MIN_SV:
        return 1
    return min(rank, cap)


def epsilon_rank(s, epsilon: float, cap: int) -> int:
    """mergekit's --sv-epsilon: #{s_i > epsilon}, at most `cap` (no cut at 0)."""
    if epsilon <= 0:
        return cap
    return min(int(np.count_nonzero(np.asarray(s) > epsilon)), cap)


def check(dynamic: str | None, param: float | None, epsilon: float | None,
          embed: str, patterns: list[str]) -> None:
    """Refuse inconsistent or malformed choices, naming the option."""
    if dynamic is not None and dynamic not in DYNAMIC:
        raise ChoiceError(f"--dynamic {dynamic!r}: one of {', '.join(DYNAMIC)}")
    if (dynamic is None) != (param is None):
        raise ChoiceError("--dynamic and --dynamic-param go together")
    if dynamic == "sv_ratio" and param is not None and param < 1:
        raise ChoiceError(f"--dynamic-param {param}: sv_ratio takes s_1 / s_r >= 1")
    if dynamic in ("sv_cumulative", "sv_fro") and not 0 < param <= 1:
        raise ChoiceError(f"--dynamic-param {param}: {dynamic} takes a share in (0, 1]")
    if epsilon is not None and epsilon < 0:
        raise ChoiceError(f"--sv-epsilon {epsilon}: must be >= 0")
    if embed not in EMBED_MODES:
        raise ChoiceError(f"--embed {embed!r}: one of {', '.join(EMBED_MODES)}")
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise ChoiceError(f"--include/--exclude {p!r}: {exc}") from None


def selected(module_path: str, include: list[str], exclude: list[str]) -> bool:
    """mergekit's rule: some --include matches (when any is given), no --exclude."""
    if include and not any(re.search(p, module_path) for p in include):
        return False
    return not any(re.search(p, module_path) for p in exclude)


def excluded(module_path: str, exclude: list[str]) -> bool:
    """An --exclude matches (an embedding so excluded is left out, not saved)."""
    return any(re.search(p, module_path) for p in exclude)
