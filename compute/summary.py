"""python -m compute.summary: a pair summary from the warehouse; the code is
compute.run.summary (`python -m compute.summary --help`)."""

import sys

from compute.run.summary import main

if __name__ == "__main__":
    sys.exit(main())
