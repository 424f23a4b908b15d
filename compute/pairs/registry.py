"""The pairs `--pair NAME` knows: Qwen2.5 sizes, other families, and the two local
pairs (the trained demo, the planted one), and the one resolution of `--pair` or
`--base/--sft`, used by compute.run, compute.doctor and compute.extract_lora:

    from compute.pairs.registry import PAIRS, LOCAL_PAIRS, resolve_pair
    name, base, sft = resolve_pair("7B")  # or resolve_pair(base=..., sft=...)
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


class PairError(ValueError):
    """--pair / --base / --sft that name no pair; the message says what to give."""


def known_pairs() -> dict[str, tuple[str, str]]:
    """Every `--pair` name -> (base ref, SFT ref): the hub pairs, then the local ones
    (their folders' base/ and sft/)."""
    return PAIRS | {k: (str(d / "base"), str(d / "sft")) for k, d in LOCAL_PAIRS.items()}


def resolve_pair(pair: str | None = None, base: str | None = None,
                 sft: str | None = None, name: str | None = None
                 ) -> tuple[str, str, str]:
    """(name, base ref, SFT ref) of `--pair NAME`, or of `--base/--sft [--name]`
    (named BASE-vs-SFT after the folders by default: default_name, a safe name).
    The one resolution of compute.run, compute.doctor and compute.extract_lora;
    raises PairError."""
    if pair and (base or sft):
        raise PairError("give either --pair or --base/--sft, not both")
    if pair:
        known = known_pairs()
        if pair not in known:
            raise PairError(f"unknown --pair {pair!r}; known: {', '.join(PAIRS)}, "
                            f"{', '.join(LOCAL_PAIRS)} (or use --base/--sft)")
        return pair, *known[pair]
    if base and sft:
        return name or default_name(base, sft), base, sft
    raise PairError("give --pair, or --base and --sft")


def default_name(base: str, sft: str) -> str:
    """The pair name of --base/--sft without --name: '<base>-vs-<sft>' of their last
    path parts, with anything but letters, digits and '._-' made '-'."""
    import re

    def part(ref: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(ref).name).strip(".") or "model"

    return f"{part(base)}-vs-{part(sft)}"[:100]


def build_if_planted(name: str, base: str) -> None:
    """Build the planted pair on first use (compute.fixtures.planted; a no-op when
    built): `--pair planted` reads a folder nothing ships."""
    if name == "planted" and Path(base).parent == PLANTED_DIR:
        from compute.fixtures.planted import build_pair

        build_pair(PLANTED_DIR)
