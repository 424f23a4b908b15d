"""bench/spectra_gpu.py on a CPU with small shapes: every step runs, the counts add up,
and the generated pair carries the planted low-rank dW (the GPU run needs a device)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import spectra_gpu  # noqa: E402


@pytest.mark.slow
def test_small_run_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert spectra_gpu.main(["--small", "--layers", "2", "--device", "cpu",
                             "--data", str(tmp_path), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc == json.loads(capsys.readouterr().out)
    run, ph = doc["results"]["sftscope"], doc["results"]["phases"]
    assert run["rc"] == 0 and run["spectra"] == 3 * (2 * 7 + 2)  # untied embeddings
    # each step's estimate scales the separately timed layer 0 to the 2 layers and
    # adds the embeddings (rounding: 0.01 s in the estimate, 1e-4 s per timing)
    est, layer0, emb = (ph[k] for k in ("estimated_seconds", "layer0_seconds",
                                         "embeddings_seconds"))
    steps = {"read", "to_device", "upcast", "gram", "eigvalsh"}
    assert set(est) == steps | {"total"} and set(layer0) == set(emb) == steps
    for step in steps:
        assert est[step] == pytest.approx(2 * layer0[step] + emb[step], abs=0.011), step
    assert all(v >= 0 for v in est.values())
    # as many eigensolves as compute.run wrote spectra (3 per 2-D tensor of the pair)
    assert ph["limits"]["eigensolves"] == run["spectra"]
    # bytes of both checkpoints, bf16
    spec = spectra_gpu.spec_for(2, small=True)
    from compute.fixtures.planted import shapes

    n = sum(int(np.prod(s)) for s in shapes(spec).values())
    assert ph["limits"]["bytes_read_gb"] == pytest.approx(4 * n / 1e9, abs=0.01)


def test_pair_has_the_planted_rank(tmp_path):
    from safetensors.torch import load_file

    spec = spectra_gpu.spec_for(1, small=True)
    pair = spectra_gpu.build(tmp_path / "pair", spec, "cpu")
    planted = json.loads((pair / "planted.json").read_text())["tensors"]
    name = "model.layers.0.mlp.up_proj.weight"
    b = load_file(pair / "base" / "model-00001-of-00002.safetensors")
    s = load_file(pair / "sft" / "model-00001-of-00002.safetensors")
    if name not in b:
        b = load_file(pair / "base" / "model-00002-of-00002.safetensors")
        s = load_file(pair / "sft" / "model-00002-of-00002.safetensors")
    d = (s[name].to(torch.float64) - b[name].to(torch.float64)).numpy()
    sv = np.linalg.svd(d, compute_uv=False)
    r = planted[name]["rank"]
    assert r >= 4 and sv[r - 1] > 20 * sv[r]  # the planted directions stand out
    assert spectra_gpu.build(tmp_path / "pair", spec, "cpu") == pair  # cached
