"""python -m compute.demo: the planted pair; the code is compute.fixtures.planted
(`python -m compute.demo --help`)."""

import sys

from compute.fixtures.planted import main

if __name__ == "__main__":
    sys.exit(main())
