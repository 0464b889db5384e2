"""SIGINT and SIGTERM as a cancel: blocking work stops within one step and says so.

``interruptible()`` installs handlers for the block (restoring the previous ones after):
a signal raises ``Interrupted`` at once, like Ctrl-C's KeyboardInterrupt, except inside
``Interrupt.polled()``, where work polls ``Interrupt.event`` (a warm checks it before
every step of a chunk) and a signal only sets it: the work then stops on its own and its
partial result can be printed or recorded. A second signal there raises at once.

The exit status of an interrupted command is 128 + the signal's number (130, 143).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import structlog

log = structlog.get_logger("pagewarm")

SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, FrameType | None], object] | int | None


class Interrupted(BaseException):
    """A signal stopped the command (BaseException: no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class Interrupt:
    """The signal a command received (``signum``, None until one came) and the event the
    work inside ``polled()`` watches."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._installed = False
        self._polled = False

    @property
    def exit_status(self) -> int | None:
        return None if self.signum is None else 128 + self.signum

    def check(self) -> None:
        """Raise ``Interrupted`` when a signal came (after polled work stopped)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextlib.contextmanager
    def polled(self) -> Iterator[threading.Event]:
        """Within: a signal sets the event, the work polls it. Our handlers are put back
        for the block, over any installed since (a scheduler experiment's)."""
        previous = self._install() if self._installed else {}
        self._polled = True
        try:
            yield self.event
        finally:
            self._polled = False
            _restore(previous)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        again = self.signum is not None
        if not again:
            self.signum = signum
            log.warning("signal received: stopping", signal=signal.Signals(signum).name)
        self.event.set()
        if again or not self._polled:
            raise Interrupted(signum)

    def _install(self) -> dict[int, Handler]:
        previous: dict[int, Handler] = {}
        for sig in SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: nothing to install
                previous[sig] = signal.signal(sig, self._handle)
        return previous


def _restore(previous: dict[int, Handler]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextlib.contextmanager
def interruptible() -> Iterator[Interrupt]:
    """SIGINT and SIGTERM handled as described above while the block runs."""
    interrupt = Interrupt()
    previous = interrupt._install()
    interrupt._installed = bool(previous)
    try:
        yield interrupt
    finally:
        interrupt._installed = False
        _restore(previous)
