"""Build CustomNet training pairs from natural photos (SAM + Zero-1-to-3 + BLIP-2): `python build_pairs.py --help`."""

import sys

from customnet_jax.pairs.cli import main

if __name__ == "__main__":
    sys.exit(main())
