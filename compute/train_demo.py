"""python -m compute.train_demo: trains the demo pair; the code is
compute.fixtures.train_demo (`python -m compute.train_demo --help`)."""

import sys

from compute.fixtures.train_demo import main

if __name__ == "__main__":
    sys.exit(main())
