"""The sample store read as untrusted input, forever: every kind of bad line is counted and
skipped, never costs the valid sample after it, never fails a collection, never makes
`pagewarm samples` or `pagewarm report` print a traceback; and a naive timestamp, merged
into a report's archive, never breaks a later report."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.samplestore import SampleStore
from exporter.collectors.samples import SamplesCollector
from exporter.samples import MAX_LINE_BYTES, Mode, Sample, SampleReader, read_all
from tests.exporter.util import value
from tests.support import pagewarm

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
COUNT = "pagewarm_load_duration_seconds_count"
INVALID = "pagewarm_sample_store_invalid_lines_total"

# One bad line each (newline included), as they have been found in stores.
HOSTILE: dict[str, bytes] = {
    # RecursionError in json.loads.
    "nested_past_the_recursion_limit": b'{"model": "m", "seconds": 1, "x": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}\n",
    # Parses, but pydantic cannot write it back: it would break every report's archive.
    "nested_too_deep_to_write_back": b'{"model": "m", "seconds": 1, "x": '
    + b"[" * 500
    + b"]" * 500
    + b"}\n",
    "nul_block": b"\0" * 4096 + b"\n",
    "binary_garbage": bytes(b for b in range(1, 256) if b != ord("\n")) * 8 + b"\n",
    "longer_than_any_sample": b'{"model": "' + b"x" * (3 * MAX_LINE_BYTES) + b'", "seconds": 1}\n',
    "invalid_utf8": b'{"model": "caf\xe9", "seconds": 1}\n',
    "timestamp_past_year_9999_in_utc": (
        b'{"model": "m", "seconds": 1, "timestamp": "9999-12-31T23:59:59-05:00"}\n'
    ),
    "size_past_64_bits": b'{"model": "m", "seconds": 1, "model_bytes": 1' + b"0" * 30 + b"}\n",
    "negative_duration": b'{"model": "m", "seconds": -1}\n',
    "infinite_duration": b'{"model": "m", "seconds": Infinity}\n',
    "not_an_object": b"[1, 2, 3]\n",
    "torn": b'{"model": "m", "seco\n',
}


def _sample(seconds: float, **fields: object) -> Sample:
    return Sample.model_validate(
        {"model": "m", "mode": Mode.COLD, "timestamp": T0, "seconds": seconds, **fields}
    )


def _line(seconds: float) -> bytes:
    return _sample(seconds).to_json_line().encode()


def _hostile_store(path: Path) -> int:
    """Every hostile line, each between valid samples, and a block of NULs glued to the
    front of a valid sample (no newline between); returns the number of valid samples."""
    data = _line(0.5)
    for n, bad in enumerate(HOSTILE.values(), start=1):
        data += bad + _line(float(n))
    data += b"\0" * 4096 + _line(99.0)
    path.write_bytes(data)
    return len(HOSTILE) + 2


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_bad_line_is_counted_and_never_costs_the_next_sample(tmp_path: Path, name: str) -> None:
    store = tmp_path / "samples.jsonl"
    store.write_bytes(_line(1.0) + HOSTILE[name] + _line(2.0))
    metrics = list(SamplesCollector(store).collect())
    assert value(metrics, COUNT) == 2
    assert value(metrics, INVALID) == 1
    reader = SampleReader(store)
    assert [s.seconds for s in reader.read_new()] == [1.0, 2.0]
    assert reader.invalid_lines == 1


def test_a_block_of_nuls_glued_to_a_sample_does_not_swallow_it(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    store.write_bytes(_line(1.0) + b"\0" * 4096 + _line(2.0))
    reader = SampleReader(store)
    assert [s.seconds for s in reader.read_new()] == [1.0, 2.0]
    assert reader.invalid_lines == 1  # the NULs


def test_every_bad_line_at_once_in_the_collectors_chunks(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    valid = _hostile_store(store)
    collector = SamplesCollector(store)
    metrics = list(collector.collect())
    assert value(metrics, COUNT) == valid
    assert value(metrics, INVALID) == len(HOSTILE) + 1  # and the glued NULs
    again = list(collector.collect())  # nothing new: nothing counted twice
    assert (value(again, COUNT), value(again, INVALID)) == (valid, len(HOSTILE) + 1)
    assert len(read_all(store)) == valid


def test_a_long_line_still_being_written_is_skipped_without_being_held(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    store.write_bytes(_line(1.0) + b"x" * (2 * MAX_LINE_BYTES))  # no newline yet
    collector = SamplesCollector(store)
    metrics = list(collector.collect())
    assert (value(metrics, COUNT), value(metrics, INVALID)) == (1, 1)
    assert collector.reader.offset == store.stat().st_size  # read past, not kept to re-read
    with store.open("ab") as handle:
        handle.write(b"x" * MAX_LINE_BYTES + b"\n" + _line(2.0))
    metrics = list(collector.collect())
    assert (value(metrics, COUNT), value(metrics, INVALID)) == (2, 1)


def test_timestamps_are_utc_whatever_the_line_says(tmp_path: Path) -> None:
    naive = {"model": "m", "seconds": 1.0, "timestamp": "2026-11-01T12:00:00"}
    other_zone = {**naive, "seconds": 2.0, "timestamp": "2026-11-01T14:00:00+02:00"}
    unix = {**naive, "seconds": 3.0, "timestamp": T0.timestamp() + 60}
    store = tmp_path / "samples.jsonl"
    store.write_text("".join(json.dumps(d) + "\n" for d in (naive, other_zone, unix)))
    samples = read_all(store)
    assert [s.timestamp for s in samples] == [T0, T0, T0 + timedelta(seconds=60)]
    assert all(s.timestamp.utcoffset() == timedelta(0) for s in samples)
    assert sorted(s.timestamp for s in [*samples, _sample(4.0)])  # comparable, no TypeError
    assert '"timestamp":"2026-11-01T12:00:00Z"' in samples[0].to_json_line()


def test_text_that_is_not_unicode_is_made_printable_not_refused(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    store.write_text('{"model": "caf\\udce9", "seconds": 1, "error": "\\ud800"}\n')
    (sample,) = read_all(store)
    assert sample.model == "caf\ufffd"  # the byte 0xe9 of a Latin-1 file name
    assert sample.error is not None
    assert set(sample.error) == {"\ufffd"}
    listed = pagewarm("samples", env={"PAGEWARM_SAMPLES": str(store)})
    assert listed.returncode == 0, listed.stderr
    assert "caf\ufffd" in listed.stdout


@pytest.mark.timeout(30)
def test_a_store_that_is_a_fifo_or_a_directory_is_an_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)  # opened for reading without O_NONBLOCK, this would block forever
    for path in (fifo, tmp_path):
        with pytest.raises(OSError, match="not a regular file"):
            SampleReader(path).read_new()
        with pytest.raises(OSError, match="not a regular file"):
            list(SamplesCollector(path).collect())


def _no_traceback(result: object) -> None:
    stderr = getattr(result, "stderr", "")
    assert "Traceback" not in stderr, stderr


def test_samples_lists_the_valid_samples_of_a_hostile_store(tmp_path: Path) -> None:
    store = tmp_path / "samples.jsonl"
    valid = _hostile_store(store)
    env = {"PAGEWARM_SAMPLES": str(store)}
    table = pagewarm("samples", env=env)
    _no_traceback(table)
    assert table.returncode == 0, table.stderr
    assert f"{valid} samples in {store}; {len(HOSTILE) + 1} unreadable lines skipped" in (
        table.stdout
    )
    lines = pagewarm("samples", "--json", env=env)
    _no_traceback(lines)
    assert lines.returncode == 0, lines.stderr
    assert len([json.loads(line) for line in lines.stdout.splitlines()]) == valid


def test_report_of_a_hostile_store_reports_the_valid_samples(tmp_path: Path) -> None:
    store, out = tmp_path / "samples.jsonl", tmp_path / "out"
    valid = _hostile_store(store)
    result = pagewarm("report", "--out", out, env={"PAGEWARM_SAMPLES": str(store)})
    _no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert f"{valid} samples reported" in result.stdout
    archived = read_all(out / "storage_load_bench.jsonl")
    assert len(archived) == valid
    assert len((out / "storage_load_bench.csv").read_text().splitlines()) == valid + 1


def test_a_naive_timestamp_never_poisons_the_archive(tmp_path: Path) -> None:
    """The issue's scenario: a sample with a naive timestamp beside aware ones made report
    fail with a TypeError after merging it into OUT/storage_load_bench.jsonl, so that every
    later report into OUT failed, even from a clean store."""
    store, out = tmp_path / "samples.jsonl", tmp_path / "out"
    naive = {"model": "m", "mode": "cold", "seconds": 7.0, "timestamp": "2026-11-01T11:00:00"}
    SampleStore(store).append_many([_sample(5.0), _sample(6.0, mode=Mode.WARM)])
    with store.open("a") as handle:
        handle.write(json.dumps(naive) + "\n")
    first = pagewarm("report", "--out", out, env={"PAGEWARM_SAMPLES": str(store)})
    _no_traceback(first)
    assert first.returncode == 0, first.stderr
    assert "3 samples reported" in first.stdout

    # An archive written by an earlier version holds the naive line as it was.
    archive = out / "storage_load_bench.jsonl"
    with archive.open("a") as handle:
        handle.write(json.dumps({**naive, "id": "from-an-earlier-version"}) + "\n")
    clean = tmp_path / "clean.jsonl"
    SampleStore(clean).append(_sample(8.0, timestamp=T0 + timedelta(hours=1)))
    for extra in ((), ("--since", "2026-11-01T11:30:00")):
        later = pagewarm("report", "--out", out, *extra, env={"PAGEWARM_SAMPLES": str(clean)})
        _no_traceback(later)
        assert later.returncode == 0, later.stderr
    assert len(read_all(archive)) == 5
