"""Where a compiled program's memory traffic goes: its optimized HLO text, instruction by instruction.

    python -m customnet_jax.aot ... --hlo /tmp/hlo          # writes /tmp/hlo/train_step.hlo.txt
    python -m customnet_jax.aot.traffic /tmp/hlo/train_step.hlo.txt [--top 25]

`cost_analysis()` gives one 'bytes accessed' for the whole program; this splits it. Each top-level instruction
of the entry computation (and of the loops and branches it calls, counted once as XLA counts them) moves its
operands' and its result's bytes; they are grouped by what the instruction computes (the fused computation's
main operation: convolution, dot, reduce, ... and whether jax's name stack puts it in the backward pass,
`transpose(...)`) and by the source line of the model code that emitted it. Arrays count as stored (padded to
TPU tiles; on-chip VMEM buffers count 0). On XLA:CPU the sum equals XLA's own figure; on TPU it is this
module's accounting, not XLA's (docs/tpu.md): read its shares, not its total.

A TPU program also carries the compiler's own time estimate of each kernel (`"estimated_cycles"` in its backend
config); the same tables give their split. On the full-size v5p train step their sum at v5p's 1.75 GHz is within
2 % of the program's `optimal_seconds` (docs/tpu.md), so it says where the compiler's estimate goes.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import sys
from collections.abc import Iterable, Sequence

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
               "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8,
               "c128": 16}
# dtype[dims] and its layout {minor-to-major:tiling S(memory space)}; memory space 1 is on-chip (VMEM on TPU)
_ARRAY = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([0-9,]*)\](\{[^}]*\})?")
_ON_CHIP = re.compile(r"S\(([1-9])\)")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*(\(.*\))?\s*->.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$")
_CALLS = re.compile(r"\b(?:calls|body|condition|to_apply|branch_computations)=\{?([%\w.\-, ]+)\}?")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_OPERAND = re.compile(r"%([\w.\-]+)")
# the main operation of a fused computation, most telling first
_MAIN_OPS = ("custom-call", "convolution", "dot", "all-gather", "reduce-scatter", "all-reduce", "reduce-window",
             "reduce", "select-and-scatter", "scatter", "gather", "sort", "transpose", "copy",
             "dynamic-update-slice", "dynamic-slice", "concatenate", "pad", "exponential", "divide", "multiply",
             "add", "convert")
_NOT_TRAFFIC = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all", "partition-id",
                "replica-id", "iota"}


def _padded(dims: list[int], layout: str) -> list[int]:
    """Dimensions as stored: the layout's first tile `T(a,b)` pads the two most minor dimensions (minor-to-major
    order first in the layout) to multiples of (a, b): a TPU array with a 40-wide minor dimension holds 128."""
    order, _, tiling = layout.strip("{}").partition(":")
    tile = re.search(r"T\(([0-9,]+)\)", tiling)
    if not tile or not dims or not order:
        return dims
    minor_to_major = [int(d) for d in order.split(",") if d.strip().isdigit()]
    padded = list(dims)
    for size, axis in zip(reversed([int(t) for t in tile.group(1).split(",")]), minor_to_major, strict=False):
        padded[axis] = -(-padded[axis] // size) * size
    return padded


def array_bytes(text: str) -> float:
    """Bytes in device memory (HBM) of every array shape written in `text` (a shape or a tuple of shapes), as
    stored: padded to the layout's tiles; arrays whose layout puts them in an on-chip memory space (`S(1)`: TPU
    VMEM, where the compiler prefetches weights and keeps small buffers) are not memory traffic and count 0."""
    total = 0.0
    for dtype, dims, layout in _ARRAY.findall(text):
        if _ON_CHIP.search(layout):
            continue
        count = 1
        for d in _padded([int(d) for d in filter(None, dims.split(","))], layout):
            count *= d
        total += count * DTYPE_BYTES[dtype]
    return total


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    result_bytes: float
    operand_bytes: float
    calls: list[str]
    op_name: str
    source: str
    cycles: int = 0  # the TPU compiler's estimate for this kernel (0: none given, e.g. XLA:CPU)

    @property
    def bytes(self) -> float:
        return self.result_bytes + self.operand_bytes


def _operand_text(rest: str) -> str:
    """The text inside an instruction's operand parentheses (`rest` starts just after the opening one)."""
    depth = 1
    for index, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return rest[:index]
    return rest


def _stack_sources(text: str, package: str) -> dict[int, str]:
    """stack_frame_id -> 'file.py:line' of the innermost frame inside `package` (the module's StackFrames,
    FileLocations and FileNames tables)."""
    tables: dict[str, dict[int, str]] = collections.defaultdict(dict)
    section = None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        if section is None or not line.strip():
            if section is not None and not line.strip():
                section = None
            continue
        key, _, value = line.partition(" ")
        if key.isdigit():
            tables[section][int(key)] = value
    field = lambda value, name: int(re.search(name + r"=(\d+)", value).group(1))
    sources = {}
    for frame_id in tables["StackFrames"]:
        frame, seen = frame_id, set()
        while frame in tables["StackFrames"] and frame not in seen:
            seen.add(frame)
            entry = tables["StackFrames"][frame]
            location = tables["FileLocations"].get(field(entry, "file_location_id"), "")
            if location:
                file = tables["FileNames"].get(field(location, "file_name_id"), "").strip('"')
                if package in file:
                    sources[frame_id] = f"{file.split(package + '/', 1)[-1]}:{field(location, 'line')}"
                    break
            frame = field(entry, "parent_frame_id")
    return sources


def parse(text: str, package: str = "customnet_jax") -> tuple[dict[str, list[Instruction]], str]:
    """HLO module text -> ({computation: instructions}, entry computation name)."""
    sources = _stack_sources(text, package)
    computations: dict[str, list[Instruction]] = {}
    entry, current, sizes = "", None, {}
    for line in text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current, sizes = header.group(2), {}
            computations[current] = []
            if header.group(1):
                entry = current
            continue
        match = _INSTRUCTION.match(line) if current is not None else None
        if not match:
            continue
        _, name, shape, opcode, rest = match.groups()
        sizes[name] = array_bytes(shape)
        operands = _operand_text(rest)
        operand_bytes = sum(sizes.get(o, 0.0) for o in _OPERAND.findall(operands)) + array_bytes(operands)
        result_bytes = sizes[name]
        if opcode == "copy-start":  # (destination, source alias, context): the source is read, the destination written
            destination = _ARRAY.search(shape)
            result_bytes = array_bytes(destination.group(0)) if destination else 0.0
        elif opcode == "copy-done":  # the bytes moved are counted at copy-start
            result_bytes = operand_bytes = 0.0
        calls = [c.strip().lstrip("%") for group in _CALLS.findall(rest) for c in group.split(",") if c.strip()]
        op_name = _OP_NAME.search(rest)
        frame = _FRAME.search(rest)
        cycles = _CYCLES.search(rest)
        computations[current].append(Instruction(
            name, opcode, result_bytes, operand_bytes, calls, op_name.group(1) if op_name else "",
            sources.get(int(frame.group(1)), "") if frame else "", int(cycles.group(1)) if cycles else 0))
    return computations, entry


def _main_op(computations: dict[str, list[Instruction]], instruction: Instruction) -> str:
    if instruction.opcode not in ("fusion", "async-start", "call"):
        return instruction.opcode
    inside = {i.opcode for c in instruction.calls for i in computations.get(c, [])}
    for op in _MAIN_OPS:
        if op in inside:
            return op
    return "elementwise"


def top_level(computations: dict[str, list[Instruction]], entry: str) -> Iterable[Instruction]:
    """The instructions that run as kernels: the entry's, and those of the loops / branches it calls."""
    seen, stack = set(), [entry]
    while stack:
        name = stack.pop()
        if name in seen or name not in computations:
            continue
        seen.add(name)
        for instruction in computations[name]:
            if instruction.opcode in ("while", "conditional", "call"):
                stack.extend(instruction.calls)
                continue
            if instruction.opcode not in _NOT_TRAFFIC:
                yield instruction


def pass_of(op_name: str) -> str:
    return "backward" if "transpose(" in op_name else "forward"


def summarize(text: str, package: str = "customnet_jax") -> dict:
    """{'total': bytes, 'cycles': the compiler's estimated cycles, 'by_kind' / 'cycles_by_kind': {(main op, pass):
    bytes / cycles}, 'by_source' / 'cycles_by_source': {source line: ...}, 'largest': [...], 'slowest': [...]}."""
    computations, entry = parse(text, package)
    tables = {name: collections.Counter() for name in ("by_kind", "by_source", "cycles_by_kind", "cycles_by_source")}
    instructions = list(top_level(computations, entry))
    for instruction in instructions:
        kind = (_main_op(computations, instruction), pass_of(instruction.op_name))
        source = instruction.source or "(no source)"
        tables["by_kind"][kind] += instruction.bytes
        tables["by_source"][source] += instruction.bytes
        tables["cycles_by_kind"][kind] += instruction.cycles
        tables["cycles_by_source"][source] += instruction.cycles
    return {"total": sum(i.bytes for i in instructions), "cycles": sum(i.cycles for i in instructions), **tables,
            "largest": sorted(instructions, key=lambda i: -i.bytes),
            "slowest": sorted(instructions, key=lambda i: -i.cycles), "instructions": len(instructions)}


def _tables(summary: dict, top: int, total: float, fmt, prefix: str, kernels: str, value) -> list[str]:
    """The by-kind, by-source and top-kernel tables of one measure (`prefix` "" for bytes, "cycles_" for cycles)."""
    lines = []
    for title, table in (("by operation and pass:", prefix + "by_kind"), ("by source line:", prefix + "by_source")):
        lines.append(title)
        for key, amount in summary[table].most_common(top):
            label = f"{key[0]:20s} {key[1]}" if isinstance(key, tuple) else key
            lines.append(f"  {fmt(amount)} {100 * amount / total:5.1f}%  {label}")
    lines.append(f"{kernels} kernels:")
    for i in summary[kernels][:top]:
        lines.append(f"  {fmt(value(i))}  {i.opcode:12s} {i.name:28s} {i.source:24s} {i.op_name[-90:]}")
    return lines


def report(summary: dict, top: int = 20) -> list[str]:
    gb = lambda b: f"{b / 1e9:8.2f} GB"
    total, cycles = summary["total"], summary["cycles"]
    lines = [f"{summary['instructions']} kernels; operands + results {gb(total)}"]
    lines += _tables(summary, top, total, gb, "", "largest", lambda i: i.bytes)
    if not cycles:
        return lines + ["(no per-kernel estimates in this program: the TPU compiler writes them)"]
    mc = lambda c: f"{c / 1e6:8.2f} M"
    lines.append(f"the compiler's per-kernel estimates: {mc(cycles)} cycles ({cycles / 1.75e9 * 1e3:.1f} ms at v5p's "
                 "1.75 GHz):")
    return lines + _tables(summary, top, cycles, mc, "cycles_", "slowest", lambda i: i.cycles)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m customnet_jax.aot.traffic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hlo", help="an optimized HLO text file (python -m customnet_jax.aot ... --hlo DIR)")
    parser.add_argument("--top", type=int, default=20, help="rows per table")
    args = parser.parse_args(argv)
    try:
        text = open(args.hlo).read()
    except OSError as error:
        print(f"error: cannot read {args.hlo}: {error.strerror}; give a file written by --hlo", file=sys.stderr)
        return 2
    summary = summarize(text)
    if not summary["instructions"]:
        print(f"error: {args.hlo} holds no HLO module (no ENTRY computation); give a file written by --hlo",
              file=sys.stderr)
        return 2
    print("\n".join(report(summary, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
