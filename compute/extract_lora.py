"""python -m compute.extract_lora: a LoRA adapter extracted from a pair; the code is
compute.lora.extract (`python -m compute.extract_lora --help`)."""

import sys

from compute.lora.extract import main

if __name__ == "__main__":
    sys.exit(main())
