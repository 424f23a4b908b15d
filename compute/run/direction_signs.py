"""The effect sign of dW's top directions, from the matrix's inputs on the prompts.

    python -m compute.direction_signs --run data/runs/demo      # then ingest.compute_load

A singular triplet (s, u, v) of dW adds s u (v . x) to the matrix's output for an
input x: which pole of u it pushes the residual stream towards is the sign of v . x,
not the sign LAPACK happened to give u and v. For each labelled direction (the
residual-stream side of o_proj, down_proj and embed_tokens: compute.directions), the
effect sign is sign(mean over the scored tokens of v . x), x the matrix's input in
the SFT model on the behaviour run's own posts, windows and prefix
(compute.merge_score's setting): the attention output for o_proj, the MLP's
act(gate) * up for down_proj, the token's one-hot for embed_tokens (v . x = v[id]).
Then "promoted" means what dW adds on these texts: the tokens of sign * u through
the final norm and the unembedding. compute.run writes OUT/<pair>/directions/
signs.parquet after its behaviour half (loaded into raw.direction_signs); where it
is missing, the marts name the poles neutrally ('+u', '-u').
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from compute.linalg import directions as dirs

INPUT_SIDE = {"o_proj": "right", "down_proj": "right", "embed_tokens": "left"}


def direction_inputs(run_dir: Path) -> list[tuple]:
    """(run_id, pair, tensor, layer, module, k, input-side vector) of the labelled
    directions (delta role, k <= TOKEN_DIRECTIONS) in the run's vector files."""
    import duckdb

    files = sorted(str(p) for p in (run_dir / "directions" / "vectors").glob(
        "*.parquet"))
    if not files:
        return []
    wanted = " or ".join(f"(module = '{m}' and side = '{s}')"
                         for m, s in INPUT_SIDE.items())
    return duckdb.sql(
        "select run_id, pair, tensor, layer, module, k, vector from read_parquet(?) "
        f"where role = 'delta' and k <= {dirs.TOKEN_DIRECTIONS} and ({wanted}) "
        "order by tensor, k", params=[files]).fetchall()


def mean_inputs(setting, tensors: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """tensor -> mean over the scored tokens of its matrix's input in the SFT model
    (fp64), and the number of scored tokens."""
    import torch

    from compute.behaviour.merge_score import DeltaScorer
    from compute.behaviour.scoring import load_model, segments

    dev = torch.device(setting.device)
    prefix = DeltaScorer.prefix_of(setting)
    model = load_model(Path(setting.sft.path), dev, DeltaScorer.dtype_of(setting),
                       setting.attn, base=Path(setting.base.path))
    sums: dict[str, np.ndarray] = {}
    state = {"mask": None}

    def hook_for(name):
        def hook(_module, args):
            x = args[0].float()  # (B, T, in)
            m = state["mask"].to(x.dtype)[..., None]
            part = (x * m).sum((0, 1)).double().cpu().numpy()
            sums[name] = sums.get(name, 0.0) + part
        return hook

    handles, embed = [], None
    for name in tensors:
        module = name.removesuffix(".weight")
        if module.endswith("embed_tokens"):
            embed = name
            continue
        handles.append(model.get_submodule(module).register_forward_pre_hook(
            hook_for(name)))
    n, vocab = 0, model.get_input_embeddings().weight.shape[0]
    try:
        with torch.inference_mode():
            segs = segments(setting.posts, prefix, setting.window, setting.context)
            for i in range(0, len(segs), setting.batch_size):
                batch = segs[i:i + setting.batch_size]
                t = max(len(s.ids) for s in batch)
                ids = torch.full((len(batch), t), prefix, dtype=torch.long)
                mask = torch.zeros((len(batch), t), dtype=torch.long)
                scored = torch.zeros((len(batch), t), dtype=torch.bool)
                for k, s in enumerate(batch):
                    ids[k, :len(s.ids)] = torch.tensor(s.ids)
                    mask[k, :len(s.ids)] = 1
                    scored[k, s.first - s.start - 1:len(s.ids) - 1] = True
                state["mask"] = scored.to(dev)
                model.get_decoder()(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                    use_cache=False)
                n += int(scored.sum())
                if embed is not None:
                    sums[embed] = sums.get(embed, 0.0) + np.bincount(
                        ids[scored].numpy(), minlength=vocab).astype(np.float64)
    finally:
        for h in handles:
            h.remove()
    return {k: v / max(n, 1) for k, v in sums.items()}, n


def sign_rows(picked: list[tuple], means: dict[str, np.ndarray], n: int) -> list[dict]:
    """One row per direction: mean projection v . mean(x) and its sign."""
    out = []
    for run_id, pair, tensor, layer, module, k, vector in picked:
        if tensor not in means or len(vector) != means[tensor].shape[0]:
            continue
        proj = float(np.asarray(vector, dtype=np.float64) @ means[tensor])
        out.append({"run_id": run_id, "pair": pair, "tensor": tensor, "layer": layer,
                    "module": module, "direction": int(k), "mean_projection": proj,
                    "sign": int(np.sign(proj)), "n_tokens": n})
    return out


def write_signs(run_dir: Path, prompts, device: str | None = None) -> int:
    """directions/signs.parquet of the run (its behaviour setting); returns rows."""
    import pyarrow as pa

    from compute.behaviour.merge_score import BehaviourSetting
    from compute.io.files import write_parquet

    picked = direction_inputs(run_dir)
    if not picked:
        return 0
    setting = BehaviourSetting.from_run(run_dir, prompts, device)
    means, n = mean_inputs(setting, {p[2] for p in picked})
    rows = sign_rows(picked, means, n)
    write_parquet(pa.Table.from_pylist(rows, schema=schema()),
                  run_dir / "directions" / "signs.parquet")
    return len(rows)


def schema():
    """The Arrow schema of directions/signs.parquet (raw.direction_signs)."""
    import pyarrow as pa

    return pa.schema([
        ("run_id", pa.string()), ("pair", pa.string()), ("tensor", pa.string()),
        ("layer", pa.int32()), ("module", pa.string()), ("direction", pa.int32()),
        ("mean_projection", pa.float64()), ("sign", pa.int32()),
        ("n_tokens", pa.int64())])


def main(argv: list[str] | None = None) -> int:
    """python -m compute.direction_signs: 0 written; 2 the run's setting refused."""
    ap = argparse.ArgumentParser(prog="python -m compute.direction_signs",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="compute.run's OUT/<pair>")
    ap.add_argument("--prompts", help="the prompts (a warehouse or a Parquet file; "
                    "default $SFTSCOPE_DB or data/warehouse.duckdb)")
    ap.add_argument("--device", choices=["cpu", "cuda"])
    a = ap.parse_args(argv)
    from compute.behaviour.merge_score import SettingError
    from ingest.warehouse import db_path

    try:
        n = write_signs(a.run, a.prompts or db_path(None), a.device)
    except SettingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{a.run}/directions/signs.parquet: {n} directions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
