"""pagewarm status: how much of the model is in the page cache, file by file."""

from __future__ import annotations

import argparse
from typing import Any

from controller.commands import common
from controller.units import format_bytes, format_ratio
from exporter.residency import FileResidency, ModelResidency
from exporter.settings import CommonSettings

DESCRIPTION = """\
Show how much of a model's weight files is in the page cache.

The figure comes from cachestat(2) (Linux 6.5+) or mincore(2). Where the kernel would
fake it (files this user neither owns nor may write, without CAP_FOWNER) it is shown as
'unknown' with the reason, never as 100%.

examples:
  pagewarm status /models/llama-3-8b
  MODEL_PATH=/models/llama-3-8b pagewarm status --json
  pagewarm status ~/.cache/huggingface/hub/models--meta-llama--Llama-3.1-8B --map
"""

MAP_BUCKETS = 64
# vmtouch -v style: one character per 1/64 of the file, by resident fraction.
_MAP_GLYPHS = " .:oO"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="page-cache residency of a model",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    common.add_model_path(parser)
    common.add_json(parser)
    parser.add_argument(
        "--map",
        action="store_true",
        help=f"show each file as {MAP_BUCKETS} ranges, like vmtouch -v",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: CommonSettings) -> int:
    weight_set = common.weight_set(args, settings)
    residency = common.probe(settings).measure(weight_set, MAP_BUCKETS if args.map else 0)
    if args.json:
        common.print_json(residency_document(residency))
    else:
        print(render_table(residency, show_map=args.map))
    return 0


def file_document(f: FileResidency, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "file": name,
        "real_path": str(f.file.real_path),
        "role": str(f.file.role),
        "size_bytes": f.size,
        "resident_bytes": f.cached_bytes,
        "ratio": f.ratio,
        "method": str(f.method) if f.method else None,
        "dirty_bytes": f.dirty_bytes,
        "writeback_bytes": f.writeback_bytes,
        "evicted_bytes": f.evicted_bytes,
        "recently_evicted_bytes": f.recently_evicted_bytes,
        "unknown_reason": f.unknown_reason,
    }
    if f.buckets:
        doc["map"] = [round(b, 4) for b in f.buckets]
    return doc


def residency_document(residency: ModelResidency) -> dict[str, Any]:
    ws = residency.weight_set
    return {
        "model_path": str(ws.root),
        "files_count": len(residency.files),
        "size_bytes": residency.size_bytes,
        "resident_bytes": residency.cached_bytes,
        "ratio": residency.ratio,
        "trusted": residency.trusted,
        "methods": sorted(str(m) for m in residency.methods),
        "unknown_reasons": list(residency.unknown_reasons),
        "dirty_bytes": residency.dirty_bytes,
        "evicted_bytes": residency.evicted_bytes,
        "recently_evicted_bytes": residency.recently_evicted_bytes,
        "scan_seconds": round(residency.scan_seconds, 6),
        "files": [file_document(f, ws.display_name(f.file)) for f in residency.files],
        "skipped": [
            {"path": str(s.path), "reason": str(s.reason), "detail": s.detail} for s in ws.skipped
        ],
    }


def _map_line(buckets: tuple[float, ...]) -> str:
    top = len(_MAP_GLYPHS) - 1
    return "[" + "".join(_MAP_GLYPHS[round(b * top)] for b in buckets) + "]"


def render_table(residency: ModelResidency, *, show_map: bool = False) -> str:
    ws = residency.weight_set
    names = [ws.display_name(f.file) for f in residency.files]
    width = max([len("FILE"), *(len(n) for n in names)])
    lines = [f"{'FILE':<{width}}  {'SIZE':>11}  {'RESIDENT':>11}  {'RATIO':>7}"]
    for name, f in zip(names, residency.files, strict=True):
        lines.append(
            f"{name:<{width}}  {format_bytes(f.size):>11}  {format_bytes(f.cached_bytes):>11}  "
            f"{format_ratio(f.ratio):>7}"
        )
        if show_map and f.buckets:
            lines.append(f"  {_map_line(f.buckets)}")
    lines.append(
        f"{'TOTAL':<{width}}  {format_bytes(residency.size_bytes):>11}  "
        f"{format_bytes(residency.cached_bytes):>11}  {format_ratio(residency.ratio):>7}"
    )
    methods = ", ".join(sorted(str(m) for m in residency.methods)) or "none"
    lines.append("")
    lines.append(
        f"model {ws.root}: {len(residency.files)} files, method {methods}, "
        f"trusted {'yes' if residency.trusted else 'NO'}"
    )
    lines.extend(f"unknown: {reason}" for reason in residency.unknown_reasons)
    lines.extend(f"skipped: {s.path} ({s.reason}: {s.detail})" for s in ws.skipped)
    return "\n".join(lines)
