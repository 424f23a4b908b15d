"""python -m compute.run: see compute/run/cli.py."""

import sys

from compute.run.cli import main

sys.exit(main())
