"""The sample store under real concurrent writer processes and a writer SIGKILLed
mid-append."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from controller.samplestore import SampleStore
from exporter.samples import Mode, Sample, SampleReader, read_all
from tests.support import REPO

WRITER = """
import sys
from pathlib import Path
from controller.samplestore import SampleStore
from exporter.samples import Sample

store = SampleStore(Path(sys.argv[1]))
writer, count, pad = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for n in range(count):
    # A large field makes each line span several pages: a torn or interleaved write would
    # show as an unparseable line.
    store.append(Sample(model=writer, seconds=float(n), mode="cold", padding="x" * pad,
                        writer=writer, seq=n))
"""


def _writer(
    store: Path, name: str, count: int, pad: int, wrapper: Sequence[str] = ()
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*wrapper, sys.executable, "-c", WRITER, str(store), name, str(count), str(pad)],
        cwd=REPO,
        text=True,
    )


def test_concurrent_writer_processes_never_interleave(tmp_path: Path) -> None:
    store = tmp_path / "state" / "samples.jsonl"  # the directory is created on demand
    writers = [_writer(store, f"w{n}", 150, 20_000 + n * 7_001) for n in range(4)]
    for w in writers:
        assert w.wait(120) == 0
    lines = store.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a newline: no torn tail
    parsed = [json.loads(line) for line in lines[:-1]]  # every line is whole JSON
    assert len(parsed) == 600
    for n in range(4):
        seqs = [p["seq"] for p in parsed if p["writer"] == f"w{n}"]
        assert seqs == list(range(150))  # each writer's own order is kept
    reader = SampleReader(store)
    assert len(reader.read_new()) == 600
    assert reader.invalid_lines == 0


def test_a_writer_killed_mid_append_loses_only_its_own_sample(tmp_path: Path) -> None:
    store_path = tmp_path / "samples.jsonl"
    store = SampleStore(store_path)
    earlier = [Sample(model="m", seconds=float(n), mode=Mode.WARM) for n in range(3)]
    store.append_many(earlier)
    marker = tmp_path / "half-written"
    # Its writes to the store stop for a minute half-way (tests/pause_mid_write.py).
    pause = [sys.executable, "-m", "tests.pause_mid_write", str(store_path), str(marker), "60"]
    victim = _writer(store_path, "victim", 1, 50_000, wrapper=[*pause, "--"])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert victim.poll() is None, "the writer ended before the test could kill it"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    torn = store_path.read_bytes()
    assert not torn.endswith(b"\n")  # half a line is on disk: the kill landed mid-write

    # The lock died with the writer: the next append proceeds, after ending the torn line.
    after = Sample(model="m", seconds=9.0, mode=Mode.COLD, future_field={"kept": True})
    store.append(after)
    reader = SampleReader(store_path)
    samples = reader.read_new()
    assert [s.id for s in samples] == [s.id for s in earlier] + [after.id]
    assert reader.invalid_lines == 1  # the victim's half line, and nothing else
    assert samples[-1].extra_fields == {"future_field": {"kept": True}}
    assert samples[-1].seconds == 9.0


def test_unknown_fields_survive_a_round_trip(tmp_path: Path) -> None:
    store_path = tmp_path / "samples.jsonl"
    line = json.dumps(
        {"schema": 7, "model": "m", "seconds": 1.5, "mode": "cold", "gpu": "H200", "n": [1]}
    )
    store_path.write_text(line + "\n")
    (old,) = read_all(store_path)
    copy = tmp_path / "copy.jsonl"
    SampleStore(copy).append(old)
    (again,) = read_all(copy)
    assert again.extra_fields == {"gpu": "H200", "n": [1]}
    assert again.schema_version == 7
    assert json.loads(copy.read_text())["gpu"] == "H200"
