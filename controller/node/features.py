"""The NFD feature file: ``<features.d>/pagewarm``, replaced atomically, only when its
content changes (NFD's worker re-reads the directory on its own schedule; an unchanged file
is left alone, so its mtime says when the map last changed).

A temporary file in the same directory (hidden: NFD skips names starting with a dot),
fsync'd, renamed over the old one: NFD sees the old lines or the new, never half.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from controller.linux.durable import write_atomically

log = structlog.get_logger("pagewarm")

FEATURE_FILE_NAME = "pagewarm"


class FeatureFile:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FEATURE_FILE_NAME
        try:
            self._written: str | None = self.path.read_text()
        except (OSError, UnicodeDecodeError):
            self._written = None
        self.error: str | None = None
        self.writes = 0

    def update(self, content: str) -> bool:
        """Write ``content`` if it differs from the file's; True when written. A failure is
        logged once (and kept in ``error``); the next pass tries again."""
        if content == self._written:
            return False
        try:
            write_atomically(self.path, content.encode(), mode=0o644)
        except OSError as exc:
            error = f"cannot write {self.path}: {exc.strerror or exc}"
            if error != self.error:
                log.error("feature file not written", error=error)  # noqa: TRY400
            self.error = error
            return False
        self._written, self.error = content, None
        self.writes += 1
        log.info("feature file written", path=str(self.path), lines=content.count("\n"))
        return True
