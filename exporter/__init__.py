"""pagewarm's read-only view of a node: weight sets, page-cache residency, block devices,
memory, load samples, and the Prometheus exporter that publishes them."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pagewarm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
