"""The groups of tensors weight patching moves together, and their split into shards.

    from compute.attribution.groups import patch_groups, shard_groups
    groups = patch_groups(base, sft, by="layer_module")
    mine = shard_groups(groups, (0, 4))          # part 0 of 4

A group is a set of the pair's tensors (compute.plan.pair's matrices and 1-D
tensors, placed by compute.arch.naming): by `layer` (every matrix of block i), by
`module` (every q_proj, ...), by `layer_module` (one block's one module type) or by
`tensor` (each matrix alone). The embeddings and the LM head are one group of their
own (`embeddings`), and so are all 1-D tensors (`1-D`: norms, biases), whatever
`by` is. Shards split the groups as compute.plan.shards splits tensors (largest
first to the least loaded part), every group costing one scored model per step.
"""

from __future__ import annotations

import dataclasses

from compute.arch.naming import Layout
from compute.io.checkpoints import Checkpoint
from compute.plan.pair import pair_plan
from compute.plan.shards import split

BY = ("layer", "module", "layer_module", "tensor")
EMBED_GROUP = "embeddings"
VECTOR_GROUP = "1-D"
VOCAB_SIDE = ("embed_tokens", "wte", "word_embeddings", "lm_head")


@dataclasses.dataclass
class Group:
    """One patch group: its key, where it sits, its tensors (checkpoint names)."""

    key: str  # "3.q_proj", "layer 3", "q_proj", a tensor name, "embeddings", "1-D"
    layer: int | None
    module: str | None  # the module type (None: a whole layer, the 1-D group)
    tensors: list[str]
    shapes: list[tuple[int, ...]]

    @property
    def n_params(self) -> int:
        """Parameters of the group's tensors."""
        total = 0
        for shape in self.shapes:
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    @property
    def is_vectors(self) -> bool:
        """The 1-D group (no singular parts, so no rank steps)."""
        return self.key == VECTOR_GROUP


def group_key(by: str, layer: int | None, module: str, tensor: str
              ) -> tuple[str, int | None, str | None]:
    """(key, layer, module) of a matrix's group under `by`."""
    if by == "tensor":
        return tensor, layer, module
    if by == "module" or layer is None:
        return module, None, module
    if by == "layer":
        return f"layer {layer}", layer, None
    return f"{layer}.{module}", layer, module


def patch_groups(base: Checkpoint, sft: Checkpoint, by: str) -> list[Group]:
    """The pair's groups under `by`, in file order of their first tensor; the
    embeddings group and the 1-D group last. A pair without a tensor in a group
    has no such group."""
    if by not in BY:
        raise ValueError(f"--by {by!r}: one of {', '.join(BY)}")
    plan = pair_plan(base, sft)
    layout = Layout(base.config)
    groups: dict[str, Group] = {}
    embed = Group(EMBED_GROUP, None, EMBED_GROUP, [], [])
    for name in plan.matrices:
        layer, module, _ = layout.place(name)
        shape = tuple(base.tensors[name].shape)
        if module in VOCAB_SIDE:
            embed.tensors.append(name)
            embed.shapes.append(shape)
            continue
        key, g_layer, g_module = group_key(by, layer, module, name)
        g = groups.setdefault(key, Group(key, g_layer, g_module, [], []))
        g.tensors.append(name)
        g.shapes.append(shape)
    out = list(groups.values())
    if embed.tensors:
        out.append(embed)
    if plan.vectors:
        out.append(Group(VECTOR_GROUP, None, None, list(plan.vectors),
                         [tuple(base.tensors[n].shape) for n in plan.vectors]))
    return out


def shard_groups(groups: list[Group], shard: tuple[int, int] | None
                 ) -> list[int]:
    """Indices of the groups in part I of N (compute.plan.shards.split, each group
    costing one unit: a scored model per step); every index when `shard` is None."""
    if shard is None:
        return list(range(len(groups)))
    i, n = shard
    if n > len(groups):
        raise ValueError(f"--shard {i}/{n}: the pair has {len(groups)} groups; use at "
                         f"most {len(groups)} shards")
    return split([1.0] * len(groups), n)[i]
