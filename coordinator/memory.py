"""Handing freed memory back to the system after a large transient.

Re-programming the whole switch reads and builds every attachment's flows
at once (tens of thousands of strings at a thousand attachments); they are
garbage right after, but glibc's allocator keeps the freed pages in the
process. ``malloc_trim`` returns them, so the daemon's resident size is
what it holds, not what it once needed.
"""

from __future__ import annotations

import ctypes
import gc


def release_free_memory() -> None:
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, other systems): nothing to trim
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
