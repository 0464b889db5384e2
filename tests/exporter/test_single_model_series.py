"""A single-model exporter (the sidecar's, MODEL_PATH) exports exactly what it did before
issue 16 made the node's exporter cheap: the same families (HELP, TYPE and UNIT lines) and
the same series (name and label set). The reference, data/single_model_series.txt, was
written by this module's ``exposition_lines`` run on main before the change:

    PYTHONPATH=<main checkout> python tests/exporter/test_single_model_series.py > ...

Label values that name this machine (device, filesystem, mountpoint, scheduler, version)
are masked, and the memory cgroup's gauges, which exist or not by the host's cgroup
setup, are left out; everything else is compared line for line.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from exporter.collection import Collection
from exporter.collectors import build_registry
from exporter.models import ModelSpec
from exporter.samples import Mode, Sample, SampleKind
from exporter.settings import ExporterSettings

REFERENCE = Path(__file__).parent / "data" / "single_model_series.txt"
# What Prometheus 2.x sends.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
MACHINE_LABELS = ("device", "fstype", "mountpoint", "scheduler", "version")
ENVIRONMENT_FAMILIES = re.compile(r"pagewarm_memory_cgroup_\w+")
_MASK = re.compile(rf'\b({"|".join(MACHINE_LABELS)})="(?:[^"\\]|\\.)*"')


def _model(root: Path) -> Path:
    """Two shards, their index and config, a .bin beside them and a FIFO: every role, and
    skip reasons both zero and not."""
    root.mkdir(parents=True)
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        (root / name).write_bytes(os.urandom(64 << 10))
    (root / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00002-of-00002.safetensors",'
        ' "b": "model-00001-of-00002.safetensors"}}'
    )
    (root / "config.json").write_text("{}")
    (root / "pytorch_model.bin").write_bytes(b"\0" * 4096)
    os.mkfifo(root / "pipe.safetensors")
    return root


def _samples(store: Path) -> None:
    at = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    with store.open("w") as handle:
        handle.write(
            Sample(model="llama", seconds=42.0, mode=Mode.COLD, timestamp=at).to_json_line()
        )
        prewarm = Sample(
            model="llama",
            kind=SampleKind.PREWARM,
            mode=Mode.NONE,
            seconds=3.5,
            bytes_read=1 << 30,
            timestamp=at,
        )
        handle.write(prewarm.to_json_line())


def exposition_lines(root: Path) -> list[str]:
    """The families and series of a single-model exporter, as the sidecar builds it
    (one ModelSpec with a name, the settings' defaults), values dropped, machine masked."""
    model = _model(root / "llama")
    store = root / "samples.jsonl"
    _samples(store)
    registry = build_registry([ModelSpec(model, "llama")], ExporterSettings(samples=store))
    collection = Collection(registry, max_age_seconds=0)
    try:
        page = asyncio.run(collection.render(PROMETHEUS_ACCEPT))
    finally:
        collection.close()
    lines = set()
    for line in page.body.decode().splitlines():
        if ENVIRONMENT_FAMILIES.search(line):
            continue
        kept = line if line.startswith("#") else line.rsplit(" ", 1)[0]  # less the value
        lines.add(_MASK.sub(lambda m: f'{m.group(1)}="*"', kept))
    return sorted(lines)


def test_a_single_model_exports_what_it_exported_before(tmp_path: Path) -> None:
    expected = REFERENCE.read_text().splitlines()
    got = exposition_lines(tmp_path)
    missing = sorted(set(expected) - set(got))
    added = sorted(set(got) - set(expected))
    assert (missing, added) == ([], [])
    assert len(got) == len(expected)
    # The reference holds per-file series and zero skip reasons: the details that a node's
    # models directory leaves out must still be there for a single model.
    assert any(line.startswith('pagewarm_file_resident_bytes{file="model-00001') for line in got)
    assert 'pagewarm_model_skipped_files{model="llama",reason="link_loop"}' in got


if __name__ == "__main__":  # writes the reference (see the docstring)
    with tempfile.TemporaryDirectory() as directory:
        sys.stdout.write("\n".join(exposition_lines(Path(directory))) + "\n")
