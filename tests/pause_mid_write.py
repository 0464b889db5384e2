"""Run a Python command line with its writes to one file paused half-way, so that a test
can signal or kill it while half a line is on disk:

    python -m tests.pause_mid_write FILE MARKER SECONDS -- PYTHON -m MODULE [ARGS...]
    python -m tests.pause_mid_write FILE MARKER SECONDS -- PYTHON -c CODE [ARGS...]

Each ``os.write`` to FILE writes the first half of its bytes, fsyncs them, creates MARKER,
sleeps SECONDS, then writes the rest. The command runs in this interpreter, unchanged
(PYTHON only stands where the wrapped command line names its interpreter): pagewarm has no
test hook of its own.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

_write = os.write


def pause_writes_to(target: Path, marker: Path, seconds: float) -> None:
    wanted = target.resolve()

    def write(fd: int, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        try:
            path: Path | None = Path(f"/proc/self/fd/{fd}").readlink()
        except OSError:
            path = None
        if path != wanted or len(view) < 2:
            return _write(fd, view)
        half = len(view) // 2
        done = _write(fd, view[:half])
        os.fsync(fd)
        marker.touch()
        time.sleep(seconds)
        while done < len(view):
            done += _write(fd, view[done:])
        return done

    os.write = write


def main(argv: list[str]) -> None:
    target, marker, seconds, separator, _python, flag, program, *args = argv
    if separator != "--" or flag not in ("-m", "-c"):
        raise SystemExit(__doc__)
    pause_writes_to(Path(target), Path(marker), float(seconds))
    if flag == "-m":
        sys.argv = [program, *args]
        runpy.run_module(program, run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *args]
        exec(compile(program, "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102


if __name__ == "__main__":
    main(sys.argv[1:])
