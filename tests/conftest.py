"""Shared test settings: a small persistent compile cache keeps re-runs fast."""

import os

import jax

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAX_TEST_CACHE", os.path.join(os.path.dirname(__file__), ".jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
# The tests hold float32 results to float64 references at float32 rounding.
# On NVIDIA GPUs jax's default float32 matmul is TF32 (a 10-bit mantissa);
# CPUs compute float32 matmuls in full precision either way.
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
  # Small enough for CI's two cores; marked so a quick local run can leave them out
  # (pytest -m "not devices8 and not processes2").
  config.addinivalue_line("markers", "devices8: runs on 8 simulated CPU devices (a subprocess)")
  config.addinivalue_line("markers", "processes2: runs two processes under jax.distributed")
