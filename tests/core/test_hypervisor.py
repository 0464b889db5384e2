"""Free page reporting detection (fake sysfs trees) and the auto strategy it drives."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.prewarm import Strategy, choose_strategy
from exporter.linux.hypervisor import VIRTIO_DEVICES, free_page_reporting


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


def test_auto_follows_this_machine_and_explicit_choices_stand() -> None:
    strategy, reason = choose_strategy(Strategy.AUTO)
    if free_page_reporting(VIRTIO_DEVICES):
        assert (strategy, reason) == (
            Strategy.READ,
            "VM guest with free page reporting (virtio balloon)",
        )
    else:
        assert strategy is Strategy.POPULATE
    assert choose_strategy(Strategy.POPULATE) == (Strategy.POPULATE, "requested")
