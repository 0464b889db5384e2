"""The storage's read bandwidth with O_DIRECT (the page cache bypassed), without fio.

For machines where fio is not installed (the GPU box). Several threads each keep one
16 MiB request in flight with preadv into a page-aligned buffer (an anonymous mapping),
which is what fio's psync engine with numjobs=N does. prewarm_bench.py prints it beside
fio's figure, so the two can be compared where both exist.

    python bench/odirect.py FILE_OR_DIR... [--threads 16] [--block 16]
"""

from __future__ import annotations

import argparse
import mmap
import os
import queue
import threading
import time
from pathlib import Path

MiB = 1 << 20


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*.safetensors") if p.is_file())
        else:
            out.append(path)
    return out


def odirect_read(paths: list[Path], threads: int = 16, block: int = 16 * MiB) -> tuple[int, float]:
    """(bytes read, seconds) reading every file once with O_DIRECT."""
    files = _files(paths)
    fds = [os.open(f, os.O_RDONLY | os.O_DIRECT) for f in files]
    work: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    for fd, f in zip(fds, files, strict=True):
        for offset in range(0, f.stat().st_size, block):
            work.put((fd, offset))
    total = [0]
    lock = threading.Lock()

    def reader() -> None:
        buffer = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT requires
        done = 0
        try:
            while True:
                try:
                    fd, offset = work.get_nowait()
                except queue.Empty:
                    break
                done += os.preadv(fd, [buffer], offset)
        finally:
            buffer.close()
        with lock:
            total[0] += done

    started = time.perf_counter()
    workers = [threading.Thread(target=reader) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    for fd in fds:
        os.close(fd)
    return total[0], seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--block", type=int, default=16, help="MiB per request")
    args = parser.parse_args()
    nbytes, seconds = odirect_read(args.paths, args.threads, args.block * MiB)
    rate = nbytes / seconds / 2**30
    print(f"O_DIRECT read {nbytes / 2**30:.2f} GiB in {seconds:.2f} s: {rate:.2f} GiB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
