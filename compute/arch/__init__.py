"""Architectures: how each model family names its tensors (naming.py). The
lowest layer; imports nothing from compute.

Layer order: docs/architecture.md.
"""
