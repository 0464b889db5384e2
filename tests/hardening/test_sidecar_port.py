"""The sidecar on a busy port fails before it warms anything: one line, a non-zero exit,
no sample (a crash loop used to record a bogus pre-warm at every restart)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.residency import ResidencyProbe
from exporter.weightset import discover
from tests.support import evict_path, pagewarm


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("restarts", [1, 3], ids=["start", "crash loop"])
def test_a_busy_port_fails_before_the_warm(
    small_model: Path, tmp_path: Path, busy_port: int, restarts: int
) -> None:
    evict_path(small_model)
    store = tmp_path / "samples.jsonl"
    for _ in range(restarts):
        result = pagewarm(
            "sidecar",
            small_model,
            "--host",
            "127.0.0.1",
            "--port",
            str(busy_port),
            "--vllm-url",
            "none",
            "--samples",
            store,
        )
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        errors = [json.loads(line) for line in result.stderr.splitlines() if '"error"' in line]
        assert [e["event"] for e in errors] == ["cannot listen"]
        assert "address already in use" in errors[0]["error"].lower()
    assert not store.exists()
    # Nothing was warmed: the model is as cold as it was (DAMON only ever takes pages).
    resident = ResidencyProbe().measure(discover(small_model))
    assert resident.ratio is not None
    assert resident.ratio < 0.05
