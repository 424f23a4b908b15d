"""python -m compute.lora_recovery: how well a LoRA extraction recovers; the code is
compute.lora.recovery (`python -m compute.lora_recovery --help`)."""

import sys

from compute.lora.recovery import main

if __name__ == "__main__":
    sys.exit(main())
