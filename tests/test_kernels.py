"""Vendor kernels behind the exact variants (attention/kernels/).

Each kernel runs here in Pallas interpret mode on CPU (explicit "pallas_tpu"
or "pallas_gpu"), at the smallest shapes it takes, against the float64 softmax
reference under the variant's own mask, in value and gradient: one case per
variant a kernel serves, each with grouped-query heads, padding to the
kernel's blocks, a key mask with a wholly masked batch row, causal or not.
Interpret mode is slow (seconds a case), so these are few. cuDNN has no
interpreter: its mapping onto jax.nn.dot_product_attention is checked through
jax's XLA implementation of that function. The rest is fast: "auto" on CPU
is the XLA code, bit for bit; what no kernel can serve is a ValueError for an
explicit kernel and the XLA code, logged once, for "auto".
"""

import functools
import json
import logging
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_research import attention
from attention_research import sharding
from attention_research.attention import common
from attention_research.attention import kernels
from attention_research.attention.kernels import choose
from attention_research.attention.kernels import cudnn
from attention_research.attention.kernels import empty_rows
from attention_research.attention.kernels import pallas_gpu
from attention_research.attention.kernels import splash
from tests import reference
from tests.test_train import ROOT

EXACT = ["dense", "blockwise", "local", "strided", "bigbird"]
BIGBIRD = dict(block_size=16, num_window_blocks=3, num_global_blocks=1, num_random_blocks=2,
               seed=3)
HEAD_DIM = 64

# (implementation, variant, options, causal, q_len, k_len, kv_mask): lengths
# that are not multiples of the kernels' blocks (splash: 128; the Pallas GPU
# kernel: a power of two), so padding is masked and cut off in every case.
INTERPRET_CASES = [
    ("pallas_tpu", "dense", {}, True, 200, 200, True),
    # A per-head NumPy mask whose first 128 rows allow nothing: splash skips
    # that query block entirely, and its rows must still be zeros.
    ("pallas_tpu", "dense", {"mask": "per_head"}, False, 200, 200, True),
    ("pallas_tpu", "blockwise", {}, False, 136, 200, True),
    ("pallas_tpu", "local", dict(window=37), True, 200, 200, True),
    ("pallas_tpu", "strided", dict(stride=16), False, 200, 200, True),
    ("pallas_tpu", "bigbird", BIGBIRD, True, 200, 200, True),
    # kv_mask as a bias through an extra head dimension.
    ("pallas_gpu", "dense", {}, True, 100, 100, True),
    # Padded keys that real rows could see: segment ids (equal lengths) ...
    ("pallas_gpu", "blockwise", {}, False, 100, 100, False),
    # ... and the extra head dimension (unequal lengths).
    ("pallas_gpu", "blockwise", {}, False, 100, 72, False),
]


def make_inputs(batch, q_len, k_len, heads, kv_heads, with_mask, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q, k, v = (rng.normal(size=(batch, n, h, HEAD_DIM))
             for n, h in ((q_len, heads), (k_len, kv_heads), (k_len, kv_heads)))
  kv_mask = None
  if with_mask:
    kv_mask = rng.random((batch, k_len)) > 0.3
    kv_mask[0, 0] = False   # causal query 0 of batch 0 has no key
    kv_mask[1] = False      # nor has any query of batch 1
    kv_mask = jnp.asarray(kv_mask)
  return (*(jnp.asarray(x, dtype) for x in (q, k, v)), kv_mask)


def per_head_mask(heads, q_len, k_len):
  rng = np.random.default_rng(11)
  mask = rng.random((heads, q_len, k_len)) > 0.4
  mask[:, :128] = False
  return mask


def _case_id(case):
  implementation, name, options, causal, q_len, k_len, with_mask = case
  return (f"{implementation}-{name}{'-mask' if 'mask' in options else ''}-"
          f"{'causal' if causal else 'full'}-{q_len}x{k_len}{'-kv_mask' if with_mask else ''}")


@pytest.mark.parametrize("case", INTERPRET_CASES, ids=_case_id)
def test_kernel_in_interpret_mode_equals_float64_softmax(case):
  implementation, name, options, causal, q_len, k_len, with_mask = case
  batch, heads = 2, 2
  q, k, v, kv_mask = make_inputs(batch, q_len, k_len, heads, 1, with_mask)
  if options.get("mask") == "per_head":
    options = dict(options, mask=per_head_mask(heads, q_len, k_len))
    pattern = attention.variant("dense").mask(q_len, k_len, causal=causal)
    allowed = reference.full_mask(batch, heads, q_len, k_len, pattern, kv_mask)
    allowed &= options["mask"][None]
  else:
    pattern = attention.variant(name).mask(q_len, k_len, causal=causal, **options)
    allowed = reference.full_mask(batch, heads, q_len, k_len, pattern, kv_mask)
  fn = lambda q, k, v: attention.get(name)(q, k, v, causal=causal, kv_mask=kv_mask,
                                           implementation=implementation, **options)
  out, vjp = jax.vjp(jax.jit(fn), q, k, v)
  np.testing.assert_allclose(out, reference.softmax_attention(q, k, v, allowed), atol=2e-5,
                             rtol=1e-5)
  d_out = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  for got, want in zip(vjp(d_out), reference.softmax_attention_vjp(q, k, v, allowed, d_out)):
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-4)
  empty = ~allowed.any(-1).transpose(0, 2, 1)  # [B, Lq, H]: rows that see no key
  assert empty.any() == with_mask and not np.any(np.asarray(out)[empty]), "rows with no key"


@pytest.mark.parametrize("implementation", ["pallas_tpu", "pallas_gpu"])
def test_kernel_in_interpret_mode_takes_bfloat16_and_vmap(implementation):
  q, k, v, kv_mask = make_inputs(2, 100, 100, 2, 1, True)
  fn = lambda q, k, v, m: attention.get("dense")(q, k, v, causal=True, kv_mask=m,
                                                 implementation=implementation)
  bf = lambda x: x.astype(jnp.bfloat16)
  out16 = jax.jit(fn)(bf(q), bf(k), bf(v), kv_mask)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16, np.float32), fn(q, k, v, kv_mask), atol=6e-2,
                             rtol=3e-2)
  grads = jax.grad(lambda *x: jnp.sum(fn(*x, kv_mask).astype(jnp.float32)),
                   argnums=(0, 1, 2))(bf(q), bf(k), bf(v))
  assert all(g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))
             for g in grads)
  stacked = lambda x: jnp.stack([x, x[:, ::-1]])  # an extra leading axis of 2
  batched = jax.jit(jax.vmap(fn))(stacked(q), stacked(k), stacked(v), stacked(kv_mask))
  np.testing.assert_allclose(batched[1], fn(q[:, ::-1], k[:, ::-1], v[:, ::-1], kv_mask[:, ::-1]),
                             atol=2e-6)


@pytest.mark.parametrize("name", EXACT)
def test_auto_on_cpu_is_the_xla_code_bit_for_bit(name):
  options = {"local": dict(window=5), "strided": dict(stride=4),
             "bigbird": dict(BIGBIRD, block_size=4)}.get(name, {})
  q, k, v, kv_mask = make_inputs(2, 24, 24, 4, 2, True)
  def run(implementation):
    fn = lambda q, k, v: jnp.sum(attention.get(name)(
        q, k, v, causal=True, kv_mask=kv_mask, implementation=implementation, **options) ** 2)
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(q, k, v)
  auto, xla = run("auto"), run("xla")
  for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(xla)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", EXACT)
def test_xla_asks_no_kernel_anywhere_inside_a_variant(name, monkeypatch):
  """implementation="xla" is the XLA code throughout: bigbird's global rows are dense's, and
  under "auto" a GPU served them with its kernels (the H200 check of 2026-12-04)."""
  asked = []
  kernel_for = kernels.kernel_for
  def spy(variant, implementation, *args, **kwargs):
    asked.append((variant, implementation))
    return kernel_for(variant, implementation, *args, **kwargs)
  monkeypatch.setattr(kernels, "kernel_for", spy)
  options = {"local": dict(window=5), "strided": dict(stride=4),
             "bigbird": dict(BIGBIRD, block_size=4)}.get(name, {})
  q, k, v, kv_mask = make_inputs(2, 24, 24, 4, 2, True)
  attention.get(name)(q, k, v, causal=True, kv_mask=kv_mask, implementation="xla", **options)
  assert asked and {i for _, i in asked} == {"xla"}, asked
  if name == "bigbird":
    assert ("dense", "xla") in asked  # its global rows, the path under test


def test_unknown_implementation_is_a_value_error_naming_the_allowed_values():
  q, k, v, _ = make_inputs(1, 8, 8, 2, 1, False)
  allowed = r"\['auto', 'xla', 'pallas_tpu', 'pallas_gpu', 'cudnn'\]"
  for name in EXACT:
    with pytest.raises(ValueError, match=rf"{name}: `implementation` must be one of {allowed}, "
                                         r"got 'triton'"):
      attention.get(name)(q, k, v, implementation="triton")


@pytest.mark.parametrize("name, implementation, options, why", [
    ("dense", "cudnn", {}, "cuDNN needs a GPU, and the backend is 'cpu'"),
    ("dense", "pallas_tpu", {"alibi_slopes": np.ones(2, np.float32)}, "no ALiBi"),
    ("local", "pallas_gpu", {"alibi_slopes": np.ones(2, np.float32)}, "no 'local' pattern"),
    ("strided", "pallas_gpu", {}, "no 'strided' pattern"),
    ("bigbird", "cudnn", {}, "cuDNN has no 'bigbird' pattern"),
])
def test_an_explicit_kernel_that_cannot_serve_is_a_value_error(name, implementation, options, why):
  q, k, v, _ = make_inputs(1, 8, 8, 2, 1, False)
  with pytest.raises(ValueError, match=rf"{name}: implementation='{implementation}' cannot serve "
                                       rf"this call: .*{why}.*Allowed: \['auto', 'xla'"):
    attention.get(name)(q, k, v, implementation=implementation, **options)


def test_splash_takes_dense_mask_only_while_tracing():
  q, k, v, _ = make_inputs(1, 8, 8, 2, 1, False)
  mask = jnp.ones((8, 8), bool)
  dense = attention.get("dense")
  with pytest.raises(ValueError, match="pallas_tpu.*`mask` is traced"):
    jax.jit(lambda m: dense(q, k, v, mask=m, implementation="pallas_tpu"))(mask)
  np.testing.assert_array_equal(  # "auto" is the XLA code for it: the same program, bit for bit
      jax.jit(lambda m: dense(q, k, v, mask=m))(mask),
      jax.jit(lambda m: dense(q, k, v, mask=m, implementation="xla"))(mask))


def test_variants_without_kernels_take_no_implementation():
  q, k, v, _ = make_inputs(1, 8, 8, 2, 1, False)
  for name in ("linear", "performer"):
    with pytest.raises(ValueError, match=rf"attention '{name}' does not take option\(s\) "
                                         r"\['implementation'\]"):
      attention.get(name)(q, k, v, implementation="auto")


def _choice(name, dtype=jnp.bfloat16, causal=True, backend="tpu", head_dim=64, devices=1,
            kv_mask=None, **options):
  s = common.Shapes(2, 256, 256, 4, 2, head_dim)
  kernel = kernels.kernel_for(name, "auto", s, dtype, causal=causal, kv_mask=kv_mask,
                              options=options, backend=backend, devices=devices)
  if kernel is None:
    return None
  assert kernel.keywords["interpret"] is False
  return kernel.func.__module__.rsplit(".", 1)[-1]


def test_auto_picks_each_backends_kernel_where_it_serves():
  assert [_choice(n, backend="tpu") for n in EXACT] == ["splash"] * 5
  assert [_choice(n, backend="gpu") for n in EXACT] == ["cudnn"] * 3 + [None] * 2
  assert [_choice(n, backend="cpu") for n in EXACT] == [None] * 5
  # cuDNN refuses float32, a head_dim it cannot take, and a window without causal.
  assert _choice("dense", jnp.float32, backend="gpu") == "pallas_gpu"
  assert _choice("dense", backend="gpu", head_dim=60) == "pallas_gpu"
  # ... nor past what the Pallas GPU kernel pads head_dim to (a key mask adds one).
  assert _choice("dense", jnp.float32, backend="gpu", head_dim=120) == "pallas_gpu"
  assert _choice("dense", jnp.float32, backend="gpu", head_dim=128, kv_mask=True) is None
  assert _choice("local", causal=False, backend="gpu", window=8) is None
  assert _choice("local", jnp.float32, backend="gpu", window=8) is None
  # No kernel takes ALiBi; splash takes a NumPy mask.
  assert _choice("dense", backend="tpu", alibi_slopes=np.ones(4)) is None
  assert _choice("dense", backend="tpu", mask=np.ones((256, 256), bool)) == "splash"
  assert _choice("dense", backend="gpu", mask=np.ones((256, 256), bool)) is None
  # Over several devices only cuDNN, which jit's sharding can split.
  assert _choice("dense", backend="tpu", devices=8) is None
  assert _choice("dense", backend="gpu", devices=8) == "cudnn"
  assert _choice("dense", jnp.float32, backend="gpu", devices=8) is None


def test_auto_logs_why_it_falls_back_once_at_debug(caplog, monkeypatch):
  monkeypatch.setattr(choose, "_logged", set())
  caplog.set_level(logging.DEBUG, logger=choose.__name__)
  for _ in range(3):
    assert _choice("dense", backend="tpu", alibi_slopes=np.ones(4)) is None
  lines = [r for r in caplog.records if r.name == choose.__name__]
  assert len(lines) == 1 and lines[0].levelno == logging.DEBUG
  assert "'dense', implementation='auto' runs the XLA code: pallas_tpu: " in lines[0].message
  assert "ALiBi" in lines[0].message


def test_interpret_mode_is_logged_once_at_info(caplog, monkeypatch):
  # backend="cpu" as the suite's machine has it: on a GPU pallas_gpu is not interpreted.
  monkeypatch.setattr(choose, "_logged", set())
  caplog.set_level(logging.INFO, logger=choose.__name__)
  s = common.Shapes(1, 8, 8, 2, 1, 64)
  for _ in range(2):
    kernel = kernels.kernel_for("local", "pallas_tpu", s, jnp.float32, causal=False,
                                kv_mask=None, options=dict(window=2), backend="cpu")
    assert kernel.func is splash.attend and kernel.keywords["interpret"] is True
  lines = [r.message for r in caplog.records if r.name == choose.__name__]
  assert lines == ["attention 'local': implementation='pallas_tpu' on backend 'cpu' runs the "
                   "kernel in Pallas interpret mode (slow; for tests)"]
  kernel = kernels.kernel_for("dense", "pallas_gpu", s, jnp.float32, causal=False, kv_mask=None,
                              options={}, backend="cpu")
  assert kernel.func is pallas_gpu.attend and kernel.keywords["interpret"] is True


def test_context_parallelism_takes_splash_in_the_ring_alone():
  sizes = dict(length=16, heads=2, kv_heads=1, head_dim=8, causal=True)
  others = {"local": dict(window=2), "strided": dict(stride=4),
            "bigbird": dict(block_size=4, num_global_blocks=1)}
  for name, strategy in (("blockwise", "all_gather"), ("local", "ring"), ("strided", "all_gather"),
                         ("bigbird", "all_gather")):
    for implementation in ("pallas_tpu", "cudnn"):
      options = dict(others.get(name, {}), implementation=implementation)
      with pytest.raises(ValueError, match=rf"{name} under context parallelism: `implementation` "
                                           rf"must be 'auto' or 'xla'.*got '{implementation}'"):
        attention.check_context_parallel(name, strategy, {"context": 2}, options=options, **sizes)
      attention.check_context_parallel(name, strategy, {"context": 2},
                                       options=dict(options, implementation="auto"), **sizes)
  for name in ("dense", "blockwise"):
    attention.check_context_parallel(name, "ring", {"context": 2},
                                     options=dict(implementation="pallas_tpu"), **sizes)
    for implementation in ("cudnn", "pallas_gpu"):
      with pytest.raises(ValueError, match=rf"{name} under ring attention: implementation="
                                           rf"'{implementation}' cannot serve a ring step .*"
                                           rf"Allowed: \['auto', 'xla', 'pallas_tpu'\]"):
        attention.check_context_parallel(name, "ring", {"context": 2},
                                         options=dict(implementation=implementation), **sizes)


def test_the_ring_step_is_splash_on_tpu_where_it_serves():
  s = common.Shapes(2, 64, 64, 4, 2, 64)
  step = lambda implementation, backend, dtype=jnp.bfloat16, **options: kernels.ring_step(
      "blockwise", implementation, s, dtype, causal=True, kv_mask=None, options=options,
      backend=backend)
  assert step("auto", "tpu") is False            # splash, compiled for the TPU
  assert step("auto", "tpu", jnp.float32) is False
  assert step("auto", "gpu") is None and step("auto", "cpu") is None   # the XLA code
  assert step("auto", "tpu", jnp.float16) is None   # splash computes float32 or bfloat16
  assert step("auto", "tpu", alibi_slopes=np.ones(4)) is None
  assert step("xla", "tpu") is None
  assert step("pallas_tpu", "cpu") is True         # interpret mode
  with pytest.raises(ValueError, match=r"blockwise under ring attention: implementation="
                                       r"'pallas_tpu' cannot serve this call: splash takes no "
                                       r"logit bias, so no ALiBi"):
    step("pallas_tpu", "tpu", alibi_slopes=np.ones(4))


RING_SCRIPT = """
import logging, sys
import jax, jax.numpy as jnp, numpy as np
from attention_research import attention, sharding
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
rng = np.random.default_rng(1)
q, cotangent = (rng.standard_normal((2, 200, 2, 64)).astype(np.float32) for _ in range(2))
k, v = (rng.standard_normal((2, 200, 1, 64)).astype(np.float32) for _ in range(2))
kv_mask = rng.random((2, 200)) > 0.2
kv_mask[1] = False  # a batch row with no key
saved = dict(q=q, k=k, v=v, kv_mask=kv_mask, cotangent=cotangent)
for name, n, causal, overlap in (("causal", 4, True, True), ("full", 2, False, False)):
  mesh = sharding.make_mesh(dict(data=4 // n, fsdp=1, tensor=1, context=n))
  fn = attention.context_parallel("blockwise", mesh, "ring", overlap=overlap)
  def loss(q, k, v):
    out = fn(q, k, v, causal=causal, kv_mask=kv_mask, implementation="pallas_tpu")
    return jnp.sum(out * cotangent), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  saved.update({f"{name}_{x}": y for x, y in zip(("out", "dq", "dk", "dv"), (out, *grads))})
np.savez(sys.argv[1], **saved)
"""


@pytest.mark.devices8
def test_splash_as_the_rings_step_equals_float64_softmax(tmp_path):
  """Ring attention with splash (interpret mode) as each shard's step, on 4 simulated
  devices: causal (striped, the overlapped schedule) over 4 shards and full over 2,
  with grouped heads, padding to splash's blocks and a batch row with no key, in value
  and gradient against the float64 reference."""
  out_path = tmp_path / "out.npz"
  done = subprocess.run([sys.executable, "-c", RING_SCRIPT, str(out_path)], cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu",
                                 XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "runs splash in Pallas interpret mode" in done.stdout + done.stderr
  r = dict(np.load(out_path))
  for name, causal in (("causal", True), ("full", False)):
    pattern = np.tril(np.ones((200, 200), bool)) if causal else None
    allowed = reference.full_mask(2, 2, 200, 200, pattern, r["kv_mask"])
    np.testing.assert_allclose(r[f"{name}_out"],
                               reference.softmax_attention(r["q"], r["k"], r["v"], allowed),
                               atol=2e-5, rtol=1e-5, err_msg=name)
    want = reference.softmax_attention_vjp(r["q"], r["k"], r["v"], allowed, r["cotangent"])
    for grad, w in zip(("dq", "dk", "dv"), want):
      np.testing.assert_allclose(r[f"{name}_{grad}"], w, atol=5e-5, rtol=1e-4,
                                 err_msg=f"{name} {grad}")


def test_masks_and_costs_ignore_the_implementation():
  for name in EXACT:
    spec = attention.variant(name)
    assert spec.options["implementation"] == "auto"
    options = spec.resolved_options({"implementation": "pallas_tpu"})
    np.testing.assert_array_equal(spec.mask(40, 40, causal=True, **options),
                                  spec.mask(40, 40, causal=True, **spec.resolved_options()))
    assert attention.covers_every_key(name, 40, causal=True, options=options) == \
        attention.covers_every_key(name, 40, causal=True)


# (variant, options, causal, q_len, k_len, kv_mask kind): cuDNN's cases.
CUDNN_CASES = [
    ("dense", {}, True, 24, 24, "prefix"),
    ("blockwise", {}, False, 16, 24, "prefix"),
    ("local", dict(window=3), True, 24, 24, "prefix"),      # rows past the real keys + window
    ("local", dict(window=3), True, 30, 20, None),          # more queries than keys + window
    ("dense", {}, True, 24, 24, "holes"),                   # not a prefix: the XLA code
    # Odd lengths, which cuDNN is handed one row longer (jax's backward wants even):
    ("dense", {}, True, 23, 23, None),
    ("blockwise", {}, False, 15, 21, "prefix"),
    ("local", dict(window=3), True, 23, 12, None),
    ("dense", {}, False, 23, 23, "holes"),
]


@pytest.mark.parametrize("case", CUDNN_CASES)
def test_cudnn_mapping_equals_float64_softmax_through_jax_xla(case, monkeypatch):
  """What cudnn.py hands jax.nn.dot_product_attention, run by jax's XLA
  implementation of it (same arguments, no GPU here)."""
  monkeypatch.setattr(cudnn, "IMPLEMENTATION", "xla")
  lengths_handed = []
  def spy(query, key, *args, **kwargs):
    lengths_handed.append((query.shape[1], key.shape[1]))
    return jax_attention(query, key, *args, **kwargs)
  jax_attention = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
  name, options, causal, q_len, k_len, kind = case
  q, k, v, _ = make_inputs(3, q_len, k_len, 4, 2, False)
  kv_mask = None
  if kind is not None:
    lengths = np.array([k_len - 5, 0, k_len])[:, None]
    kv_mask = np.arange(k_len)[None] < lengths           # a prefix; batch 1 has no key
    if kind == "holes":
      kv_mask[0, 2] = False
    kv_mask = jnp.asarray(kv_mask)
  s = common.check_inputs(name, q, k, v, kv_mask)
  call = choose.Call(name, s, jnp.dtype(jnp.float32), causal, kv_mask is not None, options, "gpu")
  xla = functools.partial(attention.get(name), causal=causal, implementation="xla", **options)
  fn = jax.jit(lambda q, k, v: cudnn.attend(q, k, v, kv_mask, call=call, interpret=False,
                                            xla=xla))
  pattern = attention.variant(name).mask(q_len, k_len, causal=causal, **options)
  allowed = reference.full_mask(3, 4, q_len, k_len, pattern, kv_mask)
  out, vjp = jax.vjp(fn, q, k, v)
  np.testing.assert_allclose(out, reference.softmax_attention(q, k, v, allowed), atol=2e-5,
                             rtol=1e-5)
  d_out = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  for got, want in zip(vjp(d_out), reference.softmax_attention_vjp(q, k, v, allowed, d_out)):
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-4)
  assert lengths_handed and all(n % 2 == 0 for pair in lengths_handed for n in pair), \
      lengths_handed


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [None, 0, 3])
def test_rows_with_a_key_match_the_patterns(causal, window):
  rng = np.random.default_rng(5)
  kv_mask = rng.random((3, 13)) > 0.6
  kv_mask[1] = False
  for q_len in (9, 13, 20):
    pattern = (attention.local_mask(q_len, 13, window=window, causal=causal) if window is not None
               else attention.variant("dense").mask(q_len, 13, causal=causal))
    want = (pattern[None] & kv_mask[:, None]).any(-1)
    got = empty_rows.has_key(jnp.asarray(kv_mask), q_len, causal=causal, window=window)
    np.testing.assert_array_equal(got, want)


PER_DEVICE_SCRIPT = """
import logging, sys
import jax, jax.numpy as jnp, numpy as np
from attention_research import attention, sharding
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
mesh = sharding.make_mesh(dict(data=2, fsdp=1, tensor=2, context=1))
rng = np.random.default_rng(0)
q, cotangent = (rng.standard_normal((4, 256, 2, 64)).astype(np.float32) for _ in range(2))
k, v = (rng.standard_normal((4, 256, 1, 64)).astype(np.float32) for _ in range(2))
kv_mask = rng.random((4, 256)) > 0.2
kv_mask[1] = False  # a batch row with no key
fn = attention.per_device("blockwise", mesh)
def loss(q, k, v):
  out = fn(q, k, v, causal=True, kv_mask=kv_mask, implementation="pallas_tpu")
  return jnp.sum(out * cotangent), out
(_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
np.savez(sys.argv[1], out=out, dq=grads[0], dk=grads[1], dv=grads[2], q=q, k=k, v=v,
         kv_mask=kv_mask, cotangent=cotangent)
"""


@pytest.mark.devices8
def test_per_device_runs_the_kernel_on_each_devices_share(tmp_path):
  """Over a (data 2, tensor 2) mesh, splash runs inside shard_map on each device's
  two batch rows and one query head (not whole on every device), and its value
  and gradient equal the float64 reference."""
  out_path = tmp_path / "out.npz"
  done = subprocess.run([sys.executable, "-c", PER_DEVICE_SCRIPT, str(out_path)], cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu",
                                 XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  logs = done.stdout + done.stderr
  assert "runs the kernel in Pallas interpret mode" in logs and "whole on every device" not in logs
  r = dict(np.load(out_path))
  allowed = reference.full_mask(4, 2, 256, 256, np.tril(np.ones((256, 256), bool)), r["kv_mask"])
  np.testing.assert_allclose(r["out"], reference.softmax_attention(r["q"], r["k"], r["v"], allowed),
                             atol=2e-5, rtol=1e-5)
  want = reference.softmax_attention_vjp(r["q"], r["k"], r["v"], allowed, r["cotangent"])
  for name, w in zip(("dq", "dk", "dv"), want):
    np.testing.assert_allclose(r[name], w, atol=5e-5, rtol=1e-4, err_msg=name)


def test_a_model_calls_attention_per_device_where_a_kernel_may_serve_it():
  mesh = lambda **shape: sharding.make_mesh(dict(dict(data=1, fsdp=1, tensor=1, context=1),
                                                 **shape), jax.devices()[:1])
  one = mesh()
  assert not attention.runs_per_device("blockwise", None, {})
  assert not attention.runs_per_device("blockwise", one, {"implementation": "pallas_tpu"})
  several = types.SimpleNamespace(size=4, shape=dict(data=4, fsdp=1, tensor=1, context=1))
  split = types.SimpleNamespace(size=4, shape=dict(data=2, fsdp=1, tensor=1, context=2))
  assert attention.runs_per_device("blockwise", several, {"implementation": "pallas_tpu"})
  assert not attention.runs_per_device("blockwise", several, {"implementation": "xla"})
  # auto: the XLA code on CPU, a kernel per device where a TPU or GPU may serve one
  assert attention.runs_per_device("blockwise", several, {}) == (
      jax.default_backend() in ("tpu", "gpu"))
  assert not attention.runs_per_device("linear", several, {})     # no kernels
  assert not attention.runs_per_device("blockwise", split, {"implementation": "pallas_tpu"})
  with pytest.raises(ValueError, match=r"attention 'dense' per device: the mesh splits the "
                                       r"sequence \(context=2\); use context_parallel"):
    attention.per_device("dense", split)


@pytest.mark.devices8
def test_training_over_a_mesh_runs_the_kernel_per_device(tmp_path):
  """The trainer on two devices with splash (interpret mode) asked for: the model calls it
  through attention.per_device (never whole on each device), and training follows the
  XLA code's losses to float32 rounding."""
  from tests import test_train
  flags = ["--config.attention=blockwise", "--config.total_steps=4", "--config.log_every=2",
           "--config.checkpoint_every=4", "--config.eval_every=4", "--config.num_eval_batches=1"]
  results, logs = {}, {}
  for implementation in ("pallas_tpu", "xla"):
    workdir = tmp_path / implementation
    done = subprocess.run(
        test_train.train_command(workdir, tmp_path / "data", *flags,
                                 f"--config.attention_options.implementation={implementation}"),
        cwd=ROOT, env=test_train.run_env(devices=2), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results[implementation] = json.load(open(workdir / "result.json"))
    logs[implementation] = done.stderr
  assert "Pallas interpret mode" in logs["pallas_tpu"]
  assert "whole on every device" not in logs["pallas_tpu"]
  assert results["pallas_tpu"]["num_devices"] == 2
  losses = [test_train.read_jsonl(tmp_path / i / "metrics.jsonl") for i in ("pallas_tpu", "xla")]
  train = [[r["loss"] for r in rows if "loss" in r] for rows in losses]
  np.testing.assert_allclose(train[0], train[1], rtol=2e-4)
  assert len(train[0]) == 2
