"""The released customnet_v1.pt key list (tests/data/customnet_v1_state_dict.tsv): name -> shape."""

import functools
import pathlib

TSV = pathlib.Path(__file__).parent / "data" / "customnet_v1_state_dict.tsv"


@functools.cache
def reference_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return shapes
