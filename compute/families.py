"""python -m compute.families: tiny pairs of every causal-LM family transformers
ships; the code is compute.fixtures.families (`python -m compute.families --help`)."""

import sys

from compute.fixtures.families import main

if __name__ == "__main__":
    sys.exit(main())
