"""python -m compute.train_seed: a second fine-tune of the demo base with another seed
(the seed floor); the code is compute.fixtures.train_seed
(`python -m compute.train_seed --help`)."""

import sys

from compute.fixtures.train_seed import main

if __name__ == "__main__":
    sys.exit(main())
