"""Behaviour of a base/SFT pair: per-token log-probs and residual-stream drift.

    from compute.behaviour.scoring import load_prompts, run_behaviour
    prompts = load_prompts("data/warehouse.duckdb")    # or a Parquet export
    options = run_behaviour(base_dir, sft_dir, prompts, Path("data/runs/7B"),
                            run_id="7B-20260101T000000", pair="7B")

(`python -m compute.run --pair 7B` calls it after the spectra and loads the result.)

Scoring. Every post is scored as raw text (no chat template) behind the same prefix
token for both models: `<|endoftext|>` (Qwen has no BOS token), else the BOS token
both tokenizers share (Llama 3, Mistral, Gemma); the two tokenizers must give
identical ids, which is checked per post. Weights are bf16 on a GPU (never
fp16: Qwen overflows) and fp32 on the CPU. Both decoders' last hidden states, at the
scored positions only, go through their LM heads a chunk of positions at a time,
upcast to fp32 before log_softmax; per token only a few numbers are kept, so no
(batch, seq, vocab) tensor is ever held (for Qwen's 152k vocabulary that would be
5 GB in fp32 at 8 x 1024 tokens): each model's log-prob of the target, and, with both
next-token distributions p_b, p_s at hand, KL(p_s || p_b), KL(p_b || p_s), both
entropies, both top-1 ids and the rank of each model's top-1 under the other (the
token shift of URIAL / AlignTDS, Lin et al. 2023: rank 1 unshifted, 2-3 marginal,
> 3 shifted).
Posts are batched with right padding and an attention mask; a post longer than
`window` tokens (prefix included) is scored in windows: the first window scores
tokens 1..window-1, each later one carries the `context` tokens before its first
target as unscored context and scores the next window - context tokens, so every token
is scored exactly once. Position 0 is the first token after the prefix.

Residual drift. For each post and hidden-state index l = 0 (embeddings) .. L (the
final, normed hidden state the LM head reads), sums over the post's tokens of
||h_sft - h_base|| / ||h_base||, cos(h_sft, h_base), ||h_sft - h_base||^2 and
||h_base||^2, with the token count, so dbt aggregates means and pooled ratios exactly.
A change planted in block k first shows at index k + 1 (block k's output).

Both models stay resident on the device, a micro-batch goes through one then the
other, and drift and log-probs are reduced right there; why, and the memory this
takes (about 36 GB for Qwen2.5-7B at 8 x 1024 tokens): docs/behaviour.md.

Output (resumable): `out_dir/behaviour/<table>/<batch>.parquet` for the raw tables
token_logprobs, token_shift, residual_drift and post_texts, written per batch of
posts to a temporary name and renamed, post_texts last: a batch is done when its
post_texts file exists. A re-run skips the posts already done and deletes the files
of a batch that was killed halfway, so every post is scored exactly once.

Shards (`share=(I, N)`, `compute.run --shard I/N`): each scores its part of the
non-empty posts, split by token count (compute.plan.shards.split, a pure function of
the prompts: the parts never overlap); its files are named `sI-N-<batch>.parquet`
and it cleans up only its own killed batches, so shards share one out_dir.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from compute.io.files import write_parquet

PREFIX_TOKEN = "<|endoftext|>"
TABLES = ("token_logprobs", "token_shift", "residual_drift", "post_texts")  # write order
BATCH_FILE = re.compile(r"(s\d+-\d+-)?-?\d+-[0-9a-f]{12}\.parquet")  # batch_name's
LOGIT_CHUNK_ELEMS = 1 << 25  # fp32 logits per model per LM-head chunk (128 MiB)
SHIFT_FLOATS = ("kl_sft_base", "kl_base_sft", "entropy_base", "entropy_sft")
SHIFT_INTS = ("rank_sft_top_in_base", "rank_base_top_in_sft", "top_id_base",
              "top_id_sft")
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32}

SCHEMAS = {
    "token_logprobs": pa.schema([
        ("run_id", pa.string()), ("pair", pa.string()), ("role", pa.string()),
        ("post_id", pa.int64()), ("position", pa.int32()), ("token_id", pa.int32()),
        ("token_text", pa.string()), ("logprob", pa.float64()),
        ("nonfinite", pa.bool_()),
    ]),
    "token_shift": pa.schema([
        ("run_id", pa.string()), ("pair", pa.string()), ("post_id", pa.int64()),
        ("position", pa.int32()),
        *((c, pa.float64()) for c in SHIFT_FLOATS),
        *((c, pa.int32()) for c in SHIFT_INTS),
        ("top_text_base", pa.string()), ("top_text_sft", pa.string()),
        ("nonfinite", pa.bool_()),
    ]),
    "post_texts": pa.schema([
        ("run_id", pa.string()), ("pair", pa.string()), ("post_id", pa.int64()),
        ("site", pa.string()), ("grp", pa.string()), ("n_tokens", pa.int32()),
        ("n_bytes", pa.int32()), ("n_words", pa.int32()), ("post_type", pa.string()),
    ]),
    "residual_drift": pa.schema([
        ("run_id", pa.string()), ("pair", pa.string()), ("post_id", pa.int64()),
        ("layer", pa.int32()), ("n_tokens", pa.int32()), ("sum_rel_l2", pa.float64()),
        ("sum_cos", pa.float64()), ("sum_sq_diff", pa.float64()),
        ("sum_sq_base", pa.float64()),
    ]),
}


# ---------------------------------------------------------------- prompts


def load_prompts(source: str | os.PathLike) -> pd.DataFrame:
    """The prompts to score: `marts.prompts` of a warehouse (read-only), or a Parquet
    file with the same columns (from `python -m ingest.export_prompts`)."""
    source = Path(source)
    if source.suffix.lower() in (".parquet", ".pq"):
        df = pd.read_parquet(source)
    else:
        from ingest.warehouse import connect

        with connect(source, read_only=True) as con:
            df = con.execute("select * from marts.prompts").df()
    return df.sort_values(["grp", "post_id"], kind="stable").reset_index(drop=True)


@dataclass
class Post:
    post_id: int
    site: str | None
    grp: str | None
    text: str
    ids: list[int]
    post_type: str | None = None  # 'question' | 'answer' where the prompts say

    @property
    def n_tokens(self) -> int:
        """The post's tokens (the prefix token not counted)."""
        return len(self.ids)


def check_prompts(prompts: pd.DataFrame) -> None:
    """Refuse prompts without post_id, site, grp or text, with a post_id twice,
    or with a post without text (ValueError naming it)."""
    missing = {"post_id", "site", "grp", "text"} - set(prompts.columns)
    if missing:
        raise ValueError(f"prompts lack column(s) {sorted(missing)}")
    dup = prompts["post_id"][prompts["post_id"].duplicated()]
    if len(dup):
        raise ValueError(f"prompts hold post_id {int(dup.iloc[0])} more than once; "
                         "raw.token_logprobs is keyed by post_id")
    if prompts["text"].isna().any():
        bad = int(prompts.loc[prompts["text"].isna(), "post_id"].iloc[0])
        raise ValueError(f"post {bad} has no text")


def load_tokenizer(folder: Path, fallback: Path | None = None):
    """The fast tokenizer in `folder`, or in `fallback` when `folder` has none (a
    LoRA adapter saved without its tokenizer uses the base's)."""
    from transformers import PreTrainedTokenizerFast

    if fallback is not None and not (folder / "tokenizer.json").exists():
        folder = fallback
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def prefix_id(tok_base, tok_sft) -> int:
    """The id both models are scored behind: `<|endoftext|>` where both tokenizers
    have it (Qwen, SmolLM2, OLMo 2: no BOS token), else the BOS token they share
    (`<|begin_of_text|>` of Llama 3, `<s>` of Mistral, `<bos>` of Gemma)."""

    def own(tok, token: str | None) -> int | None:
        if token is None:
            return None
        i = tok.convert_tokens_to_ids(token)
        return None if i is None or i == tok.unk_token_id else i

    eot = [own(t, PREFIX_TOKEN) for t in (tok_base, tok_sft)]
    if eot[0] is not None and eot[0] == eot[1]:
        return eot[0]
    bos = [own(t, t.bos_token) for t in (tok_base, tok_sft)]
    if bos[0] is not None and bos[0] == bos[1]:
        return bos[0]
    raise ValueError(
        f"no common prefix token: {PREFIX_TOKEN!r} has ids {eot} and the BOS tokens "
        f"({tok_base.bos_token!r}, {tok_sft.bos_token!r}) ids {bos} in the base and "
        "SFT tokenizers; both need one of them, with one id")


def tokenize(tok, texts: list[str]) -> list[list[int]]:
    """Raw text to ids: no special tokens added, special-token strings in the text
    read as text."""
    if not texts:
        return []
    return tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def tokenize_posts(rows: pd.DataFrame, tok_base, tok_sft) -> list[Post]:
    """Posts of `rows` with their token ids; refuses a post the two tokenizers
    split differently (both models must score the same ids), naming it."""
    texts = [str(t) for t in rows["text"]]
    ids_b, ids_s = tokenize(tok_base, texts), tokenize(tok_sft, texts)
    posts = []
    for (_, r), text, a, b in zip(rows.iterrows(), texts, ids_b, ids_s, strict=True):
        if a != b:
            k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                     min(len(a), len(b)))
            raise ValueError(
                f"post {int(r['post_id'])} ({r['site']}): the base and SFT tokenizers "
                f"give different ids from token {k} on (base {a[k:k + 3]}, SFT "
                f"{b[k:k + 3]}); both models must see the same ids")
        posts.append(Post(int(r["post_id"]), none_if_na(r["site"]), none_if_na(r["grp"]),
                          text, list(a), none_if_na(r.get("post_type"))))
    return posts


def none_if_na(x):
    """`x` as a string, or None when it is missing (None, NaN)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


# ---------------------------------------------------------------- windows


def plan_windows(n: int, window: int, context: int) -> list[tuple[int, int, int]]:
    """Windows over s = [prefix] + ids (length n + 1), as (start, end, first): the
    model reads s[start:end] and the targets s[first:end] are scored there (position
    of target s[t] = t - 1). Every t in 1..n is scored in exactly one window."""
    if window < 2 or not 1 <= context <= window - 2:
        raise ValueError(f"need window >= 3 and 1 <= context <= window - 2 "
                         f"(window {window}, context {context})")
    out = [(0, min(window, n + 1), 1)]
    while out[-1][1] < n + 1:
        first = out[-1][1]
        start = first - context
        out.append((start, min(start + window, n + 1), first))
    return out


@dataclass
class Segment:
    post: int  # index into the batch's posts
    ids: list[int]  # the model's input, s[start:end]
    start: int
    first: int

    @property
    def n_scored(self) -> int:
        """The positions of the segment whose predictions are scored."""
        return self.start + len(self.ids) - self.first


def segments(posts: list[Post], prefix: int, window: int, context: int) -> list[Segment]:
    """Every post of `posts` cut into windows (plan_windows), the prefix token
    first."""
    out = []
    for k, p in enumerate(posts):
        s = [prefix, *p.ids]
        for start, end, first in plan_windows(len(p.ids), window, context):
            out.append(Segment(k, s[start:end], start, first))
    return out


# ---------------------------------------------------------------- models


def pick_dtype(device: torch.device, dtype: str | None) -> torch.dtype:
    """The torch dtype for `dtype` (default: bfloat16 on a GPU, float32 on a
    CPU); fp16 is refused."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype in ("float16", "fp16", "half"):
        raise ValueError("fp16 is refused: Qwen's activations overflow it; use bfloat16")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


ATTENTION = ("sdpa", "eager")  # what --attn may force


def model_class(folder: Path):
    """The transformers class AutoModelForCausalLM builds for the checkpoint in
    `folder` (its config.json; an adapter folder: pass its base's)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise ValueError(f"{folder}: model type {config.model_type!r} has no causal-"
                         "LM class in transformers; it cannot be scored") from None


def attention_for(folder: Path, forced: str | None = None) -> str:
    """The attention implementation every scoring load of `folder` uses: "sdpa"
    where its class supports it, else "eager" (Gemma-2, BLOOM, MPT refuse sdpa);
    `forced` ("sdpa" or "eager", --attn) wins, refused in one line where the class
    cannot run it. Eager and sdpa compute the same attention (to rounding)."""
    if forced is not None and forced not in ATTENTION:
        raise ValueError(f"--attn {forced}: use one of {', '.join(ATTENTION)}")
    if forced == "eager":
        return forced
    cls = model_class(folder)
    if getattr(cls, "_supports_sdpa", False):
        return "sdpa"
    if forced == "sdpa":
        raise ValueError(f"--attn sdpa: {cls.__name__} does not support it in "
                         "transformers; use --attn eager (or leave --attn out)")
    return "eager"


def load_model(folder: Path, device: torch.device, dtype: torch.dtype,
               attn: str | None = None, base: Path | None = None):
    """The model in `folder`; a LoRA adapter folder (adapter_config.json) is loaded
    over the model in `base` with peft and merged into it (W + scale * B @ A).
    `attn`: forced attention implementation (default: attention_for's choice)."""
    from transformers import AutoModelForCausalLM

    adapter = (folder / "adapter_config.json").exists()
    attn = attention_for(base if adapter and base is not None else folder, attn)
    kwargs = {"dtype": dtype, "attn_implementation": attn}
    if device.type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    if adapter:
        if base is None:
            raise ValueError(f"{folder} is a LoRA adapter: it needs its base model")
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    if device.type == "cpu":
        model = model.to(device)
    return model.eval()


@dataclass
class Forward:
    hidden: tuple[torch.Tensor, ...]  # L + 1 x (B, T, H); hidden[-1] is after the norm


def forward(model, input_ids: torch.Tensor, mask: torch.Tensor) -> Forward:
    """Hidden states of every layer (the LM head is applied later, to the scored
    positions only, by `token_stats`)."""
    out = model.get_decoder()(input_ids=input_ids, attention_mask=mask,
                              output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states
    last = out.last_hidden_state  # (B, T, H), after the final norm
    assert hidden[-1].data_ptr() == last.data_ptr() or torch.equal(hidden[-1], last)
    return Forward(hidden)


def head_logits(model, x: torch.Tensor) -> torch.Tensor:
    """(rows, V) fp32 logits of final hidden states x (rows, H)."""
    logits = model.get_output_embeddings()(x).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def default_chunk_rows(vocab: int) -> int:
    """Scored positions per LM-head chunk: LOGIT_CHUNK_ELEMS logits."""
    return max(1, LOGIT_CHUNK_ELEMS // vocab)


def token_stats(base, sft, xb: torch.Tensor, xs: torch.Tensor,
                targets: torch.Tensor, rows: int | None = None,
                ref: tuple[Reference, torch.Tensor] | None = None,
                ) -> dict[str, torch.Tensor]:
    """Per scored token, from both models' next-token distributions p_b, p_s:
    each model's log-prob of the target, KL(p_s || p_b), KL(p_b || p_s), both
    entropies (nats), each model's top-1 id and its rank under the other model
    (1 + the number of ids the other model gives a strictly higher probability).

    xb, xs: (N, H) final hidden states of the base and SFT at the scored positions;
    targets: (N,) the ids they predict. The LM heads run `rows` positions at a time
    (default: LOGIT_CHUNK_ELEMS logits per model), so the largest fp32 temporaries are
    a few (rows, V) tensors whatever N is. Where the vocabularies differ (rows added
    by a fine-tune), log-probs of the target use each model's whole vocabulary and
    the comparison uses the distributions restricted to the shared first V ids.

    A position where a model's logits are not all finite (NaN/Inf weights upstream)
    is flagged in nonfinite_base / nonfinite_sft: its log-prob is NaN, and where
    either is flagged the comparison columns are NaN (floats) and -1 (ids, ranks).

    `ref` (a Reference and its (N, H) final hidden states at the same positions):
    also KL(p_ref || p_b) and KL(p_b || p_ref) per token (REF_FLOATS, over the ids
    both vocabularies share; NaN where either's logits are not finite)."""
    n = targets.shape[0]
    vb = base.get_output_embeddings().weight.shape[0]
    vs = sft.get_output_embeddings().weight.shape[0]
    v = min(vb, vs)
    rows = rows or default_chunk_rows(max(vb, vs))
    dev = targets.device
    out = {k: torch.empty(n, dtype=torch.float32, device=dev)
           for k in ("logprob_base", "logprob_sft", *SHIFT_FLOATS)}
    out |= {k: torch.empty(n, dtype=torch.int64, device=dev) for k in SHIFT_INTS}
    out |= {k: torch.empty(n, dtype=torch.bool, device=dev)
            for k in ("nonfinite_base", "nonfinite_sft")}
    if ref is not None:
        out |= {k: torch.empty(n, dtype=torch.float32, device=dev) for k in REF_FLOATS}
    for i in range(0, n, rows):
        sl = slice(i, i + rows)
        t = targets[sl, None]  # (r, 1)
        lb = head_logits(base, xb[sl])  # (r, Vb)
        out["nonfinite_base"][sl] = ~torch.isfinite(lb).all(-1)
        lb = torch.log_softmax(lb, -1)
        ls = head_logits(sft, xs[sl])  # (r, Vs)
        out["nonfinite_sft"][sl] = ~torch.isfinite(ls).all(-1)
        ls = torch.log_softmax(ls, -1)
        out["logprob_base"][sl] = lb.gather(1, t)[:, 0]
        out["logprob_sft"][sl] = ls.gather(1, t)[:, 0]
        if ref is not None:
            reference_kls(out, sl, lb, ref[0].log_probs(ref[1][sl]))
        if vb != v:
            lb = torch.log_softmax(lb[:, :v], -1)
        if vs != v:
            ls = torch.log_softmax(ls[:, :v], -1)
        pb, ps = lb.exp(), ls.exp()  # (r, V)
        diff = ls - lb  # (r, V): log p_s - log p_b
        out["kl_sft_base"][sl] = (ps * diff).sum(-1).clamp_min(0)
        out["kl_base_sft"][sl] = (pb * diff).sum(-1).neg_().clamp_min(0)
        del diff
        out["entropy_base"][sl] = (pb * lb).sum(-1).neg_()
        out["entropy_sft"][sl] = (ps * ls).sum(-1).neg_()
        del pb, ps
        top_b, top_s = lb.argmax(-1), ls.argmax(-1)  # (r,)
        out["top_id_base"][sl], out["top_id_sft"][sl] = top_b, top_s
        out["rank_sft_top_in_base"][sl] = 1 + (lb > lb.gather(1, top_s[:, None])).sum(-1)
        out["rank_base_top_in_sft"][sl] = 1 + (ls > ls.gather(1, top_b[:, None])).sum(-1)
    for role in ("base", "sft"):
        out[f"logprob_{role}"][out[f"nonfinite_{role}"]] = float("nan")
    either = out["nonfinite_base"] | out["nonfinite_sft"]
    for k in SHIFT_FLOATS:
        out[k][either] = float("nan")
    if ref is not None:
        for k in REF_FLOATS:
            out[k][out["nonfinite_base"]] = float("nan")
    for k in SHIFT_INTS:
        out[k][either] = -1
    return out


REF_FLOATS = ("kl_ref_base", "kl_base_ref")
"""Per-token KL(p_ref || p_base) and KL(p_base || p_ref), nats: the scored model
("base" role) against a Reference (compute.attribution: a patched model against the
base as loaded)."""


@dataclass
class Reference:
    """A third model's next-token distributions at the scored positions, kept as
    its LM head (a copy of the weights: the scored model may be patched in place
    later) and its final hidden states per micro-batch (Scorer.final_states)."""

    weight: torch.Tensor  # (V, H)
    bias: torch.Tensor | None
    cap: float | None  # final_logit_softcapping
    states: dict  # micro-batch key -> (N, H) final hidden states, scored positions

    @classmethod
    def of(cls, model, states: dict) -> Reference:
        """`model`'s head, copied, and `states` (from its Scorer.final_states)."""
        head = model.get_output_embeddings()
        bias = getattr(head, "bias", None)
        return cls(head.weight.detach().clone(),
                   None if bias is None else bias.detach().clone(),
                   getattr(model.config, "final_logit_softcapping", None), states)

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, V) fp32 log-probs of final hidden states x (rows, H), as
        head_logits computes the model's."""
        x = x.to(self.weight.device)
        logits = torch.nn.functional.linear(x, self.weight, self.bias).float()
        if self.cap:
            logits = torch.tanh(logits / self.cap) * self.cap
        return torch.log_softmax(logits, -1)


def reference_kls(out: dict, sl: slice, lb: torch.Tensor, lr: torch.Tensor) -> None:
    """KL(p_ref || p_b) and KL(p_b || p_ref) of one chunk into `out` (REF_FLOATS),
    over the ids both vocabularies share; NaN rows where the reference's logits are
    not finite."""
    v = min(lb.shape[-1], lr.shape[-1])
    if lb.shape[-1] != v:
        lb = torch.log_softmax(lb[:, :v], -1)
    bad = ~torch.isfinite(lr).all(-1)
    if lr.shape[-1] != v:
        lr = torch.log_softmax(lr[:, :v], -1)
    diff = lr - lb
    out["kl_ref_base"][sl] = (lr.exp() * diff).sum(-1).clamp_min(0)
    out["kl_base_ref"][sl] = (lb.exp() * diff).sum(-1).neg_().clamp_min(0)
    out["kl_ref_base"][sl][bad] = float("nan")
    out["kl_base_ref"][sl][bad] = float("nan")


def check_head(model, ids: list[int], device: torch.device) -> None:
    """The decoder + chunked LM-head path must agree with the model's own logits
    (guards against architectures whose head does more than a linear map)."""
    x = torch.tensor([ids[:32]], device=device)
    m = torch.ones_like(x)
    last = forward(model, x, m).hidden[-1][0, :-1]  # (T - 1, H)
    ours = torch.log_softmax(head_logits(model, last), -1)
    ours = ours.gather(1, x[0, 1:, None])[:, 0]
    ref = torch.log_softmax(model(input_ids=x, attention_mask=m).logits.float(), -1)
    ref = ref[0, :-1].gather(1, x[0, 1:, None])[:, 0]
    err = float((ours - ref).abs().max()) if len(ref) else 0.0
    if err > 1e-2:
        raise RuntimeError(f"{model.config.model_type}: decoder + LM head differ from "
                           f"the model's own log-probs by {err:.3g}; unsupported head")


# ---------------------------------------------------------------- one batch


@dataclass
class PostResult:
    logprob: dict[str, np.ndarray]  # role -> (n,) fp64
    drift: np.ndarray  # (L + 1, 4) fp64: rel_l2, cos, sq_diff, sq_base
    shift: dict[str, np.ndarray]  # SHIFT_FLOATS (n,) fp64, SHIFT_INTS (n,) int64
    nonfinite: dict[str, np.ndarray]  # role -> (n,) bool: logits not all finite
    drift_n: np.ndarray  # (L + 1,) tokens in the drift sums (finite hidden states)
    n_drift: int = 0
    ref: dict[str, np.ndarray] = field(default_factory=dict)  # REF_FLOATS (n,) fp64

    @classmethod
    def empty(cls, n_tokens: int, n_layers: int) -> PostResult:
        """A post's result before scoring: NaN log-probs, zero drift sums."""
        shift = {c: np.full(n_tokens, np.nan) for c in SHIFT_FLOATS}
        shift |= {c: np.full(n_tokens, -1, dtype=np.int64) for c in SHIFT_INTS}
        return cls({r: np.full(n_tokens, np.nan) for r in ("base", "sft")},
                   np.zeros((n_layers + 1, 4)), shift,
                   {r: np.zeros(n_tokens, dtype=bool) for r in ("base", "sft")},
                   np.zeros(n_layers + 1, dtype=np.int64))


@dataclass
class Scorer:
    base: object
    sft: object
    device: torch.device
    prefix: int
    window: int
    context: int
    micro_batch: int
    chunk_rows: int | None = None  # LM-head positions per chunk (None: by vocab)
    # the SFT's hidden states per micro-batch, kept across calls when a dict is given
    # (compute.behaviour.merge_score: the SFT is scored once, however many models
    # are compared with it); keyed by the micro-batch's posts and windows
    sft_cache: dict | None = None
    drift: bool = True  # False: no drift sums (PostResult.drift stays zero)
    # a third model to compare the base with (PostResult.ref: REF_FLOATS per token)
    reference: Reference | None = None
    n_layers: int = field(init=False)

    def __post_init__(self):
        self.n_layers = self.base.config.num_hidden_layers

    def score(self, posts: list[Post]) -> list[PostResult]:
        """Both models' results on `posts` (their windows in micro-batches,
        longest first)."""
        res = [PostResult.empty(p.n_tokens, self.n_layers) for p in posts]
        if self.reference is not None:
            for p, r in zip(posts, res, strict=True):
                r.ref = {c: np.full(p.n_tokens, np.nan) for c in REF_FLOATS}
        for micro, key in self.micro_batches(posts):
            self.score_micro(micro, res, key)
        for p, r in zip(posts, res, strict=True):
            assert r.n_drift == p.n_tokens, (p.post_id, r.n_drift, p.n_tokens)
            flagged = r.nonfinite["base"] | r.nonfinite["sft"]
            for role, lp in r.logprob.items():  # NaN only where the logits were
                assert not (np.isnan(lp) & ~r.nonfinite[role]).any(), \
                    f"post {p.post_id}: {role} unscored token"
            assert ((r.shift["top_id_sft"] >= 0) | flagged).all(), \
                f"post {p.post_id}: no shift"
        return res

    def micro_batches(self, posts: list[Post]) -> Iterator[tuple[list[Segment], tuple]]:
        """The windows of `posts` in micro-batches, longest first, each with its key
        (its posts and windows: sft_cache's and Reference.states')."""
        segs = segments(posts, self.prefix, self.window, self.context)
        segs.sort(key=lambda s: -len(s.ids))
        for i in range(0, len(segs), self.micro_batch):
            micro = segs[i:i + self.micro_batch]
            yield micro, tuple((posts[s.post].post_id, s.start, len(s.ids))
                               for s in micro)

    def final_states(self, posts: list[Post]) -> dict[tuple, torch.Tensor]:
        """The base's final hidden states (N, H) at each micro-batch's scored
        positions, by key: what a Reference keeps of the base as it is now."""
        out = {}
        for micro, key in self.micro_batches(posts):
            ids, mask, _, flat, _, _ = self.inputs(micro)
            last = forward(self.base, ids, mask).hidden[-1]
            out[key] = last.reshape(-1, last.shape[-1])[flat].clone()
        return out

    def inputs(self, segs: list[Segment]) -> tuple[torch.Tensor, ...]:
        """One micro-batch's tensors: ids and mask (B, T) on the device, right
        padded; scored (B, T) on the CPU (input j predicts a target); flat (N,) the
        row-major indices of the scored inputs and targets (N,) the ids they
        predict; own (B, T) the tokens whose hidden states count for drift."""
        b, t = len(segs), max(len(s.ids) for s in segs)
        ids = torch.full((b, t), self.prefix, dtype=torch.long)  # right padding
        mask = torch.zeros((b, t), dtype=torch.long)
        scored = torch.zeros((b, t), dtype=torch.bool)  # input j predicts a target
        for k, s in enumerate(segs):
            ids[k, :len(s.ids)] = torch.tensor(s.ids)
            mask[k, :len(s.ids)] = 1
            scored[k, s.first - s.start - 1:len(s.ids) - 1] = True
        # row-major flat indices of the scored inputs and the targets they predict
        flat = scored.reshape(-1).nonzero()[:, 0].to(self.device)  # (N,)
        targets = torch.roll(ids, -1, dims=1).reshape(-1).to(self.device)[flat]
        ids, mask = ids.to(self.device), mask.to(self.device)
        # token j's own hidden state counts for drift when s[start + j] is scored here
        own = torch.roll(scored, 1, dims=1).to(self.device)  # (B, T)
        return ids, mask, scored, flat, targets, own

    def score_micro(self, segs: list[Segment], res: list[PostResult],
                    key: tuple | None = None) -> None:
        """Score one micro-batch of windows into `res` (log-probs, shift, drift,
        and with a reference its KLs); `key` names it in sft_cache and in the
        reference's states."""
        b = len(segs)
        ids, mask, scored, flat, targets, own = self.inputs(segs)
        hidden_base = forward(self.base, ids, mask).hidden
        hidden_sft = self.sft_hidden(ids, mask, key)
        if self.drift:
            sums = drift_sums(hidden_base, hidden_sft, own)  # (B, L + 1, 4)
            counts = drift_counts(hidden_base, hidden_sft, own)  # (B, L + 1)
        else:
            sums, counts = np.zeros((b, self.n_layers + 1, 4)), np.zeros(
                (b, self.n_layers + 1), dtype=np.int64)
        h = hidden_base[-1].shape[-1]
        ref = None if self.reference is None else (
            self.reference, self.reference.states[key])
        stats = token_stats(self.base, self.sft, hidden_base[-1].reshape(-1, h)[flat],
                            hidden_sft[-1].reshape(-1, h)[flat], targets,
                            self.chunk_rows, ref)
        del hidden_base, hidden_sft
        stats = {k: v.cpu().numpy() for k, v in stats.items()}  # (N,) each
        scored_np = scored.numpy()
        at = 0
        for k, s in enumerate(segs):
            r = res[s.post]
            cols = np.nonzero(scored_np[k])[0]
            pos = s.start + cols  # position of target s[start + j + 1] = start + j
            rows = slice(at, at + len(cols))
            at += len(cols)
            r.logprob["base"][pos] = stats["logprob_base"][rows]
            r.logprob["sft"][pos] = stats["logprob_sft"][rows]
            for role in ("base", "sft"):
                r.nonfinite[role][pos] = stats[f"nonfinite_{role}"][rows]
            for c in (*SHIFT_FLOATS, *SHIFT_INTS):
                r.shift[c][pos] = stats[c][rows]
            for c in r.ref:
                r.ref[c][pos] = stats[c][rows]
            r.drift += sums[k]
            r.drift_n += counts[k]
            r.n_drift += len(cols)
        assert at == len(flat), (at, len(flat))

    def sft_hidden(self, ids: torch.Tensor, mask: torch.Tensor,
                   key: tuple | None) -> tuple[torch.Tensor, ...]:
        """The SFT's hidden states of a micro-batch: from sft_cache where it holds
        `key`, else a forward pass (kept there when a cache is given)."""
        cache = self.sft_cache
        if cache is not None and key is not None and key in cache:
            return cache[key]
        hidden = forward(self.sft, ids, mask).hidden
        if cache is not None and key is not None:
            cache[key] = hidden
        return hidden


def drift_sums(hb: tuple[torch.Tensor, ...], hs: tuple[torch.Tensor, ...],
               own: torch.Tensor) -> np.ndarray:
    """(B, L + 1, 4) fp64 sums over each row's `own` tokens, per hidden-state index,
    of ||d||/||h_b||, cos(h_s, h_b), ||d||^2, ||h_b||^2 with d = h_s - h_b. A token
    whose state (either model's) has a NaN/Inf entry at an index is left out of that
    index's sums (drift_counts counts the tokens in them)."""
    assert len(hb) == len(hs), (len(hb), len(hs))
    out = []
    for b, s in zip(hb, hs, strict=True):
        ok = own & _finite_states(b, s)  # (B, T)
        w = ok.to(torch.float64)
        b32 = torch.where(ok[..., None], b.float(), 0.0)  # (B, T, H)
        s32 = torch.where(ok[..., None], s.float(), 0.0)
        d = s32 - b32
        nd2 = (d * d).sum(-1).double()  # (B, T)
        nb2 = (b32 * b32).sum(-1).double()
        ns2 = (s32 * s32).sum(-1).double()
        dot = (b32 * s32).sum(-1).double()
        tiny = torch.finfo(torch.float64).tiny
        rel = nd2.sqrt() / nb2.sqrt().clamp_min(tiny)
        cos = (dot / (nb2 * ns2).sqrt().clamp_min(tiny)).clamp(-1.0, 1.0)
        cols = [rel, cos, nd2, nb2]
        out.append(torch.stack([(c * w).sum(1) for c in cols], -1))  # (B, 4)
    return torch.stack(out, 1).cpu().numpy()  # (B, L + 1, 4)


def _finite_states(b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(B, T) whether both models' hidden states of a token are all finite."""
    return torch.isfinite(b).all(-1) & torch.isfinite(s).all(-1)


def drift_counts(hb: tuple[torch.Tensor, ...], hs: tuple[torch.Tensor, ...],
                 own: torch.Tensor) -> np.ndarray:
    """(B, L + 1) int: the `own` tokens in drift_sums' sums per hidden-state index
    (those whose states are finite in both models)."""
    return torch.stack([(own & _finite_states(b, s)).sum(1)
                        for b, s in zip(hb, hs, strict=True)], 1).cpu().numpy()


# ---------------------------------------------------------------- files


def batch_name(posts: list[Post], tag: str = "") -> str:
    """The file name of a batch's Parquet files: `tag`, the first post id and
    a hash of every post id of the batch."""
    ids = sorted(p.post_id for p in posts)
    digest = hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:12]
    return f"{tag}{ids[0]}-{digest}.parquet"


def share_tag(share: tuple[int, int] | None) -> str:
    """The file-name prefix of shard (I, N)'s batches ("" without shards)."""
    return "" if share is None else f"s{share[0]}-{share[1]}-"


def share_of(posts: list[Post], share: tuple[int, int]) -> list[Post]:
    """Shard (I, N)'s part of `posts`: split by token count (compute.plan.shards.split),
    in post_id order so that every shard computes the same parts."""
    from compute.plan.shards import split

    ordered = sorted(posts, key=lambda p: p.post_id)
    i, n = share
    return [ordered[k] for k in split([p.n_tokens for p in ordered], n)[i]]


def done_posts(root: Path, run_id: str, pair: str, tag: str = "") -> set[int]:
    """Post ids of finished batches; deletes the files of unfinished ones whose
    names start with `tag` (a shard's: the others may be writing theirs)."""
    for table in TABLES:
        (root / table).mkdir(parents=True, exist_ok=True)
        for tmp in (root / table).glob(f".{tag}*.tmp*"):
            tmp.unlink(missing_ok=True)
    finished = {f.name for f in (root / "post_texts").glob("*.parquet")}
    for table in TABLES[:-1]:
        for f in (root / table).glob(f"{tag}*.parquet"):
            if f.name not in finished and BATCH_FILE.fullmatch(f.name):
                f.unlink()  # a batch killed before its post_texts file
    return finished_posts(root, run_id, pair)


def finished_posts(root: Path, run_id: str, pair: str) -> set[int]:
    """Post ids of the finished batches (their post_texts files) of run_id."""
    finished = {f.name for f in (root / "post_texts").glob("*.parquet")}
    done: set[int] = set()
    for name in sorted(finished):
        t = pq.read_table(root / "post_texts" / name, columns=["run_id", "pair", "post_id"])
        runs = set(t.column("run_id").to_pylist())
        pairs = set(t.column("pair").to_pylist())
        if runs != {run_id} or pairs != {pair}:
            raise ValueError(f"{root / 'post_texts' / name} belongs to another run "
                             f"({sorted(runs)}, pair {sorted(pairs)}); use a fresh "
                             f"out_dir or delete {root}")
        done.update(t.column("post_id").to_pylist())
    return done


def count_nonfinite(out_dir: Path) -> dict[str, int]:
    """Scored tokens whose logits were not finite, per model ("base", "sft"), over
    every finished batch under out_dir/behaviour (for the run record)."""
    counts = {"base": 0, "sft": 0}
    for f in sorted((Path(out_dir) / "behaviour" / "token_logprobs").glob("*.parquet")):
        t = pq.read_table(f)
        if "nonfinite" not in t.column_names:
            continue
        roles = np.asarray(t.column("role").to_pylist())
        flags = t.column("nonfinite").to_numpy(zero_copy_only=False)
        for role in counts:
            counts[role] += int((flags & (roles == role)).sum())
    return counts


class TokenText:
    """Decoded text of single token ids, cached."""

    def __init__(self, tok):
        self.tok, self.cache = tok, {}

    def __call__(self, ids: Iterator[int]) -> list[str]:
        out = []
        for i in ids:
            if i < 0:  # no token (a position whose logits were not finite)
                out.append(None)
                continue
            s = self.cache.get(i)
            if s is None:
                s = self.cache[i] = self.tok.decode([i])
            out.append(s)
        return out


def batch_tables(posts: list[Post], results: list[PostResult], run_id: str, pair: str,
                 token_text: TokenText) -> dict[str, pa.Table]:
    """A batch's rows of every behaviour table (TABLES) as Arrow tables."""
    lp_cols: dict[str, list] = {k: [] for k in SCHEMAS["token_logprobs"].names}
    drift_rows, text_rows, shift_parts = [], [], []
    for p, r in zip(posts, results, strict=True):
        n = p.n_tokens
        texts = token_text(p.ids)
        for role in ("base", "sft"):
            lp_cols["run_id"] += [run_id] * n
            lp_cols["pair"] += [pair] * n
            lp_cols["role"] += [role] * n
            lp_cols["post_id"] += [p.post_id] * n
            lp_cols["position"] += list(range(n))
            lp_cols["token_id"] += p.ids
            lp_cols["token_text"] += texts
            lp_cols["logprob"] += r.logprob[role].tolist()
            lp_cols["nonfinite"] += r.nonfinite[role].tolist()
        shift_parts.append(shift_columns(p, r, run_id, pair, token_text))
        for layer, (rel, cos, sq_d, sq_b) in enumerate(r.drift.tolist()):
            drift_rows.append({"run_id": run_id, "pair": pair, "post_id": p.post_id,
                               "layer": layer, "n_tokens": int(r.drift_n[layer]),
                               "sum_rel_l2": rel,
                               "sum_cos": cos, "sum_sq_diff": sq_d, "sum_sq_base": sq_b})
        text_rows.append({"run_id": run_id, "pair": pair, "post_id": p.post_id,
                          "site": p.site, "grp": p.grp, "n_tokens": n,
                          "n_bytes": len(p.text.encode("utf-8")),
                          "n_words": len(p.text.split()),
                          "post_type": p.post_type})
    return {
        "token_logprobs": pa.table(lp_cols, schema=SCHEMAS["token_logprobs"]),
        "token_shift": pa.concat_tables(shift_parts) if shift_parts
        else SCHEMAS["token_shift"].empty_table(),
        "residual_drift": pa.Table.from_pylist(drift_rows, schema=SCHEMAS["residual_drift"]),
        "post_texts": pa.Table.from_pylist(text_rows, schema=SCHEMAS["post_texts"]),
    }


def shift_columns(p: Post, r: PostResult, run_id: str, pair: str,
                  token_text: TokenText) -> pa.Table:
    """The post's raw.token_shift rows (one per position)."""
    n = p.n_tokens
    cols = {"run_id": [run_id] * n, "pair": [pair] * n, "post_id": [p.post_id] * n,
            "position": np.arange(n, dtype=np.int32)}
    cols |= {c: r.shift[c] for c in SHIFT_FLOATS}
    cols |= {c: r.shift[c].astype(np.int32) for c in SHIFT_INTS}
    cols["top_text_base"] = token_text(r.shift["top_id_base"].tolist())
    cols["top_text_sft"] = token_text(r.shift["top_id_sft"].tolist())
    cols["nonfinite"] = r.nonfinite["base"] | r.nonfinite["sft"]
    return pa.table(cols, schema=SCHEMAS["token_shift"])


# ---------------------------------------------------------------- entry point


def posts_to_score(prompts: pd.DataFrame, root: Path, run_id: str, pair: str,
                   share: tuple[int, int] | None, tok_base, tok_sft
                   ) -> tuple[list[Post], set[int], int, set[int], list[int]]:
    """(the posts left to score, longest first so that running out of memory shows
    early; the posts done before (this share's); every post of the run (all
    shares'); the ids of every post with tokens; the ids of posts without tokens,
    skipped)."""
    done = done_posts(root, run_id, pair, share_tag(share))
    if share is None:
        todo_rows = prompts[~prompts["post_id"].astype("int64").isin(done)]
        posts = tokenize_posts(todo_rows, tok_base, tok_sft)
    else:  # the parts come from every post's token count
        posts = tokenize_posts(prompts, tok_base, tok_sft)
    empty = [p.post_id for p in posts if p.n_tokens == 0]
    if empty:
        print(f"behaviour: skipping {len(empty)} post(s) with no tokens: {empty[:10]}",
              file=sys.stderr)
    posts = [p for p in posts if p.n_tokens]
    n_all, wanted = len(done) + len(posts), {p.post_id for p in posts}
    if share is not None:
        n_all = len(posts)
        posts = share_of(posts, share)
        done = done & {p.post_id for p in posts}  # this part's, for the counts
        posts = [p for p in posts if p.post_id not in done]
    posts.sort(key=lambda p: (-p.n_tokens, p.post_id))
    return posts, done, n_all, wanted, empty


def load_pair(base_dir: Path, sft_dir: Path, dev, torch_dtype, attn_implementation,
              posts: list[Post], prefix: int):
    """Both models, checked: the same layers and hidden size, every token id within
    each vocabulary, a head that scores (check_head)."""
    base = load_model(base_dir, dev, torch_dtype, attn_implementation)
    sft = load_model(sft_dir, dev, torch_dtype, attn_implementation, base=base_dir)
    for m in (base, sft):
        if m.config.num_hidden_layers != base.config.num_hidden_layers or \
                m.config.hidden_size != base.config.hidden_size:
            raise ValueError("base and SFT differ in layers or hidden size")
        if max(max(p.ids) for p in posts) >= m.get_output_embeddings().weight.shape[0]:
            raise ValueError("a token id exceeds a model's vocabulary")
        check_head(m, [prefix, *posts[-1].ids], dev)
    return base, sft


def score_batches(scorer: Scorer, posts: list[Post], batch_size: int, root: Path,
                  tag: str, run_id: str, pair: str, token_text, bar) -> int:
    """Score `posts` in batches, each batch's files written as it is done
    (post_texts last: it marks the batch done); the tokens scored."""
    n_tok = 0
    for i in range(0, len(posts), batch_size):
        batch = posts[i:i + batch_size]
        tables = batch_tables(batch, scorer.score(batch), run_id, pair, token_text)
        name = batch_name(batch, tag)
        for table in TABLES:
            write_parquet(tables[table], root / table / name)
        n_tok += sum(p.n_tokens for p in batch)
        bar.update(len(batch))
    return n_tok


def run_behaviour(
    base_dir: Path, sft_dir: Path, prompts: pd.DataFrame, out_dir: Path, *,
    run_id: str, pair: str, device: str = "cpu", batch_size: int = 8,
    window: int = 1024, dtype: str | None = None,
    attn_implementation: str | None = None,
    progress: bool = True, context: int | None = None, chunk_rows: int | None = None,
    share: tuple[int, int] | None = None,
) -> dict:
    """Score `prompts` (post_id, site, grp, text) with both models; write the batches'
    Parquet files under out_dir/behaviour/<table>/; return the options used.

    `context`: tokens carried as unscored context into each window after the first
    (default window // 2). `chunk_rows`: scored positions per LM-head chunk (default
    LOGIT_CHUNK_ELEMS // vocabulary); results do not depend on it. `share` (I, N):
    score only part I of N of the posts (share_of); options["n_posts_pending"] counts
    the posts of every part not yet done when this part finished (0: the pair's
    behaviour is complete). `attn_implementation`: forced (--attn); by default
    attention_for's choice for the base's class, recorded in the options."""
    t0 = time.perf_counter()
    check_prompts(prompts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    context = window // 2 if context is None else context
    plan_windows(0, window, context)  # validates window and context
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    torch_dtype = pick_dtype(dev, dtype)
    dtype_name = str(torch_dtype).removeprefix("torch.")
    root = Path(out_dir) / "behaviour"
    attn = attention_for(Path(base_dir), attn_implementation)

    tok_base = load_tokenizer(Path(base_dir))
    tok_sft = load_tokenizer(Path(sft_dir), fallback=Path(base_dir))
    prefix = prefix_id(tok_base, tok_sft)
    tag = share_tag(share)
    posts, done, n_all, wanted, empty = posts_to_score(
        prompts, root, run_id, pair, share, tok_base, tok_sft)
    options = {"batch_size": batch_size, "window": window, "window_context": context,
               "dtype": dtype_name, "attn_implementation": attn,
               "device": dev.type, "prefix_token": PREFIX_TOKEN,
               "n_posts": n_all, "n_posts_resumed": len(done),
               "n_posts_scored": len(posts), "skipped_empty": empty,
               "torch": torch.__version__}
    if share is not None:
        options["share"] = f"{share[0]}/{share[1]}"

    n_tok = 0
    if posts:
        import transformers

        options["transformers"] = transformers.__version__
        with torch.inference_mode():
            base, sft = load_pair(Path(base_dir), Path(sft_dir), dev, torch_dtype,
                                  attn, posts, prefix)
            scorer = Scorer(base, sft, dev, prefix, window, context, batch_size,
                            chunk_rows)
            vocab = [m.get_output_embeddings().weight.shape[0] for m in (base, sft)]
            options |= {"shift_vocab": min(vocab),
                        "chunk_rows": chunk_rows or default_chunk_rows(max(vocab))}
            t_score = time.perf_counter()
            options["load_seconds"] = round(t_score - t0, 3)
            bar = tqdm(total=len(done) + len(posts), initial=len(done), unit="post",
                       desc=f"behaviour {pair} (base+sft)", disable=not progress,
                       dynamic_ncols=True)
            n_tok = score_batches(scorer, posts, batch_size, root, tag, run_id, pair,
                                  TokenText(tok_base), bar)
            bar.close()
            options["n_layers"] = scorer.n_layers
            options["score_seconds"] = round(time.perf_counter() - t_score, 3)
            options["tokens_per_s"] = round(n_tok / options["score_seconds"], 1)
    seconds = time.perf_counter() - t0
    if share is not None:  # the other parts' posts, as their files say now
        options["n_posts_pending"] = len(wanted - finished_posts(root, run_id, pair))
    options |= {"n_tokens_scored": n_tok, "seconds": round(seconds, 3),
                "posts_per_s": round(len(posts) / seconds, 3) if posts else None}
    return options
