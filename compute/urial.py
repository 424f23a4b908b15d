"""python -m compute.urial: URIAL's token shift on the SFT's own greedy answers; the
code is compute.run.urial and compute.behaviour.urial (`--help`)."""

import sys

from compute.run.urial import main

if __name__ == "__main__":
    sys.exit(main())
