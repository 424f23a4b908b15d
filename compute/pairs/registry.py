"""The pairs `--pair NAME` knows: Qwen2.5 sizes, other families, and the two local
pairs (the trained demo, the planted one). Read by compute.run and compute.doctor:

    from compute.pairs.registry import PAIRS, LOCAL_PAIRS
"""

from __future__ import annotations

from pathlib import Path

SIZES = ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")
PAIRS = {s: (f"Qwen/Qwen2.5-{s}", f"Qwen/Qwen2.5-{s}-Instruct") for s in SIZES}
# other families (compute.arch.naming reads their layouts): name -> (base, fine-tune)
FAMILIES = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "smollm2-1.7b": ("HuggingFaceTB/SmolLM2-1.7B", "HuggingFaceTB/SmolLM2-1.7B-Instruct"),
    "llama3.1-8b": ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct"),
    "mistral-7b": ("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1"),
    "gemma2-2b": ("google/gemma-2-2b", "google/gemma-2-2b-it"),
    "olmo2-7b": ("allenai/OLMo-2-1124-7B", "allenai/OLMo-2-1124-7B-SFT"),
    "qwen1.5-moe": ("Qwen/Qwen1.5-MoE-A2.7B", "Qwen/Qwen1.5-MoE-A2.7B-Chat"),
    "mixtral-8x7b": ("mistralai/Mixtral-8x7B-v0.1",
                     "mistralai/Mixtral-8x7B-Instruct-v0.1"),
}
PAIRS |= FAMILIES
DEMO_DIR = Path("models/demo")  # trained and shipped: python -m compute.train_demo
PLANTED_DIR = Path("data/models/planted")  # built on first use by compute.fixtures.planted
LOCAL_PAIRS = {"demo": DEMO_DIR, "planted": PLANTED_DIR}
