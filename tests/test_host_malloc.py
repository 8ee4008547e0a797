"""`host_malloc.keep_freed_memory`: after it, a large block that is freed and
allocated again is reused instead of being mapped, and page-faulted, anew.

Measured in a fresh process (the setting is process-wide): minor page faults
while allocating, touching and freeing a 64 MiB block five times, with and
without the setting, through libc's own malloc and free as XLA's CPU backend
calls them.
"""

import os
import subprocess
import sys

import pytest

from attention_research.benchmark import host_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = """
import ctypes, ctypes.util, resource, sys
from attention_research.benchmark import host_malloc
if sys.argv[1] == "keep":
  assert host_malloc.keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20
def cycle():
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)
cycle()  # the first allocation faults its pages in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_cycle(mode):
  out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout
  return float(out.split()[-1])


def test_freed_memory_is_reused_instead_of_faulted_in_again():
  if not host_malloc.is_glibc():
    pytest.skip("not glibc's malloc")
  default, kept = faults_per_cycle("default"), faults_per_cycle("keep")
  # By default glibc maps a 64 MiB block afresh each time: 16384 faults of
  # 4 KiB pages (fewer where transparent huge pages are on for all memory).
  assert default > 0
  assert kept * 4 < default, (kept, default)

