"""python -m compute.direction_signs: the effect sign of dW's top directions from the
matrices' inputs on the behaviour run's posts; the code is compute.run.direction_signs
(`python -m compute.direction_signs --help`)."""

import sys

from compute.run.direction_signs import main

if __name__ == "__main__":
    sys.exit(main())
