"""TPU targets by name: a Cloud TPU slice name ("v5p-8") or libtpu's topology form ("v5p:2x2x1") -> abstract devices.

The chip figures the report compares against (HBM per chip, dense bf16 peak, HBM bandwidth per chip) are the
published ones: v4 32 GiB / 275 TFLOP/s / 1.2 TB/s, v5e 16 GiB / 197 / 0.82, v5p 95 GiB / 459 / 2.77, v6e
32 GiB / 918 / 1.64. Slice names count TensorCores
for v4 and v5p (two per chip: v5p-8 is 4 chips) and chips for v5e and v6e (v5e-8 is 8 chips). libtpu's
compile-only v4 devices are single TensorCores (8 devices for the 4 chips of v4:2x2x1), so memory per chip is
per device x devices per chip.
"""

from __future__ import annotations

import dataclasses
import math
import os

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str
    hbm_bytes: float
    peak_flops: float  # dense bf16 per chip
    cores_in_name: bool  # the slice name counts TensorCores (2 per chip), not chips
    hbm_bandwidth: float  # bytes/s per chip


CHIPS = {
    "v4": Chip("v4", 32 * GIB, 275e12, cores_in_name=True, hbm_bandwidth=1.2e12),
    "v5e": Chip("v5e", 16 * GIB, 197e12, cores_in_name=False, hbm_bandwidth=0.819e12),
    "v5p": Chip("v5p", 95 * GIB, 459e12, cores_in_name=True, hbm_bandwidth=2.765e12),
    "v6e": Chip("v6e", 32 * GIB, 918e12, cores_in_name=False, hbm_bandwidth=1.64e12),
}
# chips of a slice -> libtpu topology (3D tori for v4 / v5p, 2D for v5e / v6e); 4 chips is the smallest host
TOPOLOGIES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8"}
TOPOLOGIES_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


class TargetError(ValueError):
    """A topology name that cannot be compiled for; the message lists the known forms."""


def known_forms() -> str:
    names = []
    for generation, chip in CHIPS.items():
        table = TOPOLOGIES_3D if generation in ("v4", "v5p") else TOPOLOGIES_2D
        scale = 2 if chip.cores_in_name else 1
        names.append(f"{generation}-{{{','.join(str(scale * c) for c in table)}}}")
    return ("known: " + ", ".join(names) + "; or libtpu's form GENERATION:AxBxC such as v5p:2x2x1, v4:2x2x2, "
            "v5e:2x4, v6e:4x4")


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # as given
    topology: str  # libtpu's form
    chip: Chip
    chips: int

    def devices(self) -> list:
        """libtpu's abstract devices of the topology (compile-only: nothing runs on them)."""
        from jax.experimental import topologies  # the TPU topology API: only when a target's devices are asked for

        # compile-only: no chip is claimed, so several compiling processes (tests, other users) may share libtpu
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        try:
            return list(topologies.get_topology_desc(platform="tpu", topology_name=self.topology).devices)
        except Exception as error:  # noqa: BLE001 - libtpu reports every refusal as a runtime error
            raise TargetError(f"--topology {self.name}: libtpu refused {self.topology!r} "
                              f"({str(error).splitlines()[0]}); {known_forms()}") from error


def parse_target(name: str) -> Target:
    """'v5p-8' / 'v5e-16' / 'v5p:2x2x1' -> Target, or TargetError naming the known forms."""
    text = name.strip().lower()
    if ":" in text:
        generation, dims = text.split(":", 1)
        sizes = dims.split("x")
        if generation not in CHIPS or not all(s.isdigit() and int(s) > 0 for s in sizes):
            raise TargetError(f"--topology {name}: not a known TPU topology; {known_forms()}")
        return Target(name, f"{generation}:{dims}", CHIPS[generation], math.prod(int(s) for s in sizes))
    generation, _, count = text.partition("-")
    if generation == "v5litepod":
        generation = "v5e"
    chip = CHIPS.get(generation)
    if chip is None or not count.isdigit():
        raise TargetError(f"--topology {name}: not a known TPU topology; {known_forms()}")
    chips = int(count) // (2 if chip.cores_in_name else 1)
    table = TOPOLOGIES_3D if generation in ("v4", "v5p") else TOPOLOGIES_2D
    if chips not in table or (chip.cores_in_name and int(count) % 2):
        raise TargetError(f"--topology {name}: no {generation} slice of that size here; {known_forms()}")
    return Target(name, f"{generation}:{table[chips]}", chip, chips)
