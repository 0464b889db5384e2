"""vLLM's log, for the lines that split weight loading from the rest of a start; their
wording varies by version:

- ``Model loading took 14.9888 GiB and 5.123456 seconds`` (v0.6.4+, V1 engine)
- ``Loading model weights took 12.5523 GB`` (older: memory only)
- ``Loading weights took 3.45 seconds`` (the weight loader itself, v0.7+)

``LogTail`` follows the file like ``tail -F``; ``parse_log_line`` finds the figures in a
line; ``LogFacts`` holds what one start's lines said.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Log lines longer than this are not vLLM's timing lines: skipped, never buffered whole.
MAX_LOG_LINE_BYTES = 64 << 10

_NUMBER = r"(\d+(?:\.\d+)?)"
_MODEL_LOADING = re.compile(
    rf"(?:Model loading|Loading model weights) took\s+{_NUMBER}\s*(GiB|GB)"
    rf"(?:\s+memory)?(?:\s*(?:and|,)\s*{_NUMBER}\s*s(?:ec(?:ond)?s?)?\b)?",
    re.IGNORECASE,
)
_WEIGHTS_LOADING = re.compile(
    rf"Loading weights took\s+{_NUMBER}\s*s(?:ec(?:ond)?s?)?\b", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class LogFacts:
    """What vLLM's log said about one start (the largest figure where several workers,
    tensor-parallel ranks, each log their own)."""

    model_load_seconds: float | None = None  # "Model loading took X GiB and Y seconds"
    model_memory_gib: float | None = None
    weights_seconds: float | None = None  # "Loading weights took Y seconds"

    def merge(self, other: LogFacts) -> LogFacts:
        return LogFacts(
            _larger(self.model_load_seconds, other.model_load_seconds),
            _larger(self.model_memory_gib, other.model_memory_gib),
            _larger(self.weights_seconds, other.weights_seconds),
        )

    @property
    def empty(self) -> bool:
        return self == LogFacts()

    @property
    def weight_loading_seconds(self) -> float | None:
        """The weight-reading part of the start: the loader's own figure where it logs one,
        else the model load (weights plus model construction)."""
        return self.weights_seconds if self.weights_seconds is not None else self.model_load_seconds

    def sample_fields(self, total_seconds: float) -> dict[str, Any]:
        weights = self.weight_loading_seconds
        return {
            "vllm_model_load_seconds": self.model_load_seconds,
            "vllm_model_memory_gib": self.model_memory_gib,
            "vllm_weights_seconds": weights,
            # The rest of the start: imports, CUDA init, compile, KV cache, the server.
            "vllm_other_seconds": None if weights is None else max(0.0, total_seconds - weights),
        }


def _larger(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def parse_log_line(line: str) -> LogFacts | None:
    """The timing facts in one line of vLLM's log, or None."""
    if match := _MODEL_LOADING.search(line):
        # Older versions print "GB" for what they computed as bytes / 2**30: GiB either way.
        amount, _unit, seconds = match.groups()
        return LogFacts(float(seconds) if seconds else None, float(amount), None)
    if match := _WEIGHTS_LOADING.search(line):
        return LogFacts(weights_seconds=float(match.group(1)))
    return None


class LogTail:
    """Follows a log file like ``tail -F``: new complete lines since ``mark()``, across
    rotation (the old file is read to its end first) and truncation. A missing file is no
    error (vLLM may create it later)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._partial = b""

    def mark(self) -> None:
        """From now on: skip what the file holds already."""
        self.close()
        self._open(at_end=True)

    def _open(self, *, at_end: bool) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            self._fd = self._identity = None
            return
        st = os.fstat(fd)
        if at_end:
            os.lseek(fd, 0, os.SEEK_END)
        self._fd, self._identity, self._partial = fd, (st.st_dev, st.st_ino), b""

    def read_lines(self) -> list[str]:
        lines = self._drain()
        try:
            st = self.path.stat()
        except OSError:
            return lines
        identity = (st.st_dev, st.st_ino)
        if self._fd is None or identity != self._identity:
            self.close()  # rotated (or created): the new file from its start
            self._open(at_end=False)
            lines += self._drain()
        elif st.st_size < os.lseek(self._fd, 0, os.SEEK_CUR):
            os.lseek(self._fd, 0, os.SEEK_SET)  # truncated
            self._partial = b""
            lines += self._drain()
        return lines

    def _drain(self) -> list[str]:
        if self._fd is None:
            return []
        chunks = [self._partial]
        while block := os.read(self._fd, 1 << 16):
            chunks.append(block)
        data = b"".join(chunks)
        complete, _, rest = data.rpartition(b"\n")
        self._partial = rest if len(rest) <= MAX_LOG_LINE_BYTES else b""
        if not complete and not data.endswith(b"\n"):
            return []
        return [
            line.decode(errors="replace")
            for line in complete.split(b"\n")
            if len(line) <= MAX_LOG_LINE_BYTES
        ]

    def read_facts(self) -> LogFacts:
        facts = LogFacts()
        for line in self.read_lines():
            found = parse_log_line(line)
            if found is not None:
                facts = facts.merge(found)
        return facts

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._identity = None
        self._partial = b""
