"""Fault injection: broken checkpoints, killed processes, concurrent writers, failed
writes. Each test asserts the clear error and that the warehouse is exactly as it was
(tests/faults/conftest.py: `dump`, `same_bytes`). What users see: docs/reliability.md.
"""
