"""The sampling flags shared by sample.py, eval.py and the app: `--sampler NAME`, `--steps N` and every option of
every registered sampler (`--eta`, `--schedule`, `--spacing`, ...), each given only when set, so that a sampler
can refuse an option it does not take (DDIM's --eta with dpmpp_2m) instead of ignoring it."""

from __future__ import annotations

import argparse
from typing import Any

from customnet_jax.diffusion import samplers


def _options_by_name() -> dict[str, list[tuple[str, samplers.Option]]]:
    """option name -> [(sampler name, option), ...] over the registry."""
    out: dict[str, list[tuple[str, samplers.Option]]] = {}
    for name in samplers.names():
        for option in samplers.get(name).options:
            out.setdefault(option.name, []).append((name, option))
    return out


def add_sampling_arguments(parser: argparse.ArgumentParser, steps: int = 50) -> None:
    """Add --sampler, --steps and one flag per sampler option (default: unset, the sampler's own default)."""
    group = parser.add_argument_group("sampler (docs/samplers.md)")
    group.add_argument("--sampler", default=None, choices=samplers.names(),
                       help=f"the sampler (default: the model's, {samplers.DEFAULT} unless it says otherwise)")
    group.add_argument("--steps", type=int, default=steps, help=f"sampler steps = model evaluations (default {steps})")
    for name, users in _options_by_name().items():
        first = users[0][1]
        choices = sorted({c for _, o in users for c in (o.choices or ())}) or None
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=first.type, choices=choices, default=None,
                           help=f"{first.help} [{', '.join(s for s, _ in users)}]")


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as Pipeline keywords: {"sampler" (None: the model's), "steps", "sampler_options" (only the
    flags given)}."""
    options = {name: getattr(args, name) for name in _options_by_name() if getattr(args, name, None) is not None}
    return {"sampler": args.sampler, "steps": args.steps, "sampler_options": options}
