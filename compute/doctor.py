"""python -m compute.doctor: checks a pair before a run; the code is
compute.pairs.doctor (`python -m compute.doctor --help`)."""

import sys

from compute.pairs.doctor import main

if __name__ == "__main__":
    sys.exit(main())
