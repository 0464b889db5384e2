"""Write the dashboards' JSON from the code in this package, or check it is up to date.

    python -m grafana.generate            # rewrite grafana/*.json
    python -m grafana.generate --check    # exit 1 and name the stale files

The JSON is what Grafana imports and what the Helm chart ships; it is committed, and
tests/monitoring checks that it equals what this writes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.models import dashboard as models

from grafana import cold_starts_overview, node_model_cache, sidecars
from grafana.panels import render

DIRECTORY = Path(__file__).resolve().parent

DASHBOARDS: dict[str, Callable[[], models.Dashboard]] = {
    cold_starts_overview.FILE_NAME: cold_starts_overview.build,
    node_model_cache.FILE_NAME: node_model_cache.build,
    sidecars.FILE_NAME: sidecars.build,
}


def generated() -> dict[str, str]:
    """File name -> the JSON text it must hold."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def stale(directory: Path = DIRECTORY) -> list[str]:
    """The dashboard files in ``directory`` that differ from the generated JSON."""
    return [
        name
        for name, text in generated().items()
        if not (directory / name).is_file() or (directory / name).read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    parser.add_argument("--directory", type=Path, default=DIRECTORY, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.directory)
        for name in out_of_date:
            print(f"{args.directory / name}: out of date; run python -m grafana.generate")
        return 1 if out_of_date else 0
    for name, text in generated().items():
        (args.directory / name).write_text(text)
        print(f"wrote {args.directory / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
