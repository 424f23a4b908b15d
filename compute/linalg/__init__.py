"""The arithmetic: singular-value spectra (spectra.py), singular directions
(directions.py), BLAS threading and the C kernels (_kernels.c). Imports compute.arch.

Layer order: docs/architecture.md.
"""
