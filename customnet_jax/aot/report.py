"""The TPU compiler's own figures of one compiled program, per chip, and their printout.

memory:  `compiled.memory_analysis()` per device: arguments + outputs - aliased (donated) + temporaries + code;
         x devices per chip (libtpu's compile-only v4 devices are TensorCores) = per chip, against its HBM;
cost:    `compiled.cost_analysis()` per device: 'flops', 'bytes accessed', 'optimal_seconds' (the compiler's
         estimated run time). XLA counts a loop body once (a scan over micro-batches, the DDIM loop): the train
         step's FLOPs are scaled by the accumulation count as `train.loop.step_flops` does, and a loop
         program's 'optimal_seconds' is reported as given, with per-step figures beside it. Pallas kernels
         (splash attention) are custom calls that declare no cost: the compiler's FLOPs and time leave them out,
         and they are added from the jaxpr (`analytic.pallas_kernel_calls`: their matmul FLOPs, and their time at
         the chip's roofline, a lower bound).
         libtpu's cost model counts each `ConcatBitcast` custom call (memory-space assignment's, in the v5e and
         other steps) as -1 s: 'optimal_seconds' of such a program is its estimate minus their count, exactly
         (measured on programs of 1 to 7 of them: the remainder scales with the FLOPs; docs/tpu.md). The count is
         added back (`UNCOSTED_CALL`), and the figures keep libtpu's raw value beside the corrected one.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

from customnet_jax.aot.analytic import kernel_seconds
from customnet_jax.aot.targets import GIB, Target

UNCOSTED_CALL = 'custom_call_target="ConcatBitcast"'  # each one is -1 s in libtpu's 'optimal_seconds'


@dataclasses.dataclass
class Figures:
    program: str
    devices: int  # devices the program runs on
    chips: int
    batch: int  # samples per program run (global)
    bytes_per_chip: float
    hbm_per_chip: float
    flops_per_device: float
    bytes_accessed_per_device: float
    seconds: float | None  # the compiler's estimate, None when not given or not usable (<= 0)
    analytic_flops_per_sample: float | None = None
    memory: dict = dataclasses.field(default_factory=dict)
    kernel_flops_per_device: float = 0.0  # Pallas kernels (not in the compiler's figures)
    kernel_seconds: float = 0.0  # their time at the chip's roofline, added to the compiler's estimate
    compiler_seconds: float | None = None  # the compiler's own estimate, without the kernels
    reported_seconds: float | None = None  # 'optimal_seconds' as libtpu gives it (before the correction)
    uncosted_calls: int = 0  # ConcatBitcast custom calls, each -1 s in reported_seconds
    loops: int = 0  # while loops in the program: the compiler counts their bodies once

    @property
    def fits(self) -> bool:
        return self.bytes_per_chip <= self.hbm_per_chip

    @property
    def flops_per_sample(self) -> float:
        return (self.flops_per_device + self.kernel_flops_per_device) * self.devices / max(self.batch, 1)

    def add_kernels(self, calls: list, target: Target) -> None:
        """Add Pallas kernel calls (one device's, `analytic.pallas_kernel_calls`) to the compiler's figures."""
        if not calls:
            return
        self.kernel_flops_per_device = sum(c.flops for c in calls)
        self.kernel_seconds = kernel_seconds(calls, target.chip.peak_flops / self.devices_per_chip,
                                             target.chip.hbm_bandwidth / self.devices_per_chip)
        if self.seconds:
            self.seconds += self.kernel_seconds

    @property
    def devices_per_chip(self) -> float:
        return self.devices / self.chips

    def samples_per_second_per_chip(self) -> float | None:
        return None if not self.seconds else self.batch / self.seconds / self.chips

    def peak_share(self, target: Target) -> float | None:
        """Compiled FLOPs per chip / estimated time / the chip's bf16 peak."""
        if not self.seconds:
            return None
        flops = self.flops_per_device + self.kernel_flops_per_device
        return flops * self.devices_per_chip / self.seconds / target.chip.peak_flops


def _cost(compiled: Any) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return cost or {}


_HLO_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hlo_text(compiled: Any) -> str:
    """The compiled program's optimized HLO text, printed once per program (hundreds of MB for a full-size step,
    read here for the figures and by `--hlo` for the file)."""
    if compiled not in _HLO_TEXTS:
        _HLO_TEXTS[compiled] = compiled.as_text()
    return _HLO_TEXTS[compiled]


def read_figures(compiled: Any, program: str, target: Target, devices: int, devices_per_chip: int, batch: int,
                 flops_scale: int = 1) -> Figures:
    """Figures of one compiled program that runs on `devices` abstract devices of `target` (`devices_per_chip`:
    libtpu's compile-only v4 devices are TensorCores, 2 per chip; 1 for the others)."""
    stats = compiled.memory_analysis()
    names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
             "generated_code_size_in_bytes", "host_temp_size_in_bytes")  # host_temp: remat offload's buffers
    memory = {name.removesuffix("_size_in_bytes"): int(getattr(stats, name, 0) or 0) for name in names}
    per_device = (memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
                  + memory["generated_code"])
    chips = max(devices // devices_per_chip, 1)
    cost = _cost(compiled)
    text = hlo_text(compiled)
    uncosted = text.count(UNCOSTED_CALL)
    reported = cost.get("optimal_seconds")
    reported = None if reported is None else float(reported)
    seconds = None if reported is None else reported + uncosted
    estimate = seconds * flops_scale if seconds and seconds > 0 else None
    return Figures(program=program, devices=devices, chips=chips, batch=batch,
                   bytes_per_chip=per_device * min(devices_per_chip, devices),
                   hbm_per_chip=target.chip.hbm_bytes, flops_per_device=float(cost.get("flops", 0.0)) * flops_scale,
                   bytes_accessed_per_device=float(cost.get("bytes accessed", 0.0)),
                   seconds=estimate, memory=memory, compiler_seconds=estimate,
                   reported_seconds=reported, uncosted_calls=uncosted,
                   loops=text.count(" while("))


def format_figures(f: Figures, target: Target) -> list[str]:
    """A few lines of text: memory, FLOPs, traffic, estimated time and throughput."""
    gib = lambda x: f"{x / GIB:.2f}"
    m = f.memory
    lines = [f"{f.program}: {f.batch} samples over {f.chips} chip(s) of {target.name} ({target.topology})",
             f"  memory per chip {gib(f.bytes_per_chip)} GiB of {gib(f.hbm_per_chip)} "
             f"({'fits' if f.fits else 'DOES NOT FIT'}); per device: arguments {gib(m['argument'])}, outputs "
             f"{gib(m['output'])} (donated {gib(m['alias'])}), temporaries {gib(m['temp'])}, code "
             f"{gib(m['generated_code'])} GiB"
             + (f"; in host memory {gib(m['host_temp'])} GiB (offloaded)" if m.get("host_temp") else "")]
    flops = f"  FLOPs per sample {f.flops_per_sample / 1e9:.1f} G (compiled)"
    if f.analytic_flops_per_sample:
        flops += (f" vs {f.analytic_flops_per_sample / 1e9:.1f} G analytic (ratio "
                  f"{f.flops_per_sample / f.analytic_flops_per_sample:.2f}: remat recomputation and uncounted work)")
    lines.append(flops)
    lines.append(f"  bytes accessed per chip {f.bytes_accessed_per_device * (f.devices / f.chips) / 1e9:.1f} GB")
    if f.kernel_flops_per_device:
        tflops = f.kernel_flops_per_device * f.devices_per_chip / 1e12
        lines.append(f"  Pallas kernels (not in the compiler's figures): {tflops:.2f} TFLOP per chip, "
                     f"{f.kernel_seconds * 1e3:.2f} ms at the chip's roofline (a lower bound)")
    if f.seconds:
        share = f.peak_share(target)
        kernels = (f" (the compiler's {f.compiler_seconds * 1e3:.2f} + kernels {f.kernel_seconds * 1e3:.2f})"
                   if f.kernel_seconds else "")
        lines.append(f"  estimated time {f.seconds * 1e3:.2f} ms{kernels} -> {f.samples_per_second_per_chip():.1f} "
                     f"samples/s per chip, {f.batch / f.seconds:.1f} per slice; {100 * share:.0f}% of the chip's "
                     "bf16 peak")
    else:
        lines.append("  estimated time: not given by the compiler for this program")
    if f.loops:
        lines.append(f"  {f.loops} loop(s) in the program: the compiler counts each body once")
    return lines


def as_record(f: Figures, target: Target) -> dict:
    """The figures as one JSON-able dict (a row of benchmarks/RESULTS.md's TPU section)."""
    record = dataclasses.asdict(f)
    record.update(target=target.name, topology=target.topology, fits=f.fits, flops_per_sample=f.flops_per_sample,
                  samples_per_s_per_chip=f.samples_per_second_per_chip(), peak_share=f.peak_share(target))
    return record
