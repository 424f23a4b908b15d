"""Score the base with a set of tensor deltas added, in a behaviour run's own setting.

    from compute.behaviour.merge_score import BehaviourSetting, DeltaScorer
    from compute.behaviour.merge_score import full_deltas
    setting = BehaviourSetting.from_run(Path("data/runs/demo"), "data/warehouse.duckdb")
    scorer = DeltaScorer(setting)
    results = scorer.score({})                       # the base, exactly as loaded
    results = scorer.score(full_deltas(setting))     # every tensor's dW: the SFT

The one piece that LoRA recovery (compute.lora_recovery: W_base + the rank-r part of
each dW) and weight patching (W_base + dW_G, W_sft - dW_G for a group G of tensors)
share. A model is W_base + delta for each named tensor (fp64 sums, cast to the
scoring dtype), every other tensor exactly as the base is loaded; it is scored next
to the SFT model by compute.behaviour.scoring's Scorer with everything the pair's behaviour
run (compute.run) recorded in its run.json: the same posts (the ones the run scored,
their token counts checked), the prefix token, the window and its carried context,
the dtype, the batch size and order, the LM-head chunk, the attention kernel. So the
empty delta gives the behaviour run's base log-probs and every tensor's dW its SFT's.

A DeltaScorer loads each model once: the base is patched in place from one call to
the next (the tensors a call leaves alone are put back to the base's as loaded), and
the SFT's hidden states of every micro-batch are computed at the first call and kept
where they fit SFT_CACHE_BYTES (the demo pair's 80 posts: 158 MiB), so a call costs
one model's forward passes; the results are a fresh load's, bit for bit (tested).
`score(..., reference=True)` also gives each token's KL to and from the base as
loaded (weight patching's second reference): the base's final hidden states at the
scored positions are computed once, at the first such call, and its LM head copied.
`DeltaScorer.model(deltas)` still builds a separate, freshly loaded model.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from compute.io.checkpoints import Checkpoint
from compute.linalg.spectra import to_float64

Delta = np.ndarray | Callable[[], np.ndarray]
"""A tensor's delta, (rows, cols) or (n,) fp64 as stored, or a function giving it
(computed when the model is built: one tensor's delta in memory at a time)."""


class SettingError(ValueError):
    """A behaviour run whose setting cannot be reproduced (named in the message)."""


@dataclasses.dataclass
class BehaviourSetting:
    """What a pair's behaviour run scored and how."""

    run_dir: Path
    run_id: str
    pair: str
    base: Checkpoint
    sft: Checkpoint
    posts: list  # compute.behaviour.scoring.Post, in the run's scoring order
    window: int
    context: int
    dtype: str  # "float32" | "bfloat16"
    device: str
    batch_size: int
    chunk_rows: int | None
    attn: str

    @classmethod
    def from_run(cls, run_dir: Path, prompts: str | Path, device: str | None = None,
                 ) -> BehaviourSetting:
        """The setting of the finished behaviour run in `run_dir` (compute.run's
        OUT/<pair>); the posts' texts from `prompts` (a warehouse or a Parquet file
        of prompts), checked against the token counts the run recorded. `device`
        overrides the run's (the dtype stays the run's)."""
        from compute.io.adapters import open_pair

        path = Path(run_dir) / "run.json"
        if not path.is_file():
            raise SettingError(f"{path}: no run record; run compute.run on the pair "
                               "first (its behaviour half)")
        manifest = json.loads(path.read_text())
        kind = manifest.get("kinds", {}).get("behaviour") or {}
        if not kind.get("finished_at"):
            raise SettingError(f"{path}: the behaviour run is not finished; run "
                               "compute.run on the pair first")
        opts = kind["options"]
        base, sft = open_pair(manifest["base_model"], manifest["sft_model"])
        for side, ck in (("base", base), ("sft", sft)):
            want = manifest.get(f"{side}_revision")
            if want and ck.revision and ck.revision != want:
                raise SettingError(f"{path}: the run scored {side} revision {want}, "
                                   f"{ck.ref} is now {ck.revision}")
        posts = scored_posts(Path(run_dir), manifest["run_id"], prompts, base, sft)
        order = sorted(posts, key=lambda p: (-p.n_tokens, p.post_id))
        return cls(Path(run_dir), manifest["run_id"], manifest["pair"], base, sft,
                   order, int(opts["window"]), int(opts["window_context"]),
                   str(opts["dtype"]), device or str(opts.get("device", "cpu")),
                   int(opts["batch_size"]), opts.get("chunk_rows"),
                   str(opts.get("attn_implementation", "sdpa")))


def scored_posts(run_dir: Path, run_id: str, prompts: str | Path, base: Checkpoint,
                 sft: Checkpoint) -> list:
    """The run's posts (behaviour/post_texts), tokenized from the prompts' texts; a
    post missing from the prompts, or tokenized to another length, is refused."""
    from compute.behaviour.scoring import (
        load_prompts,
        load_tokenizer,
        tokenize_posts,
    )

    files = sorted((run_dir / "behaviour" / "post_texts").glob("*.parquet"))
    if not files:
        raise SettingError(f"{run_dir}/behaviour/post_texts: no scored posts")
    scored = pd.concat([pd.read_parquet(f) for f in files])
    scored = scored[scored["run_id"] == run_id].drop_duplicates("post_id")
    try:
        rows = load_prompts(prompts)
    except Exception as exc:
        raise SettingError(f"no prompts from {prompts} ({exc})") from exc
    rows = rows[rows["post_id"].isin(scored["post_id"])]
    missing = sorted(set(scored["post_id"]) - set(rows["post_id"]))
    if missing:
        raise SettingError(f"{prompts}: post {missing[0]} (and {len(missing) - 1} "
                           f"more) scored by run {run_id} is not among the prompts")
    tok_b = load_tokenizer(Path(base.path))
    tok_s = load_tokenizer(Path(sft.path), fallback=Path(base.path))
    posts = tokenize_posts(rows, tok_b, tok_s)
    counts = dict(zip(scored["post_id"], scored["n_tokens"], strict=True))
    for p in posts:
        if p.n_tokens != counts[p.post_id]:
            raise SettingError(f"post {p.post_id}: {p.n_tokens} tokens now, "
                               f"{counts[p.post_id]} when run {run_id} scored it "
                               "(its text or the tokenizer changed)")
    return posts


def full_deltas(setting: BehaviourSetting, names: list[str] | None = None
                ) -> dict[str, Delta]:
    """dW = W_sft - W_base of `names` (default every tensor of the pair: matrices
    and 1-D), each computed when needed."""
    from compute.io.adapters import delta
    from compute.plan.pair import pair_plan

    if names is None:
        plan = pair_plan(setting.base, setting.sft)
        names = [*plan.matrices, *plan.vectors]
    return {n: (lambda n=n: delta(setting.base, setting.sft, n)) for n in names}


SFT_CACHE_BYTES = 1 << 30
"""The most memory the SFT's hidden states of every micro-batch may take to be kept
across DeltaScorer.score calls (above it the SFT is run again at every call)."""


class DeltaScorer:
    """The SFT model loaded once, its hidden states computed once (where they fit
    SFT_CACHE_BYTES); each call patches the one base model in place to base + deltas
    and scores it next to the SFT on the setting's posts, windows, prefix and batches.
    """

    @staticmethod
    def prefix_of(setting: BehaviourSetting) -> int:
        """The prefix token id the run scored behind."""
        from compute.behaviour.scoring import load_tokenizer, prefix_id

        base_dir, sft_dir = Path(setting.base.path), Path(setting.sft.path)
        return prefix_id(load_tokenizer(base_dir),
                         load_tokenizer(sft_dir, fallback=base_dir))

    @staticmethod
    def dtype_of(setting: BehaviourSetting):
        """The run's scoring dtype as a torch dtype."""
        import torch

        from compute.behaviour.scoring import pick_dtype

        return pick_dtype(torch.device(setting.device), setting.dtype)

    def __init__(self, setting: BehaviourSetting):
        import torch

        from compute.behaviour.scoring import load_model

        self.setting = setting
        self.device = torch.device(setting.device)
        self.dtype = self.dtype_of(setting)
        self.base_dir, self.sft_dir = Path(setting.base.path), Path(setting.sft.path)
        self.prefix = self.prefix_of(setting)
        self.sft_model = load_model(self.sft_dir, self.device, self.dtype, setting.attn,
                                    base=self.base_dir)
        self.sft_cache = {} if self.sft_cache_bytes() <= SFT_CACHE_BYTES else None
        self.base_model = None  # loaded at the first score, then patched in place
        self.patched: set[str] = set()  # its tensors that are not the base's now
        self.merge_seconds = 0.0  # the last score's merge (load and patch), seconds
        self.ref = None  # scoring.Reference of the base as loaded, at the first need

    def sft_cache_bytes(self) -> int:
        """What the SFT's hidden states of every micro-batch take (all layers, the
        padded windows in the setting's batches)."""
        from compute.behaviour.scoring import segments

        s, config = self.setting, self.sft_model.config
        per_token = (config.num_hidden_layers + 1) * config.hidden_size * (
            torch_size(self.dtype))
        total = 0
        for i in range(0, len(s.posts), s.batch_size):
            segs = segments(s.posts[i:i + s.batch_size], self.prefix, s.window,
                            s.context)
            lengths = sorted((len(g.ids) for g in segs), reverse=True)
            total += sum(len(lengths[j:j + s.batch_size]) * lengths[j]
                         for j in range(0, len(lengths), s.batch_size))
        return total * per_token

    def model(self, deltas: Mapping[str, Delta]):
        """A freshly loaded base with W_base + delta put into each named tensor."""
        from compute.behaviour.scoring import load_model

        model = load_model(self.base_dir, self.device, self.dtype, self.setting.attn)
        return apply_deltas(model, self.setting.base, deltas)

    def patch(self, deltas: Mapping[str, Delta]):
        """The scorer's one base model (loaded once) made base + deltas in place: the
        tensors the previous patch changed and these deltas leave alone are put back
        to the base's as loaded, then W_base + delta into each named tensor."""
        from compute.behaviour.scoring import load_model

        if self.base_model is None:
            self.base_model = load_model(self.base_dir, self.device, self.dtype,
                                         self.setting.attn)
        restore = {n: np.float64(0.0) for n in self.patched - set(deltas)}
        self.patched = set()  # until the tensors are written (an error: reload)
        try:
            apply_deltas(self.base_model, self.setting.base, restore | dict(deltas))
        except BaseException:
            self.base_model = None
            raise
        self.patched = set(deltas)
        return self.base_model

    def scorer(self, model, drift: bool = True, reference=None):
        """A scoring.Scorer of `model` next to the SFT in the setting's way."""
        from compute.behaviour.scoring import Scorer

        s = self.setting
        return Scorer(model, self.sft_model, self.device, self.prefix, s.window,
                      s.context, s.batch_size, s.chunk_rows, self.sft_cache, drift,
                      reference)

    def reference(self):
        """The base as loaded as a scoring.Reference (its head copied, its final
        hidden states at every scored position: posts x tokens x hidden size in
        the scoring dtype), computed once with a pass of the base."""
        import torch

        from compute.behaviour.scoring import Reference

        if self.ref is None:
            s = self.setting
            with torch.inference_mode():
                model = self.patch({})
                scorer = self.scorer(model, drift=False)
                states = {}
                for i in range(0, len(s.posts), s.batch_size):
                    states |= scorer.final_states(s.posts[i:i + s.batch_size])
                self.ref = Reference.of(model, states)
        return self.ref

    def score(self, deltas: Mapping[str, Delta], progress: bool = False,
              desc: str = "scoring", drift: bool = True, reference: bool = False,
              ) -> dict[int, object]:
        """post_id -> scoring.PostResult of base + deltas ("base" role)
        next to the SFT ("sft" role), batch by batch in the run's order.
        `drift` False: no residual drift (its sums left zero), the rest unchanged.
        `reference` True: also each token's KL to and from the base as loaded
        (PostResult.ref; the base's states computed at the first such call)."""
        import torch
        from tqdm import tqdm

        s = self.setting
        out: dict[int, object] = {}
        ref = self.reference() if reference else None
        with torch.inference_mode():
            t0 = time.perf_counter()
            model = self.patch(deltas)
            self.merge_seconds = time.perf_counter() - t0
            scorer = self.scorer(model, drift, ref)
            for i in tqdm(range(0, len(s.posts), s.batch_size), desc=desc,
                          unit="batch", disable=not progress, dynamic_ncols=True):
                batch = s.posts[i:i + s.batch_size]
                out |= dict(zip((p.post_id for p in batch), scorer.score(batch),
                                strict=True))
        return out


def apply_deltas(model, base: Checkpoint, deltas: Mapping[str, Delta]):
    """Put W_base + delta (fp64 sum, then the model's dtype) into each named tensor
    of `model`, loaded from `base`; returns the model."""
    import torch

    with torch.no_grad():
        for name, d in deltas.items():
            value = d() if callable(d) else d
            put(model, name, to_float64(*base.read_array(name)) + value)
    return model


def torch_size(dtype) -> int:
    """Bytes per element of a torch dtype."""
    import torch

    return torch.empty((), dtype=dtype).element_size()


def put(model, name: str, value: np.ndarray) -> None:
    """Copy `value` into the model's parameter `name` (its dtype and device)."""
    import torch

    try:
        p = model.get_parameter(name)
    except AttributeError:
        raise SettingError(f"tensor {name}: the loaded model has no such parameter"
                           ) from None
    if tuple(p.shape) != value.shape:
        raise SettingError(f"tensor {name}: {list(value.shape)} in the checkpoint, "
                           f"{list(p.shape)} in the loaded model")
    p.copy_(torch.from_numpy(value).to(device=p.device, dtype=p.dtype))
