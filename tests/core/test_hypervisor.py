"""Free page reporting detection (fake sysfs trees) and the auto strategy it drives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.prewarm import Strategy, choose_strategy
from exporter.linux.hypervisor import free_page_reporting


def _device(root: Path, name: str, driver: str, features: str) -> None:
    drivers = root / "drivers" / driver
    drivers.mkdir(parents=True, exist_ok=True)
    device = root / "devices" / name
    device.mkdir(parents=True)
    (device / "driver").symlink_to(drivers)
    (device / "features").write_text(features + "\n")


@pytest.mark.parametrize(
    ("features", "expected"),
    [("0110010100000000", True), ("0110000100000000", False)],
    ids=["reporting", "balloon-without-reporting"],
)
def test_balloon_feature_bit_5_means_free_page_reporting(
    tmp_path: Path, features: str, expected: bool
) -> None:
    _device(tmp_path, "virtio1", "virtio_blk", "0010011111")  # bit 5 of another device
    _device(tmp_path, "virtio0", "virtio_balloon", features)
    assert free_page_reporting(tmp_path / "devices") is expected


def test_no_virtio_bus_is_bare_metal(tmp_path: Path) -> None:
    assert free_page_reporting(tmp_path / "missing") is False


def _on_an_old_kernel(expected: tuple[Strategy, str]) -> tuple[Strategy, str]:
    """MADV_POPULATE_READ came with Linux 5.14 (told by the release, not by a probe): before
    it, auto always reads."""
    major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    if (major, minor) >= (5, 14):
        return expected
    return Strategy.READ, "MADV_POPULATE_READ needs Linux 5.14+"


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ("0110010100000000", (Strategy.READ, "VM guest with free page reporting (virtio balloon)")),
        ("0110000100000000", (Strategy.POPULATE, "MADV_POPULATE_READ available")),
    ],
    ids=["reporting-guest-reads", "other-guest-populates"],
)
def test_auto_reads_through_the_cpu_only_on_a_guest_with_free_page_reporting(
    tmp_path: Path, features: str, expected: tuple[Strategy, str]
) -> None:
    _device(tmp_path, "virtio0", "virtio_balloon", features)
    chosen = choose_strategy(Strategy.AUTO, virtio_devices=tmp_path / "devices")
    assert chosen == _on_an_old_kernel(expected)


def test_auto_on_bare_metal_populates_and_explicit_choices_stand(tmp_path: Path) -> None:
    chosen = choose_strategy(Strategy.AUTO, virtio_devices=tmp_path / "missing")
    assert chosen == _on_an_old_kernel((Strategy.POPULATE, "MADV_POPULATE_READ available"))
    for strategy in (Strategy.POPULATE, Strategy.READ):
        assert choose_strategy(strategy, virtio_devices=tmp_path / "missing") == (
            strategy,
            "requested",
        )
