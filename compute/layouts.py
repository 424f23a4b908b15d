"""python -m compute.layouts: one tiny pair per tensor-naming layout (fixtures; the
layouts are compute.arch.naming); the code is compute.fixtures.checkpoint_layouts
(`python -m compute.layouts --help`)."""

import sys

from compute.fixtures.checkpoint_layouts import main

if __name__ == "__main__":
    sys.exit(main())
