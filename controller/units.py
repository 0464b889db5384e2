"""Byte sizes as people write them ("4GiB", "512M") and as tables print them."""

from __future__ import annotations

import re

MiB = 1 << 20
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """'4GiB' -> 4294967296; bare K/M/G/T are binary, KB/MB/GB/TB decimal."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 4GiB, 512MiB, 1.5G, 1000000)")
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_rate(bytes_per_second: float) -> str:
    return f"{bytes_per_second / (1 << 30):.2f} GiB/s"


def format_ratio(ratio: float | None) -> str:
    return "unknown" if ratio is None else f"{ratio * 100:.1f}%"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """'30s' -> 30.0, '500ms' -> 0.5, '2m' -> 120.0; a bare number is seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 500ms, 2m, 45)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
