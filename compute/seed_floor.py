"""python -m compute.seed_floor: the seed floor of the directions (two fine-tunes' top
dW subspaces); the code is compute.run.seed_floor (`python -m compute.seed_floor
--help`)."""

import sys

from compute.run.seed_floor import main

if __name__ == "__main__":
    sys.exit(main())
