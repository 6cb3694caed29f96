"""Sample CustomNet pictures: `python sample.py --help`. With no arguments, the built-in demo."""

import sys

from customnet_jax.sampling.cli import main

if __name__ == "__main__":
    sys.exit(main())
