"""aiohttp's server log, less the noise of malformed requests.

aiohttp logs each request it cannot parse (a port scanner, TLS spoken to the plain port, a
header without a colon, a line too long) at ERROR with its traceback: 1.9 KB per request,
which anyone who can reach the metrics port turns into a log flood that buries the
exporter's own errors. Such a request is still answered 400 and its connection closed;
only its log changes: one short WARNING, at most one per interval, counting the ones
suppressed since the last. Everything else aiohttp logs, an exception in one of pagewarm's
own handlers above all, passes through unchanged, traceback included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

log = structlog.get_logger("pagewarm")

MALFORMED_LOG_INTERVAL_SECONDS = 60.0
# The parser's message quotes the client's bytes: enough of them to recognise the client.
MAX_ERROR_CHARS = 120


def describe(exc: HttpProcessingError) -> str:
    """One line: the error's class and its message, whitespace collapsed, truncated."""
    text = " ".join(f"{type(exc).__name__}: {exc.message}".split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


class RequestErrorLog(logging.LoggerAdapter[logging.Logger]):
    """The ``logger`` of aiohttp's request handler (``AppRunner(logger=...)``)."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        interval_seconds: float = MALFORMED_LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logger or logging.getLogger("aiohttp.server"), {})
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._last_logged: float | None = None
        self._suppressed = 0

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.malformed(exc_info, peer=args[0] if args else None)
        else:
            super().exception(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        # aiohttp logs an unknown method in a connection's first request at debug level,
        # traceback included: the same kind of noise, given the same short line.
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            self.malformed(exc, peer=args[0] if args else None)
        else:
            super().debug(msg, *args, **kwargs)

    def malformed(self, exc: HttpProcessingError, peer: object) -> None:
        now = self._clock()
        if self._last_logged is not None and now - self._last_logged < self.interval_seconds:
            self._suppressed += 1
            return
        log.warning(
            "malformed request refused",
            peer=str(peer),
            status=exc.code,
            error=describe(exc),
            suppressed=self._suppressed,
            interval_seconds=self.interval_seconds,
        )
        self._last_logged, self._suppressed = now, 0
