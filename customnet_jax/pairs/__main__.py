"""`python -m customnet_jax.pairs --help`: build training pairs from photos."""

import sys

from customnet_jax.pairs.cli import main

if __name__ == "__main__":
    sys.exit(main())
