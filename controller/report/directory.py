"""The report directory: ``storage_load_bench.csv``, ``.md`` and ``.png`` rendered from the
archive of every sample the directory has reported (``storage_load_bench.jsonl``)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.linux.durable import write_atomically
from controller.report.markdown import render_markdown
from controller.report.plot import write_plot
from controller.samplestore import SampleStore
from exporter.samples import Sample, read_all

CSV_NAME = "storage_load_bench.csv"
MD_NAME = "storage_load_bench.md"
PNG_NAME = "storage_load_bench.png"
ARCHIVE_NAME = "storage_load_bench.jsonl"

# The CSV's columns, in this order for ever; new fields are added at the end.
CSV_COLUMNS = (
    "timestamp",
    "id",
    "kind",
    "source",
    "bench_id",
    "run_index",
    "host",
    "model",
    "model_path",
    "model_bytes",
    "device",
    "scheduler",
    "fstype",
    "mode",
    "declared_mode",
    "mode_verified",
    "loader",
    "target",
    "seconds",
    "resident_ratio_before",
    "resident_ratio_after",
    "prewarm_seconds",
    "prewarm_id",
    "strategy",
    "threads",
    "bytes_read",
    "throughput_bytes_per_second",
    "partial",
    "outcome",
    "error",
    "kernel",
    "memory_total_bytes",
    "read_ahead_bytes",
    "scheduler_note",
    "extra",  # fields this version does not know, as JSON
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def csv_row(sample: Sample) -> list[str]:
    row = [_cell(getattr(sample, column)) for column in CSV_COLUMNS[:-1]]
    extra = sample.extra_fields
    row.append(json.dumps(extra, sort_keys=True, default=str) if extra else "")
    return row


def write_csv(samples: Sequence[Sample], path: Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_row(s) for s in samples)
    write_atomically(path, text.getvalue().encode())


@dataclass(frozen=True, slots=True)
class ReportPaths:
    csv: Path
    markdown: Path
    plot: Path | None
    archive: Path
    samples: int


def merge_into_archive(out: Path, samples: Sequence[Sample]) -> list[Sample]:
    """Add ``samples`` to the directory's archive (by id); return everything archived."""
    archive = out / ARCHIVE_NAME
    known = {s.id for s in read_all(archive)}
    new = [s for s in samples if s.id not in known]
    SampleStore(archive).append_many(new)
    return read_all(archive)


def filter_samples(
    samples: Iterable[Sample],
    *,
    model: str | None = None,
    since: datetime | None = None,
    bench_id: str | None = None,
) -> list[Sample]:
    return [
        s
        for s in samples
        if (model is None or s.model == model)
        and (since is None or s.timestamp >= since)
        and (bench_id is None or s.bench_id == bench_id)
    ]


def write_report(
    out: Path,
    samples: Sequence[Sample],
    *,
    source: str,
    model: str | None = None,
    since: datetime | None = None,
    bench_id: str | None = None,
) -> ReportPaths:
    out.mkdir(parents=True, exist_ok=True)
    archived = merge_into_archive(out, samples)
    shown = sorted(
        filter_samples(archived, model=model, since=since, bench_id=bench_id),
        key=lambda s: s.timestamp,
    )
    if not shown:
        raise ValueError("no samples to report (check the store and the filters)")
    csv_path, md_path, png_path = out / CSV_NAME, out / MD_NAME, out / PNG_NAME
    write_csv(shown, csv_path)
    plotted = write_plot(shown, png_path)
    md_path.write_text(render_markdown(shown, plot=PNG_NAME if plotted else None, source=source))
    return ReportPaths(
        csv_path, md_path, png_path if plotted else None, out / ARCHIVE_NAME, len(shown)
    )
