"""Reading checkpoints (safetensors, pytorch_model.bin, LoRA adapters) and writing
files atomically (files.py). Imports compute.arch, compute.linalg and ingest.

Layer order: docs/architecture.md.
"""
