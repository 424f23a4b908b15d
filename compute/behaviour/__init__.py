"""The behaviour half: per-token log-probs of both models on the prompts
(scoring.py).

Layer order: docs/architecture.md.
"""
