"""LoRA: extraction of a low-rank adapter from a pair (extract.py) and its
recovery check (recovery.py). The top layer: may import everything below.

Layer order: docs/architecture.md.
"""
