"""Make glibc's malloc keep the memory that XLA's CPU backend frees.

XLA on CPU allocates each call's temporary and output buffers with malloc and
frees them when the call ends. glibc serves a block above its mmap threshold
(at most 32 MiB) with a fresh mmap and unmaps it on free, and a thread's
arena returns the pages of a freed heap, so every call pays a page fault per
4 KiB of such buffers while smaller ones are reused from the heap for free.
That makes long sequences pay a cost that short ones do not (the figures
are in docs/benchmarks/README.md, under keep_freed_memory).

`keep_freed_memory()` sets one arena, no mmap for large blocks and no
trimming, so freed blocks stay in the process and are reused. Call it before
jax runs anything (the arena limit applies to threads not yet started). The
resident memory then stays at its peak, which is what a benchmark that
reports peak memory assumes anyway.
"""

import ctypes
import ctypes.util

# From glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
SETTINGS = {"M_ARENA_MAX": (_M_ARENA_MAX, 1), "M_MMAP_MAX": (_M_MMAP_MAX, 0),
            "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, 2**31 - 1)}


def _libc():
  """glibc as a ctypes library, or None (macOS, musl: no or another mallopt)."""
  name = ctypes.util.find_library("c")
  if name is None:
    return None
  libc = ctypes.CDLL(name)
  return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def is_glibc() -> bool:
  return _libc() is not None


def keep_freed_memory() -> bool:
  """Applies SETTINGS through mallopt; False where that is not glibc's malloc."""
  libc = _libc()
  if libc is None:
    return False
  libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.values())
