"""`python -m customnet_jax.aot`: see customnet_jax/aot/cli.py."""

import os
import sys

# XLA:CPU hosts the process; libtpu only compiles (set before jax is imported: a TPU machine would otherwise
# try to claim its chips).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from customnet_jax.aot.cli import main  # noqa: E402

sys.exit(main())
