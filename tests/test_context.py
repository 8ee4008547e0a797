"""Context parallelism: every variant under each strategy it has, on 4 and 8 simulated
devices (2 beside tensor parallelism), equals one device over the whole sequence, in
value and gradient.

The sharded runs happen in two subprocesses (alternate cases each) with 8
simulated CPU devices (tests/fixtures/context_cases.py); the references here,
on one device: the float64 softmax reference under the variant's own mask for
the exact variants, the variant itself for the approximate ones. Every case
has grouped-query heads, a key mask with a wholly masked batch row, and ALiBi where the variant
takes it; the non-causal lengths leave an odd number of rows a shard.
"""

import fcntl
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_research import attention
from attention_research import sharding
from tests import reference
from tests.fixtures import context_cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.devices8

SMALL = {
    "dense": {},
    "blockwise": dict(block_q=4, block_k=8, bwd_block_q=8, bwd_block_k=4),
    # The window reaches past the next shard; steps of two blocks where a shard has more.
    "local": dict(window=7, block_size=4, rows_per_step=8),
    "linear": dict(chunk_size=4),
    "performer": dict(num_features=16, chunk_size=4),
    "strided": dict(stride=4),
    "bigbird": dict(block_size=4, num_window_blocks=3, num_global_blocks=1, num_random_blocks=2,
                    seed=3),
}
# Shards must hold whole strides and blocks (and bigbird's length needs no padding).
WHOLE_BLOCKS = {"strided", "bigbird"}


def build_cases():
  """Every variant under every strategy it has, on 4 devices (full) and 8 (causal)."""
  cases = []
  for name in attention.names():
    for strategy in sorted(attention.variant(name).context):
      # 4 devices full (odd rows a shard), 8 causal (the window past the next shard);
      # tensor x context below covers a context of 2.
      for n, causal in ((4, False), (8, True)):
        if name in WHOLE_BLOCKS:
          length = 64 if n == 8 else 48   # 12 and 8 rows a shard
        else:
          length = {4: 44, 8: 40}[n]  # 11 and 5 rows a shard
        cases.append(dict(variant=name, strategy=strategy, mesh=dict(data=8 // n, context=n),
                          causal=causal, length=length, options=SMALL[name],
                          alibi="alibi_slopes" in attention.variant(name).options,
                          kv_heads=2, seed=len(cases)))
  # Heads split over `tensor` beside `context`, with as many kv heads as tensor
  # shards, and with one kv head for two shards (each takes the one it needs).
  for kv_heads in (2, 1):
    cases.append(dict(variant="blockwise", strategy="ring", mesh=dict(data=2, tensor=2, context=2),
                      causal=True, length=40, options=SMALL["blockwise"], alibi=True,
                      kv_heads=kv_heads, seed=len(cases)))
  # All heads in one pass (the default off CPU), grouped: the kernels add into
  # the travelling gradients of a key/value head for each of its query heads.
  cases.append(dict(variant="blockwise", strategy="ring", mesh=dict(data=2, context=4),
                    causal=False, length=44,
                    options=dict(SMALL["blockwise"], sequential_heads=False), alibi=True,
                    kv_heads=1, seed=len(cases)))
  # The ring's other schedule (CPU runs it serially by default): each step's
  # keys sent on while it computes, in a loop.
  for variant, n, causal in (("blockwise", 4, True), ("dense", 8, False)):
    cases.append(dict(variant=variant, strategy="ring", mesh=dict(data=8 // n, context=n),
                      causal=causal, length=44 if n == 4 else 40, options=SMALL[variant],
                      alibi=True, kv_heads=2, seed=len(cases), overlap=True))
  cases.append(dict(variant="linear", strategy="ring", mesh=dict(fsdp=2, tensor=2, context=2),
                    causal=True, length=40, options=SMALL["linear"], alibi=False, kv_heads=1,
                    seed=len(cases)))
  return cases


CASES = build_cases()


def case_id(case):
  mesh = "x".join(f"{a}{s}" for a, s in case["mesh"].items() if s > 1)
  return (f"{case['variant']}-{case['strategy']}{'-overlap' if case.get('overlap') else ''}-"
          f"{'causal' if case['causal'] else 'full'}-{mesh}-kv{case['kv_heads']}")


# The cases run in two subprocesses, alternate cases each: under pytest-xdist's two
# workers both run at once, instead of one worker waiting for the other's.
PARTS = 2


def _run_part(tmp, part, wait):
  """Runs the part's cases into out<part>.npz unless it exists; False without `wait` when
  another worker holds the part (it is running it)."""
  out_path = tmp / f"out{part}.npz"
  with open(tmp / f"lock{part}", "w") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      return False
    if not out_path.exists():
      cases_path = tmp / f"cases{part}.json"
      cases_path.write_text(json.dumps([dict(c, index=i) for i, c in enumerate(CASES)
                                        if i % PARTS == part]))
      env = dict(os.environ, JAX_PLATFORMS="cpu",
                 XLA_FLAGS="--xla_force_host_platform_device_count=8")
      proc = subprocess.run([sys.executable, "-m", "tests.fixtures.context_cases",
                             str(cases_path), str(out_path) + ".tmp.npz"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
      assert proc.returncode == 0, proc.stderr[-4000:]
      os.rename(str(out_path) + ".tmp.npz", out_path)
  return True


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  """The sharded results of every case: each worker runs a part no other worker is
  running, then waits for the rest."""
  run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  if run:
    tmp = tmp_path_factory.getbasetemp().parent / f"context-{run}"
    tmp.mkdir(exist_ok=True)
  else:
    tmp = tmp_path_factory.mktemp("context")
  for part in [p for p in range(PARTS) if not _run_part(tmp, p, wait=False)]:
    _run_part(tmp, part, wait=True)
  results = {}
  for part in range(PARTS):
    results.update(np.load(tmp / f"out{part}.npz"))
  assert len(results) == 5 * len(CASES)  # out, dq, dk, dv, hlo_ops of every case
  return results


def one_device(case):
  """(out, dq, dk, dv) on one device over the whole sequence."""
  q, k, v, kv_mask, cotangent = context_cases.inputs(case)
  options = dict(case["options"])
  slopes = attention.alibi_slopes(context_cases.HEADS) if case["alibi"] else None
  v_info = attention.variant(case["variant"])
  if v_info.exact:
    length = case["length"]
    pattern = v_info.mask(length, length, causal=case["causal"], **options)
    mask = reference.full_mask(*q.shape[:1], context_cases.HEADS, length, length, pattern,
                               kv_mask)
    bias = None if slopes is None else reference.alibi_bias(slopes, length, length)
    return (reference.softmax_attention(q, k, v, mask, bias),
            *reference.softmax_attention_vjp(q, k, v, mask, cotangent, bias))
  fn = attention.get(case["variant"])
  if slopes is not None:
    options["alibi_slopes"] = slopes

  def loss(q, k, v):
    out = fn(q, k, v, causal=case["causal"], kv_mask=jnp.asarray(kv_mask), **options)
    return jnp.sum(out * cotangent), out
  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  return (out, *grads)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id(c) for c in CASES])
def test_context_parallel_equals_one_device(sharded, index):
  case = CASES[index]
  want = one_device(case)
  # float32 against float64 (exact) or a float32 run (approximate): rounding only.
  for name, expected in zip(("out", "dq", "dk", "dv"), want):
    np.testing.assert_allclose(sharded[f"{index}/{name}"], expected, atol=3e-5, rtol=1e-4,
                               err_msg=f"{case_id(case)}: {name}")
  assert not np.any(sharded[f"{index}/out"][0]), "a batch row with no key gives zeros"


# The loss's sum over the sharded output is an all-reduce in every case: not attention's.
def collectives(sharded, predicate):
  return {case_id(c): set(sharded[f"{i}/hlo_ops"].tolist())
          for i, c in enumerate(CASES) if predicate(c)}


def test_ring_passes_shards_and_never_gathers_the_sequence(sharded):
  found = collectives(sharded, lambda c: c["strategy"] == "ring"
                      and c["variant"] in ("dense", "blockwise"))
  for case, ops in found.items():
    assert "collective-permute" in ops and "all-gather" not in ops, (case, ops)


def test_local_exchanges_only_neighbours(sharded):
  found = collectives(sharded, lambda c: c["variant"] == "local")
  for case, ops in found.items():
    assert "collective-permute" in ops and not ops & {"all-gather", "all-to-all"}, (case, ops)


def test_all_gather_gathers(sharded):
  found = collectives(sharded, lambda c: c["strategy"] == "all_gather"
                      and c["variant"] in ("dense", "blockwise", "strided", "bigbird"))
  for case, ops in found.items():
    assert "all-gather" in ops, (case, ops)


def one_device_mesh():
  return sharding.make_mesh(dict(data=1, fsdp=1, tensor=1, context=1), jax.devices()[:1])


@pytest.mark.parametrize("name, strategy, message", [
    ("strided", "ring", r"attention 'strided' has no context-parallel strategy 'ring'; it has "
                        r"\['all_gather'\]"),
    ("bigbird", "ring", r"attention 'bigbird' has no context-parallel strategy 'ring'"),
    ("dense", "zigzag", r"strategy 'zigzag'; it has \['all_gather', 'ring'\] \(strategies: "
                        r"\['ring', 'all_gather'\]\)"),
])
def test_a_strategy_a_variant_lacks_is_refused_naming_both(name, strategy, message):
  with pytest.raises(ValueError, match=message):
    attention.context_parallel(name, one_device_mesh(), strategy)


def test_shards_must_hold_whole_blocks_and_dense_masks_are_refused():
  mesh = one_device_mesh()
  q = jnp.ones((1, 10, 2, 4))
  with pytest.raises(ValueError, match=r"bigbird under context parallelism: each shard's 10 "
                                       r"rows must be a multiple of block_size=4"):
    attention.context_parallel("bigbird", mesh, "all_gather")(q, q, q, block_size=4)
  with pytest.raises(ValueError, match=r"dense: `mask` is not supported under context "
                                       r"parallelism"):
    attention.context_parallel("dense", mesh, "ring")(q, q, q, mask=np.ones((10, 10), bool))
  with pytest.raises(ValueError, match=r"the mesh has no 'context' axis"):
    attention.context_parallel("dense", jax.make_mesh((1,), ("data",)), "ring")


@pytest.mark.parametrize("name, strategy", [("local", "ring"), ("blockwise", "all_gather"),
                                            ("linear", "ring")])
def test_overlap_is_refused_where_no_key_shard_travels_whole(name, strategy):
  with pytest.raises(ValueError, match=rf"attention '{name}' under '{strategy}': `overlap` is for "
                                       r"strategies whose key shards travel whole"):
    attention.context_parallel(name, one_device_mesh(), strategy, overlap=True)
