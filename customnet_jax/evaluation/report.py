"""The evaluation table: per-picture CSV, summary CSV, one JSON with everything, and a printed table.

    <prefix>_per_image.csv   one row per generated picture (key columns + every metric / measure)
    <prefix>_summary.csv     mean / std / n per metric for: all, each view, each object, each prompt
    <prefix>.json            {"info": ..., "columns": ..., "summary": {...}, "rows": [...]} (NaN -> null)
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from customnet_jax.evaluation.metrics import aggregate, metric_columns

LABELS = {"dino_i": "DINO-I", "clip_i": "CLIP-I", "clip_t": "CLIP-T", "location_iou": "Loc IoU",
          "background_psnr": "BG PSNR", "view_agreement": "View agr", "view_wrong": "Wrong view",
          "view_margin": "View margin", "identity_colour": "Id colour", "identity_area": "Id area"}
GROUPINGS = {"all": (), "view": ("view", "polar", "azimuth", "radius"), "object": ("object",),
             "prompt": ("prompt_index", "background_text")}


def summaries(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """aggregate() for each grouping (all, view, object, prompt); a grouping with one group is kept only for all."""
    out = {}
    for name, by in GROUPINGS.items():
        groups = aggregate(rows, by)
        if name == "all" or len(groups) > 1:
            out[name] = groups
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _write_csv(path: pathlib.Path, rows: Sequence[dict], first: Sequence[str] = ()) -> None:
    present = {k for row in rows for k in row}
    columns = [k for k in first if k in present]
    for row in rows:
        columns += [k for k in row if k not in columns]
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_report(rows: Sequence[dict], prefix: str | pathlib.Path, info: dict | None = None) -> dict[str, Any]:
    """Write the three files for `rows`; returns {"files": [...], "summary": ...}."""
    prefix = pathlib.Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    summary = summaries(rows)
    files = [prefix.with_name(prefix.name + "_per_image.csv"), prefix.with_name(prefix.name + "_summary.csv"),
             prefix.with_name(prefix.name + ".json")]
    _write_csv(files[0], rows)
    keys = ["grouping", *dict.fromkeys(k for by in GROUPINGS.values() for k in by)]
    _write_csv(files[1], [{"grouping": name, **group} for name, groups in summary.items() for group in groups], keys)
    document = {"info": info or {}, "columns": metric_columns(rows), "summary": summary, "rows": list(rows)}
    tmp = files[2].with_name(files[2].name + ".partial")
    tmp.write_text(json.dumps(_clean(document), indent=1, default=str))
    os.replace(tmp, files[2])
    return {"files": files, "summary": summary}


def _cell(group: dict, metric: str) -> str:
    mean, std = group.get(f"{metric}_mean"), group.get(f"{metric}_std")
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.4f}+-{std:.4f}"


def format_table(summary: dict[str, list[dict]], metrics: Sequence[str]) -> str:
    """The overall row and one row per view: mean+-std of each metric, as aligned text."""
    lines = []
    for name in ("all", "view"):
        for group in summary.get(name, []):
            label = "all" if name == "all" else \
                f"view {group['view']} ({group['polar']:g}, {group['azimuth']:g}, {group['radius']:g})"
            lines.append([label, str(group["count"])] + [_cell(group, m) for m in metrics])
    header = ["group", "n"] + [LABELS.get(m, m) for m in metrics]
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                   strict=True)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in lines)])
