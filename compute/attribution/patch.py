"""Weight patching: which weight changes carry the fine-tuned behaviour.

    python -m compute.run --pair demo                        # the behaviour run first
    python -m compute.patch --pair demo --by layer_module    # then every group
    python -m compute.patch --pair 7B --by layer --ranks 1,8,full --shard 0/4 --no-load
    python -m compute.patch --pair 7B --by module --ray --shards 4
    python -m compute.patch --pair 7B --by tensor --dry-run  # groups, models, cost

For each group G of tensors (compute.attribution.groups: by layer, module,
layer_module or tensor; the embeddings and the 1-D tensors groups of their own) two
models are scored in the pair's behaviour run's own setting (its OUT/<pair>/run.json:
posts, window, prefix, dtype, batches, attention; compute.behaviour.merge_score, the
one merge-and-score path LoRA recovery uses too), next to the SFT: **add** =
W_base + dW_G (only G fine-tuned) and **revert** = W_sft - dW_G (all but G), and with
--ranks r the add of only the top-r singular part of each matrix of dW_G ('full' is
the add itself). The base as loaded is scored once (the reference). A model is the
scorer's base patched in place from the safetensors files (one tensor's delta at a
time; the revert as the base plus every other tensor's dW): the SFT and the patched
model in memory, plus one matrix.

Per post and model it keeps sums over the post's tokens of the model's and the SFT's
log-probs, of KL(p_sft || p_model) and KL(p_model || p_sft), and of KL(p_base ||
p_model) and KL(p_model || p_base) (the base as loaded: its final hidden states kept
from one pass, its LM head copied, compute.behaviour.scoring.Reference); the marts
(marts.fct_patch_effects, fct_patch_ranking, fct_patch_vs_weights; docs/patch.md)
turn them into shares of KL(p_sft || p_base) removed and of the log-prob delta.

Files, one pair per model, written whole: OUT/<pair>/patch/<by>/posts/<model>.parquet
then models/<model>.parquet (the model's marker); a model whose marker exists is not
scored again (resumable per group; shards write disjoint groups). patch.json holds
the setting; a run in another setting (ranks, device, the behaviour run) clears the
folder first, so a re-run replaces. When every group of a `by` is done, run.json's
`patch` kind lists the files and `python -m ingest.compute_load OUT/<pair>` loads
raw.patch_models and raw.patch_posts (this command does it unless --no-load).

--out s3://bucket/runs (any URI ingest.results takes): the behaviour run is read from
the store and the work done in compute.run's staging folder for that URI; each
model's two files are uploaded whole, posts first; the store's markers count as done;
patch.json and the kind's record (kinds/patch.json) live on the store (docs/scale.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from compute.attribution.groups import (
    BY,
    VECTOR_GROUP,
    Group,
    patch_groups,
    shard_groups,
)
from compute.io.checkpoints import CheckpointError
from compute.lora.extract import ExtractError, delta, pair_args, resolve_pair_args, svd
from compute.lora.recovery import FULL, parse_ranks
from ingest.results import ResultsError

KIND = "patch"


@dataclasses.dataclass
class Config:
    pair: str
    base: str
    sft: str
    by: str = "layer_module"
    ranks: list[int] = dataclasses.field(default_factory=list)
    prompts: Path | None = None
    db: Path | None = None
    out: Path = Path("data/runs")  # with `remote`: its staging folder
    device: str | None = None  # None: the behaviour run's
    shard: tuple[int, int] | None = None
    ray: bool = False
    address: str | None = None
    shards: int = 2
    dry_run: bool = False
    load: bool = True
    progress: bool = True
    remote: str | None = None  # --out as an object-store URI (ingest.results)

    @property
    def run_dir(self) -> Path:
        """OUT/<pair>: the behaviour run's folder."""
        return self.out / self.pair

    @property
    def patch_dir(self) -> Path:
        """OUT/<pair>/patch/<by>."""
        return self.run_dir / KIND / self.by

    @property
    def results(self) -> str:
        """Where the pair's results end up: OUT/<pair>, or its URI on a store."""
        from ingest.results import pair_results

        return pair_results(self.remote, self.run_dir)


@dataclasses.dataclass(frozen=True)
class Model:
    """One model to score: the base, or a group's add / revert / add at rank r."""

    index: int | None  # the group's index (None: the base)
    mode: str  # 'base' | 'add' | 'revert'
    rank: int | None = None  # add's top-r part; None: dW_G whole

    @property
    def name(self) -> str:
        """The file stem: base, 00003-add, 00003-revert, 00003-add-r000008."""
        if self.index is None:
            return "base"
        tail = f"-r{self.rank:06d}" if self.rank is not None else ""
        return f"{self.index:05d}-{self.mode}{tail}"


@functools.cache
def schemas() -> dict:
    """Arrow schemas of the patch files: raw.patch_models' and raw.patch_posts'."""
    import pyarrow as pa

    s, i, d, b, big = pa.string(), pa.int32(), pa.float64(), pa.bool_(), pa.int64()
    key = [("run_id", s), ("pair", s), ("patch_by", s), ("patch_group", s),
           ("group_index", i), ("layer", i), ("module", s), ("mode", s),
           ("rank", i), ("is_full", b)]
    return {
        "patch_models": pa.schema([
            *key, ("n_tensors", i), ("n_params", big), ("frobenius_sq", d),
            ("retained_sq", d), ("n_posts", i), ("device", s), ("dtype", s),
            ("window_tokens", i), ("merge_seconds", d), ("seconds", d)]),
        "patch_posts": pa.schema([
            *key, ("post_id", big), ("site", s), ("grp", s), ("post_type", s),
            ("n_tokens", i), ("sum_logprob", d), ("sum_logprob_sft", d),
            ("sum_kl_sft_model", d), ("sum_kl_model_sft", d),
            ("sum_kl_base_model", d), ("sum_kl_model_base", d)]),
    }


def models_of(groups: list[Group], indices: list[int], ranks: list[int],
              with_base: bool) -> list[Model]:
    """The models to score, in order: the base (when `with_base`), then for each
    group add, revert and add at each rank (matrices only)."""
    out = [Model(None, "base")] if with_base else []
    for i in indices:
        out += [Model(i, "add"), Model(i, "revert")]
        if not groups[i].is_vectors:
            out += [Model(i, "add", r) for r in ranks]
    return out


class TopParts:
    """The top singular triplets of each matrix of one group's dW (fp64 SVD,
    compute.lora.extract.svd), for the largest rank asked."""

    def __init__(self, base, sft, group: Group, rmax: int, device: str = "cpu"):
        self.triplets = {}
        for name, shape in zip(group.tensors, group.shapes, strict=True):
            if len(shape) != 2:
                raise ExtractError(f"tensor {name} ({list(shape)}): --ranks patches "
                                   "2-D matrices only (a stacked tensor's experts: "
                                   "use --by tensor without --ranks)")
            dw = delta(base, sft, name)
            self.triplets[name] = svd(dw, min(rmax, min(shape)), device)

    def part(self, name: str, r: int) -> np.ndarray:
        """(m, n) fp64: U_r S_r V_r^T of the matrix's dW (r capped at its rank)."""
        return self.triplets[name].product(r)

    def retained(self, r: int) -> float:
        """Sum over the group's matrices of the top-r squared singular values."""
        return sum(t.retained(r) for t in self.triplets.values())


def deltas_of(model: Model, group: Group | None, setting, parts: TopParts | None
              ) -> dict:
    """The model's deltas on the base (compute.behaviour.merge_score): dW_G (add),
    dW of every tensor but G's (revert: W_sft - dW_G, G the base's), or the top-r
    parts of dW_G."""
    from compute.behaviour.merge_score import full_deltas

    if model.mode == "base":
        return {}
    names = group.tensors
    if model.mode == "revert":
        every = full_deltas(setting)
        return {n: d for n, d in every.items() if n not in set(names)}
    if model.rank is None:
        return full_deltas(setting, list(names))
    return {n: (lambda n=n: parts.part(n, model.rank)) for n in names}


def key_columns(run_id: str, cfg: Config, model: Model, group: Group | None) -> dict:
    """The columns every row of one model carries."""
    return {"run_id": run_id, "pair": cfg.pair, "patch_by": cfg.by,
            "patch_group": group.key if group else "(base)",
            "group_index": model.index, "layer": group.layer if group else None,
            "module": group.module if group else None, "mode": model.mode,
            "rank": model.rank, "is_full": model.rank is None}


def post_rows(posts, results: dict, keys: dict) -> list[dict]:
    """One raw.patch_posts row per post: sums over its tokens of the model's and
    the SFT's log-probs, of both KLs to the SFT and of both KLs to the base."""
    if set(results) != {p.post_id for p in posts}:
        raise ValueError(f"results for posts {sorted(results)[:5]}, rows asked for "
                         f"{sorted(p.post_id for p in posts)[:5]}")
    return [keys | {
        "post_id": p.post_id, "site": p.site, "grp": p.grp, "post_type": p.post_type,
        "n_tokens": p.n_tokens,
        "sum_logprob": float(np.sum(results[p.post_id].logprob["base"])),
        "sum_logprob_sft": float(np.sum(results[p.post_id].logprob["sft"])),
        "sum_kl_sft_model": float(np.sum(results[p.post_id].shift["kl_sft_base"])),
        "sum_kl_model_sft": float(np.sum(results[p.post_id].shift["kl_base_sft"])),
        "sum_kl_base_model": float(np.sum(results[p.post_id].ref["kl_ref_base"])),
        "sum_kl_model_base": float(np.sum(results[p.post_id].ref["kl_base_ref"]))}
        for p in posts]


def group_sizes(setting, group: Group | None) -> tuple[float, int]:
    """(||dW_G||_F^2 summed over the group's tensors, its parameters)."""
    if group is None:
        return 0.0, 0
    sq = 0.0
    for n in group.tensors:
        dw = delta(setting.base, setting.sft, n)
        sq += float(np.vdot(dw, dw))
    return sq, group.n_params


def open_setting(cfg: Config):
    """The pair's behaviour run setting (compute.behaviour.merge_score), as LoRA
    recovery opens it (the same checks)."""
    from compute.lora.recovery import Config as RecoveryConfig
    from compute.lora.recovery import open_setting as recovery_setting

    try:
        return recovery_setting(RecoveryConfig(
            cfg.pair, cfg.base, cfg.sft, [], prompts=cfg.prompts, db=cfg.db,
            out=cfg.out, device=cfg.device))
    except ExtractError as exc:  # its advice names recovery; patching reuses it too
        text = str(exc).replace("recovery reuses", "patching reuses")
        if cfg.remote:  # the store's names, not the staging folder's
            from ingest.results import as_uri

            text = as_uri(text, cfg.out, cfg.remote)
        raise ExtractError(text) from exc


def patch_identity(cfg: Config, setting, groups: list[Group]) -> dict:
    """What patch.json records: a folder holding another one is cleared first
    (files of another layout too: an older release's have fewer columns)."""
    return {"columns": schemas()["patch_posts"].names, "pair": cfg.pair,
            "by": cfg.by, "base": setting.base.ref, "sft": setting.sft.ref,
            "run_id": setting.run_id, "ranks": cfg.ranks,
            "window": setting.window, "context": setting.context,
            "dtype": setting.dtype, "device": setting.device,
            "posts": [p.post_id for p in setting.posts],
            "groups": [g.key for g in groups]}


def open_store(cfg: Config):
    """--out a URI: the pair's folder on the store (ingest.results.Store), with its
    behaviour run copied to the staging folder, where open_setting reads it: the
    store's run.json with its behaviour record (kinds/behaviour.json; the staging
    run.json's other kinds, compute.run's, kept when it is the same run) and
    behaviour/post_texts. None for a folder."""
    if cfg.remote is None:
        return None
    from compute.io.files import atomic_write_bytes
    from compute.plan.shards import manifest_lock
    from ingest.results import Store
    from ingest.runfolder import run_of

    store = Store(cfg.results, cfg.run_dir)
    manifest = store.manifest()
    if manifest is None:
        raise ExtractError(f"{cfg.results}: no run.json; run python -m compute.run "
                           f"on the pair with --out {cfg.remote} first (its "
                           "behaviour half): patching reuses its setting")
    with manifest_lock(cfg.run_dir):
        here = run_of(cfg.run_dir) or {}
        kinds = here.get("kinds") if here.get("run_id") == manifest.get(
            "run_id") and isinstance(here.get("kinds"), dict) else {}
        kinds.pop("behaviour", None)
        if manifest["kinds"].get("behaviour"):
            kinds["behaviour"] = manifest["kinds"]["behaviour"]
        atomic_write_bytes(cfg.run_dir / "run.json", json.dumps(
            manifest | {"kinds": kinds}, indent=2, default=str).encode())
    store.pull(["behaviour/post_texts"])
    return store


def prepare_folder(cfg: Config, want: dict, store=None) -> None:
    """Keep cfg.patch_dir when its patch.json is `want` (resume), else clear it and
    write `want` (under the pair's manifest lock: shards agree); the same for the
    store's patch/<by>/ prefix (prepare_store)."""
    from compute.io.files import atomic_write_bytes
    from compute.plan.shards import manifest_lock

    if store is not None:
        prepare_store(store, cfg.by, want)
    path = cfg.patch_dir / "patch.json"
    with manifest_lock(cfg.run_dir):
        old = json.loads(path.read_text()) if path.exists() else None
        if old == want:
            return
        shutil.rmtree(cfg.patch_dir, ignore_errors=True)
        cfg.patch_dir.mkdir(parents=True)
        atomic_write_bytes(path, json.dumps(want, indent=1).encode())
        if store is None:
            _record_kind(cfg, finished=False)


def prepare_store(store, by: str, want: dict) -> None:
    """The store's patch/<by>/patch.json made `want` without a lock: shards of one
    setting write the same bytes. Another setting's prefix is emptied first, its
    patch.json last (a file under the prefix always has its patch.json beside it,
    so a prefix without one is empty), and the kind's record kinds/patch.json goes
    with it (the grouping is not complete any more)."""
    sub = f"{KIND}/{by}"
    old = store.read_json(f"{sub}/patch.json")
    if old == want:
        return
    if old is not None:
        store.delete_under(sub, last=f"{sub}/patch.json")
    store.delete([store.local / "kinds" / f"{KIND}.json"])
    store.put_bytes(f"{sub}/patch.json", json.dumps(want, indent=1).encode())


def kind_record(run_dir: Path, wants: dict[str, dict], done: dict[str, set[str]],
                started: str | None) -> dict:
    """The patch kind's record (run.json's kind, or the store's kinds/patch.json):
    per grouping (`wants`: its patch.json; `done`: the models with a marker) its
    groups, models and ranks, finished when every grouping is complete, and the
    files under run_dir/patch with their rows (ingest.runfolder.inventory)."""
    from compute.io.files import now
    from ingest.runfolder import inventory

    options = {b: {"groups": len(w["groups"]), "models": len(expected(w)),
                   "ranks": w["ranks"], "complete": complete(w, done[b])}
               for b, w in wants.items()}
    finished = all(o["complete"] for o in options.values())
    return {"started_at": started or now(), "finished_at": now() if finished else None,
            "options": options | {"by": sorted(wants)},
            "inventory": inventory(run_dir, KIND)}


def local_state(run_dir: Path) -> tuple[dict, dict]:
    """(patch.json, model names with a marker) of each grouping under
    run_dir/patch."""
    wants, done = {}, {}
    for b in BY:
        folder = run_dir / KIND / b
        if (folder / "patch.json").exists():
            wants[b] = json.loads((folder / "patch.json").read_text())
            done[b] = {f.stem for f in (folder / "models").glob("*.parquet")}
    return wants, done


def _record_kind(cfg: Config, finished: bool) -> None:
    """run.json's `patch` kind (kind_record), finished when every `by` folder is
    complete (`finished` False: not finished whatever they hold)."""
    from compute.io.files import atomic_write_bytes
    from compute.plan.shards import manifest_lock

    with manifest_lock(cfg.run_dir):
        path = cfg.run_dir / "run.json"
        manifest = json.loads(path.read_text())
        old = manifest["kinds"].get(KIND) or {}
        info = kind_record(cfg.run_dir, *local_state(cfg.run_dir),
                           old.get("started_at"))
        if not finished:
            info["finished_at"] = None
        manifest["kinds"][KIND] = info
        atomic_write_bytes(path, json.dumps(manifest, indent=1).encode())


def publish_record(cfg: Config, store, started: str) -> bool:
    """When every model of every grouping on the store has its marker there: the
    store's patch/ mirrored here (a grouping of another setting here cleared
    first), and kinds/patch.json (kind_record) written; whether it was."""
    wants, done = {}, {}
    for b in BY:
        want = store.read_json(f"{KIND}/{b}/patch.json")
        if want is not None:
            wants[b] = want
            done[b] = {Path(k).stem for k in store.listing(f"{KIND}/{b}/models")}
    if not all(complete(w, done[b]) for b, w in wants.items()):
        return False
    here, _ = local_state(cfg.run_dir)
    for b in BY:
        if here.get(b) is not None and here[b] != wants.get(b):
            shutil.rmtree(cfg.run_dir / KIND / b)
    store.pull([KIND])
    record = kind_record(cfg.run_dir, wants, done, started)
    store.put_bytes(f"kinds/{KIND}.json",
                    json.dumps(record, indent=2, default=str).encode())
    return True


def score_model(cfg: Config, setting, scorer, run_id: str, model: Model,
                group: Group | None, parts: TopParts | None,
                sizes: tuple[float, int]) -> None:
    """Score one model; write its posts file, then its models file (the marker).
    `sizes`: group_sizes of its group (read once for all of the group's models)."""
    import pyarrow as pa

    from compute.io.files import write_parquet

    t0 = time.perf_counter()
    deltas = deltas_of(model, group, setting, parts)
    label = "base" if group is None else f"{group.key} {model.mode}" + (
        f" r{model.rank}" if model.rank is not None else "")
    results = scorer.score(deltas, cfg.progress, label, drift=False, reference=True)
    keys = key_columns(run_id, cfg, model, group)
    write_parquet(pa.Table.from_pylist(post_rows(setting.posts, results, keys),
                                       schema=schemas()["patch_posts"]),
                  cfg.patch_dir / "posts" / f"{model.name}.parquet")
    frob, params = sizes
    retained = frob if model.rank is None or parts is None else parts.retained(
        model.rank)
    row = keys | {
        "n_tensors": len(group.tensors) if group else 0, "n_params": params,
        "frobenius_sq": frob, "retained_sq": retained if group else 0.0,
        "n_posts": len(setting.posts), "device": setting.device,
        "dtype": setting.dtype, "window_tokens": setting.window,
        "merge_seconds": round(scorer.merge_seconds, 4),
        "seconds": round(time.perf_counter() - t0, 4)}
    write_parquet(pa.Table.from_pylist([row], schema=schemas()["patch_models"]),
                  cfg.patch_dir / "models" / f"{model.name}.parquet")


def expected(want: dict) -> set[str]:
    """The models a patch.json asks for, by file stem: the base, add and revert of
    each group, and the rank steps of every group but the 1-D one (models_of)."""
    names = {"base"}
    for i, g in enumerate(want["groups"]):
        ranks = [] if g == VECTOR_GROUP else want["ranks"]
        names |= {Model(i, m).name for m in ("add", "revert")}
        names |= {Model(i, "add", r).name for r in ranks}
    return names


def complete(want: dict, done: set[str]) -> bool:
    """Whether every model `want` (a patch.json) asks for is among `done`."""
    return expected(want) <= done


def scored(cfg: Config, store) -> set[str]:
    """The models of cfg.by with a marker, here or on the store (wherever they were
    made); a model finished here but not uploaded (a run killed between the two)
    is uploaded now, its posts file first."""
    names = {f.stem for f in (cfg.patch_dir / "models").glob("*.parquet")}
    if store is not None:
        sub = f"{KIND}/{cfg.by}"
        names |= {Path(k).stem for k in store.listing(sub)
                  if k.startswith(f"{sub}/models/")}
        store.push_all(sub)
    return names


def upload(store, cfg: Config, model: Model) -> None:
    """The model's two files, each one object written whole: posts, then the
    marker (a marker on the store means its posts are there)."""
    for sub in ("posts", "models"):
        path = cfg.patch_dir / sub / f"{model.name}.parquet"
        store.put_bytes(store.rel(path), path.read_bytes())


def run(cfg: Config) -> Path:
    """Score every model of this shard's groups not scored yet; mark the kind
    finished when every `by` is complete; return OUT/<pair> (its staging folder
    when --out is a URI)."""
    from compute.behaviour.merge_score import DeltaScorer
    from compute.io.files import now

    t0, started = time.perf_counter(), now()
    store = open_store(cfg)
    setting = open_setting(cfg)
    groups = patch_groups(setting.base, setting.sft, cfg.by)
    mine = shard_groups(groups, cfg.shard)
    want = patch_identity(cfg, setting, groups)
    prepare_folder(cfg, want, store)
    done = scored(cfg, store)
    todo = [m for m in models_of(groups, mine, cfg.ranks,
                                 cfg.shard is None or cfg.shard[0] == 0)
            if m.name not in done]
    scorer = DeltaScorer(setting) if todo else None
    parts: dict[int, TopParts] = {}
    sizes: dict[int | None, tuple[float, int]] = {}
    for m in todo:
        group = groups[m.index] if m.index is not None else None
        if m.index not in sizes:  # the models come group by group
            sizes = {m.index: group_sizes(setting, group)}
        if m.rank is not None and m.index not in parts:
            parts.clear()  # one group's singular parts in memory at a time
            parts[m.index] = TopParts(setting.base, setting.sft, group,
                                      max(cfg.ranks), setting.device)
        score_model(cfg, setting, scorer, setting.run_id, m, group,
                    parts.get(m.index), sizes[m.index])
        if store is not None:
            upload(store, cfg, m)
    everything = models_of(groups, list(range(len(groups))), cfg.ranks, True)
    left = len(expected(want) - scored(cfg, store))  # listed again: other shards'
    if store is None:
        _record_kind(cfg, finished=True)
    else:  # the shard that finds every model there writes the record
        publish_record(cfg, store, started)
    print(f"patch {cfg.pair} by {cfg.by}: {len(todo)} model(s) scored "
          f"({len(everything) - left} of {len(everything)} done; {len(groups)} "
          f"groups) on {len(setting.posts)} posts of behaviour run {setting.run_id} "
          f"in {time.perf_counter() - t0:.1f} s; results in {cfg.results}")
    if left:
        print(f"patch: {left} model(s) of other shards are not done yet",
              file=sys.stderr)
    return cfg.run_dir


def dry_run(cfg: Config) -> dict:
    """The groups, models per shard and the cost, from the headers and run.json:
    each model costs about what the behaviour run took (it scores a model next to
    the SFT, as the run scored the base next to it)."""
    from compute.io.adapters import open_pair

    base, sft = open_pair(cfg.base, cfg.sft)
    groups = patch_groups(base, sft, cfg.by)
    n = cfg.shards if cfg.shard is None and cfg.ray else (cfg.shard or (0, 1))[1]
    per_shard = [len(models_of(groups, shard_groups(groups, (i, n)), cfg.ranks,
                               i == 0)) for i in range(n)]
    seconds = behaviour_seconds(cfg)
    info = {"pair": cfg.pair, "by": cfg.by, "groups": len(groups),
            "models": sum(per_shard), "models_per_shard": per_shard,
            "behaviour_run_seconds": seconds,
            "estimated_seconds": None if seconds is None else round(
                seconds * max(per_shard), 1),
            "group_keys": [g.key for g in groups]}
    print(json.dumps(info, indent=1))
    return info


def behaviour_seconds(cfg: Config) -> float | None:
    """Wall seconds of the pair's behaviour run (run.json; on a store its
    kinds/behaviour.json), None when unknown."""
    import datetime as dt

    try:
        if cfg.remote:
            from ingest.results import Store

            manifest = Store(cfg.results, cfg.run_dir).manifest()
        else:
            manifest = json.loads((cfg.run_dir / "run.json").read_text())
        kind = manifest["kinds"]["behaviour"]
        a, b = (dt.datetime.fromisoformat(kind[k])
                for k in ("started_at", "finished_at"))
    except (OSError, ValueError, KeyError, TypeError, ResultsError):
        return None
    return (b - a).total_seconds()


def patch_task(argv: list[str], cwd: str, run_main) -> str:
    """One shard of a --ray run in a Ray worker; raises on failure (Ray retries)."""
    import os

    os.chdir(cwd)
    code = run_main(argv)
    if code:
        raise RuntimeError(f"python -m compute.patch {' '.join(argv)}: exit {code}")
    return argv[argv.index("--shard") + 1]


def ray_main(cfg: Config, argv: list[str]) -> int:
    """--ray: each shard of the groups a Ray task (compute.run.cluster), then one
    load."""
    from compute.run.cluster import run_tasks

    drop = {"--ray", "--shards", "--no-load"}
    base_argv, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = a == "--shards" or (a == "--ray" and cfg.address is not None)
            continue
        base_argv.append(a)
    argvs = [[*base_argv, "--shard", f"{i}/{cfg.shards}", "--no-load",
              "--no-progress"] for i in range(cfg.shards)]
    try:
        run_tasks(argvs, run=main, address=cfg.address,
                  gpus=(cfg.device == "cuda"), progress=cfg.progress, task=patch_task)
    except Exception as exc:  # a task failed every retry: its message says which
        print(f"error: {exc}\nFinished models are kept in {cfg.patch_dir}; run the "
              "same command again to resume.", file=sys.stderr)
        return 2
    return load(cfg) if cfg.load else 0


def load(cfg: Config) -> int:
    """ingest.compute_load of the pair's patch kind, when it is finished."""
    from ingest.compute_load import load_or_explain

    if cfg.remote:
        from ingest.results import Store

        finished = Store(cfg.results, cfg.run_dir).exists(f"kinds/{KIND}.json")
    else:
        manifest = json.loads((cfg.run_dir / "run.json").read_text())
        finished = (manifest["kinds"].get(KIND) or {}).get("finished_at")
    if not finished:
        print(f"patch: not loaded, some groups are not done; when they are: "
              f"python -m ingest.compute_load {cfg.results}", file=sys.stderr)
        return 0
    return load_or_explain(cfg.results, cfg.db, [KIND])


def parse_args(argv: list[str] | None = None) -> Config:
    """python -m compute.patch's command line as a Config."""
    from compute.plan.shards import parse_shard

    ap = argparse.ArgumentParser(
        prog="python -m compute.patch",
        description="Score the behaviour run's posts with base + dW_G (add) and "
        "SFT - dW_G (revert) for each group G of tensors: which weight changes carry "
        "the fine-tuned behaviour (docs/patch.md).")
    pair_args(ap)
    ap.add_argument("--by", default="layer_module", choices=BY,
                    help="how tensors are grouped (default layer_module); the "
                    "embeddings and the 1-D tensors are groups of their own")
    ap.add_argument("--ranks", default="", help="also add only the top-r singular "
                    "part of each group's matrices, e.g. 1,8,full ('full': the add)")
    ap.add_argument("--shard", help="I/N: part I of N of the groups (--no-load; "
                    "then python -m ingest.compute_load OUT/<pair>)")
    ap.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                    help="every shard a Ray task (a local cluster without ADDRESS)")
    ap.add_argument("--shards", type=int, default=2, help="shards of --ray")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the groups, models per shard and the cost; no work")
    ap.add_argument("--prompts", type=Path, help="Parquet of prompts holding the "
                    "behaviour run's posts, instead of the warehouse's")
    ap.add_argument("--out", default="data/runs",
                    help="compute.run's --out: the behaviour run is OUT/<pair>; a "
                    "folder or an object-store URI (s3://bucket/runs; docs/scale.md)")
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="scoring device "
                    "(default the behaviour run's; dtype, window, batches the run's)")
    ap.add_argument("--no-load", dest="load", action="store_false")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    a = ap.parse_args(argv)
    try:
        ranks, _ = parse_ranks(a.ranks) if a.ranks else ([], True)
        shard = parse_shard(a.shard) if a.shard else None
    except ValueError as exc:
        ap.error(str(exc))
    if a.shards < 1:
        ap.error("--shards: at least 1")
    pair, base, sft = resolve_pair_args(ap, a)
    from ingest.results import results_root

    out, remote = results_root(a.out)
    return Config(pair, base, sft, a.by, ranks, a.prompts, a.db, out, a.device,
                  shard, a.ray is not None, a.ray or None, a.shards, a.dry_run,
                  a.load and shard is None, a.progress, remote)


def main(argv: list[str] | None = None) -> int:
    """0 done; 2 refused input (named); 3 the warehouse is busy (results kept)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_args(argv)
    try:
        if cfg.dry_run:
            dry_run(cfg)
            return 0
        if cfg.ray:
            return ray_main(cfg, argv)
        run(cfg)
    except (CheckpointError, ExtractError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ResultsError, OSError) as exc:  # the store refused, or is unreachable
        if not (cfg.remote or isinstance(exc, ResultsError)):
            raise
        print(f"error: {exc}\nFinished models are kept in {cfg.patch_dir} (and "
              f"under {cfg.results}); run the same command again to resume.",
              file=sys.stderr)
        return 2
    return load(cfg) if cfg.load else 0


__all__ = ["FULL", "Config", "Model", "main", "run", "schemas"]
