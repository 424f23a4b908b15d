"""What a pair's run will do: vocabulary alignment (vocab.py), the pair plan
(pair.py), the split of the work into shards and their manifests (shards.py).

Layer order: docs/architecture.md.
"""
