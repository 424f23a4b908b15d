"""python -m compute.variants: the checkpoint variants; the code is
compute.fixtures.variants (`python -m compute.variants --help`)."""

import sys

from compute.fixtures.variants import main

if __name__ == "__main__":
    sys.exit(main())
