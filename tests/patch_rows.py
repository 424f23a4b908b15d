"""Weight-patching rows for the app's tests: raw.patch_models and raw.patch_posts of
a warehouse's scored pair, made up here (no model is scored), so that the
Attribution page has something to draw without a patch run in the shared fixture.
The numbers follow a fixed pattern (group g's add share falls with its index); the
marts' arithmetic is tested on real patch runs in tests/test_patch.py."""

from __future__ import annotations

from pathlib import Path

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
           "down_proj"]
RANKS = (1, 8)


def _groups(n_layers: int) -> list[tuple[str, int | None, str | None]]:
    out = [(f"{layer}.{m}", layer, m) for layer in range(n_layers) for m in MODULES]
    return [*out, ("embeddings", None, "embeddings"), ("1-D", None, None)]


def insert_patch_rows(db: Path, pair: str, n_layers: int) -> int:
    """Rows of a --by layer_module patch run of `pair` on its scored posts
    (raw.post_texts), with two rank steps for the first groups; returns the posts'
    rows inserted."""
    import duckdb

    con = duckdb.connect(str(db))
    try:
        posts = con.execute("select run_id, post_id, site, grp, post_type, n_tokens "
                            "from raw.post_texts where pair = ? order by post_id",
                            [pair]).fetchall()
        groups = _groups(n_layers)
        models, rows = [], []

        def add(index, key, layer, module, mode, rank, share):
            run_id = posts[0][0]
            models.append((run_id, pair, "layer_module", key, index, layer, module,
                           mode, rank, rank is None, 1, 1000, 0.5, 0.5, len(posts),
                           "cpu", "float32", 512, 0.1, 1.0))
            for i, (_, post_id, site, grp, ptype, n_tok) in enumerate(posts):
                big_k = 1.0 + (i % 3) * 0.5 + 0.01 * (post_id % 7)
                k = big_k * (1 - share) * (1 + 0.05 * ((i + (index or 0)) % 4 - 1.5))
                rows.append((run_id, pair, "layer_module", key, index, layer, module,
                             mode, rank, rank is None, post_id, site, grp, ptype,
                             n_tok, -3.0 * n_tok + share * big_k, -2.5 * n_tok, k,
                             0.9 * k, 1.2 * share * big_k, 1.1 * share * big_k))

        add(None, "(base)", None, None, "base", None, 0.0)
        for index, (key, layer, module) in enumerate(groups):
            share = 0.6 / (1 + index)
            add(index, key, layer, module, "add", None, share)
            add(index, key, layer, module, "revert", None, 1 - 0.8 * share)
            if index < 3:
                for r in RANKS:
                    add(index, key, layer, module, "add", r, share * r / 10)
        con.executemany("insert into raw.patch_models values (" + ", ".join(
            "?" * len(models[0])) + ")", models)
        con.executemany("insert into raw.patch_posts values (" + ", ".join(
            "?" * len(rows[0])) + ")", rows)
    finally:
        con.close()
    return len(rows)
