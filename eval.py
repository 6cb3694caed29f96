"""Evaluate CustomNet as the paper does (DINO-I, CLIP-I, CLIP-T + ground-truth measures): `python eval.py --help`."""

import sys

from customnet_jax.demo.eval_command import COMMAND as DEMO_COMMAND
from customnet_jax.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main(commands=[DEMO_COMMAND]))
