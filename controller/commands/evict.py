"""pagewarm evict: drop exactly this model's pages from the page cache, and verify."""

from __future__ import annotations

import argparse

import structlog

from controller.commands import common
from controller.evict import evict
from controller.units import format_bytes, format_ratio
from exporter.settings import CommonSettings

log = structlog.get_logger("pagewarm")

DESCRIPTION = """\
Drop the page-cache pages of a model's weight files (posix_fadvise DONTNEED, per file),
then measure what is left. No root needed; nothing else on the host is touched
(drop_caches is never used here).

Pages that stay resident are mapped by a running process (a serving engine holding the
weights) or still being written back; they are reported, not hidden.

examples:
  pagewarm evict /models/llama-3-8b
  pagewarm evict /models/llama-3-8b --json
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "evict",
        help="drop a model's pages from the page cache",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    common.add_model_path(parser)
    common.add_json(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: CommonSettings) -> int:
    result = evict(common.weight_set(args, settings), common.probe(settings))
    for path, error in result.errors:
        log.error("file not evicted", path=path, error=error)
    left = result.after.cached_bytes
    if left:
        log.warning(
            "pages remain resident after eviction (mapped by a process, or dirty)",
            resident_bytes=left,
        )
    if args.json:
        common.print_json(result.to_dict())
    else:
        print(
            f"evicted {format_bytes(result.before.size_bytes)} model in {result.seconds:.3f} s: "
            f"resident {format_bytes(result.before.cached_bytes)} -> {format_bytes(left)} "
            f"({format_ratio(result.after.ratio)})"
        )
    return 1 if result.errors else 0
