"""Where a process's resident memory sits, for the ingest benchmark's memory-flatness run.

Why: RSS alone cannot tell a leak (objects still referenced) from an allocator keeping pages it
no longer uses. A sample splits it into Python's small-object allocator (pymalloc blocks in use)
and glibc malloc's own accounting (``mallinfo2``: bytes in use, bytes free but held in the heap,
bytes in mmapped chunks), so a rise in RSS can be put down to one of them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys
import tempfile


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.mallinfo2.restype = _Mallinfo2
        return lib
    except (OSError, AttributeError):        # not glibc, or glibc < 2.33
        return None


_LIBC = _libc()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def pymalloc_arenas() -> int | None:
    """Arenas pymalloc holds now (1 MiB each on 3.11), read off ``sys._debugmallocstats()``, which
    writes to the C-level stderr — so fd 2 is pointed at a temporary file for the call."""
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        m = re.search(rb"# arenas allocated current\s*=\s*([\d,]+)", tmp.read())
    return int(m.group(1).replace(b",", b"")) if m else None


def sample() -> dict:
    """One breakdown of this process's memory, in MB (blocks as a count)."""
    out = {"rss_mb": round(rss_mb(), 1), "pymalloc_blocks": sys.getallocatedblocks(),
           "pymalloc_arenas": pymalloc_arenas()}
    if _LIBC is not None:
        m = _LIBC.mallinfo2()
        out.update({"malloc_heap_mb": round(m.arena / 1e6, 1), "malloc_in_use_mb": round(m.uordblks / 1e6, 1),
                    "malloc_free_held_mb": round(m.fordblks / 1e6, 1), "malloc_mmap_mb": round(m.hblkhd / 1e6, 1),
                    "malloc_mmap_chunks": m.hblks})
    return out


def cpu_s(*, thread: int | None = None, pid: int | None = None) -> float | None:
    """CPU seconds (user + system) used by one thread of this process (its native id) or by another
    process, from /proc; None when it is gone or /proc is not Linux's. Beside memory, the other thing
    a phase's threads and servers share: which of them is busy tells where an end-to-end rate is lost."""
    if thread is None and pid is None:
        return None
    path = f"/proc/self/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")      # utime, stime
