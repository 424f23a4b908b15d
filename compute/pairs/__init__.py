"""Which pairs there are: the registry of named pairs (registry.py), the --pairs
file (pairs_file.py), the pre-flight check `python -m compute.doctor` (doctor.py).

Layer order: docs/architecture.md.
"""
