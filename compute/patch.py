"""python -m compute.patch: weight patching, which weight changes carry the behaviour;
the code is compute.attribution.patch (`python -m compute.patch --help`)."""

import sys

from compute.attribution.patch import main

if __name__ == "__main__":
    sys.exit(main())
