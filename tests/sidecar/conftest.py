"""Fixtures of the sidecar tests: a fresh work directory and clean-up of every process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sidecar.pod import FakeVllm, Sidecar


class Processes:
    """Everything a test started, stopped at its end whatever happened."""

    def __init__(self) -> None:
        self.sidecars: list[Sidecar] = []
        self.fakes: list[FakeVllm] = []

    def sidecar(self, sidecar: Sidecar) -> Sidecar:
        self.sidecars.append(sidecar)
        return sidecar

    def fake(self, fake: FakeVllm) -> FakeVllm:
        self.fakes.append(fake)
        return fake

    def stop_all(self) -> None:
        for fake in self.fakes:
            fake.stop()
        for sidecar in self.sidecars:
            if sidecar.process.poll() is None:
                sidecar.process.kill()
                sidecar.process.wait(30)


@pytest.fixture
def processes() -> Iterator[Processes]:
    tracked = Processes()
    yield tracked
    tracked.stop_all()
