"""The command line `python -m compute.run` (cli.py), the directions' files
(direction_files.py), the Ray driver (cluster.py), the summary (summary.py).

Layer order: docs/architecture.md.
"""
