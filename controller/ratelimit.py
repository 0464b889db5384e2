"""A token bucket shared by the pre-warm threads, for a gentle warm on shared storage."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    def __init__(self, bytes_per_second: float | None) -> None:
        self.rate = bytes_per_second
        self._lock = threading.Lock()
        self._next_free = time.monotonic()

    def acquire(self, nbytes: int, cancel: threading.Event | None = None) -> None:
        """Block until ``nbytes`` may pass (at once when unlimited or cancelled)."""
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_free)
            self._next_free = start + nbytes / self.rate
        delay = start - now
        if delay > 0:
            if cancel is not None:
                cancel.wait(delay)
            else:
                time.sleep(delay)
