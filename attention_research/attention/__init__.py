"""The attention registry: every variant, found by name.

    from attention_research import attention
    fn = attention.get("blockwise")
    out = fn(query, key, value, causal=True, block_q=256)

All variants share one contract (see docs/design.md and `common.check_inputs`):
query [B, Lq, H, D], key/value [B, Lk, Hkv, D], `causal`, `kv_mask` bool
[B, Lk]; output [B, Lq, H, D] in the query's dtype, zeros for rows with no key.

ALiBi (Press et al. 2022): dense, blockwise and local take `alibi_slopes`
float [H], adding -slope[h] * |i - j| to each logit (top-left aligned; causal
or not; blockwise and local build it tile by tile, never as Lq x Lk);
`alibi_slopes(H)` gives the paper's slopes, and `"alibi_slopes" in
variant(name).options` says whether a variant takes them.

Vendor kernels (kernels/): the exact variants take `implementation`, one of
`kernels.IMPLEMENTATIONS` ("auto", "xla", "pallas_tpu", "pallas_gpu",
"cudnn"): "auto" runs Pallas splash attention on TPU, cuDNN or the Pallas GPU
kernel on GPU where they can serve the call, and the variant's own XLA code
otherwise (kernels/choose.py says what each serves).

Adding a variant: write one file with the function and its cost, add one
`register(...)` line below; the conformance tests, the benchmark, the models
and the trainer then pick it up by name. An exact variant also names its mask
function (q_len, k_len, causal=, **options) -> NumPy bool [Lq, Lk], which the
tests check it against. The cost is a function (seq_len, *, heads, kv_heads,
head_dim, causal, **options) -> forward FLOPs per query token of
self-attention, called with every option resolved (`Variant.flops_per_query`);
the models' FLOP counts and the benchmark read it. No other module keeps a
table of variants or branches on their names, but for the vendor kernels,
which list the variants they serve and build each one's pattern in the
kernel's own terms (kernels/splash.py).
"""

import dataclasses
import functools
import inspect
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from attention_research.attention import blockwise as _blockwise
from attention_research.attention import common as _common
from attention_research.attention import context as _context
from attention_research.attention import dense as _dense
from attention_research.attention import linear as _linear
from attention_research.attention import masks
from attention_research.attention import sparse as _sparse

_CONTRACT_KEYWORDS = ("causal", "kv_mask")


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  fn: Callable
  exact: bool                      # equals softmax attention under `mask`
  mask: Optional[Callable]         # (q_len, k_len, *, causal, **options) -> bool [Lq, Lk]
  options: dict                    # option name -> default
  cost: Callable                   # (seq_len, *, heads, kv_heads, head_dim, causal, **options)
  context: dict = dataclasses.field(default_factory=dict)  # strategy -> per-shard function

  def resolved_options(self, options=None) -> dict:
    """The defaults overridden by `options`; an unknown option is a ValueError."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(self.options))
    if unknown:
      raise ValueError(f"attention {self.name!r} does not take {unknown}; it takes "
                       f"{sorted(self.options)}")
    return {**self.options, **options}

  def flops_per_query(self, seq_len, *, heads, kv_heads, head_dim, causal, options=None):
    """Forward FLOPs of the attention op per query token of self-attention
    over seq_len tokens (2 per multiply-accumulate), from the registered cost."""
    return float(self.cost(seq_len, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                           causal=causal, **self.resolved_options(options)))


_REGISTRY: dict[str, Variant] = {}
CONTEXT_STRATEGIES = ("ring", "all_gather")


def register(name, fn, *, exact, cost, mask=None, context=None):
  """Adds `fn` under `name`; returns it wrapped so unknown options are a ValueError.

  Args:
    name: what configs, sweeps and tables call it.
    fn: the attention function (the contract above).
    exact: True if it equals softmax attention under `mask`.
    cost: (seq_len, *, heads, kv_heads, head_dim, causal, **options) ->
      forward FLOPs per query token; receives every option of `fn`.
    mask: an exact variant's pattern (q_len, k_len, *, causal, **options) ->
      NumPy bool [Lq, Lk].
    context: {strategy: per-shard function} for context parallelism
      (context.py); the strategies are CONTEXT_STRATEGIES.
  """
  if name in _REGISTRY:
    raise ValueError(f"attention variant {name!r} is already registered")
  if exact and mask is None:
    raise ValueError(f"exact attention variant {name!r} needs a mask function")
  unknown = sorted(set(context or {}) - set(CONTEXT_STRATEGIES))
  if unknown:
    raise ValueError(f"attention variant {name!r}: unknown context strategies {unknown}; "
                     f"allowed: {list(CONTEXT_STRATEGIES)}")
  if not callable(cost):
    raise ValueError(f"attention variant {name!r}: `cost` must be a function of the shapes "
                     f"and options, got {cost!r}")
  params = inspect.signature(fn).parameters
  options = {p.name: p.default for p in params.values()
             if p.kind == p.KEYWORD_ONLY and p.name not in _CONTRACT_KEYWORDS}

  @functools.wraps(fn)
  def checked(query, key, value, **kwargs):
    unknown = sorted(set(kwargs) - set(options) - set(_CONTRACT_KEYWORDS))
    if unknown:
      raise ValueError(
          f"attention {name!r} does not take option(s) {unknown}; it takes "
          f"{list(_CONTRACT_KEYWORDS) + sorted(options)}")
    causal = kwargs.get("causal", False)
    if not isinstance(causal, (bool, np.bool_)):
      raise ValueError(f"attention {name!r}: `causal` must be a Python bool (it picks the "
                       f"computation, so it cannot be traced), got {causal!r}")
    return fn(query, key, value, **kwargs)

  _REGISTRY[name] = Variant(name, checked, exact, mask, options, cost, dict(context or {}))
  return checked


def unregister(name):
  """Removes a variant (for tests that register a throwaway one)."""
  variant(name)
  del _REGISTRY[name]


def names() -> list[str]:
  """Registered variant names, in registration order."""
  return list(_REGISTRY)


def variant(name) -> Variant:
  """The registry entry for `name` (function, exactness, mask, options)."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown attention variant {name!r}; registered: {names()}")
  return _REGISTRY[name]


def get(name) -> Callable:
  """The attention function registered under `name`."""
  return variant(name).fn


def context_parallel(name, mesh, strategy, *, overlap=None) -> Callable:
  """Variant `name` over the sequence split along `mesh`'s "context" axis
  (context.py), by `strategy` ("ring" or "all_gather"): a function with the
  variant's contract. A strategy the variant lacks is a ValueError naming both.
  `overlap` (ring attention of dense and blockwise, whose key shards travel
  whole): send each step's keys on while computing with them, at about two
  shard-sized arrays more a device; None: off on CPU, on elsewhere."""
  v = variant(name)
  if strategy not in v.context:
    raise ValueError(f"attention {name!r} has no context-parallel strategy {strategy!r}; it "
                     f"has {sorted(v.context) or 'none'} (strategies: "
                     f"{list(CONTEXT_STRATEGIES)})")
  _context.check_mesh(mesh)
  per_shard = v.context[strategy]
  if overlap is not None and not getattr(per_shard, "overlaps", False):
    raise ValueError(f"attention {name!r} under {strategy!r}: `overlap` is for strategies whose "
                     f"key shards travel whole (ring attention of dense and blockwise); "
                     f"leave it None here")

  def attend(query, key, value, *, causal=False, kv_mask=None, **options):
    v.resolved_options(options)
    if not isinstance(causal, (bool, np.bool_)):
      raise ValueError(f"attention {name!r}: `causal` must be a Python bool, got {causal!r}")
    return _context.shard(name, per_shard, mesh, query, key, value, causal=causal,
                          kv_mask=kv_mask, options=options, overlap=overlap)
  return attend


def per_device(name, mesh) -> Callable:
  """Variant `name` on each device's share of the batch and heads of `mesh`,
  under jax.shard_map (the batch over data x fsdp, heads over tensor, as
  context.py lays them out): how a vendor kernel, which jit's automatic
  sharding cannot split, runs over a mesh. The sequence stays whole, so
  mesh.context must be 1 (`context_parallel` splits it)."""
  v = variant(name)
  _context.check_mesh(mesh)
  if mesh.shape[_context.AXIS] != 1:
    raise ValueError(f"attention {name!r} per device: the mesh splits the sequence "
                     f"(context={mesh.shape[_context.AXIS]}); use context_parallel")

  def per_shard(query, key, value, *, causal, kv_mask, axis, **options):
    del axis  # one shard: the sequence is whole
    return v.fn(query, key, value, causal=causal, kv_mask=kv_mask, **options)

  def attend(query, key, value, *, causal=False, kv_mask=None, **options):
    v.resolved_options(options)
    if not isinstance(causal, (bool, np.bool_)):
      raise ValueError(f"attention {name!r}: `causal` must be a Python bool, got {causal!r}")
    return _context.shard(name, per_shard, mesh, query, key, value, causal=causal,
                          kv_mask=kv_mask, options=options)
  return attend


def runs_per_device(name, mesh, options=None) -> bool:
  """Whether a model on `mesh` should call `name` through `per_device`: a vendor
  kernel may serve it (an explicit Pallas or cuDNN `implementation`, or "auto"
  on a TPU or GPU) over more than one device, with the sequence whole."""
  if mesh is None or mesh.size == 1 or mesh.shape.get(_context.AXIS, 1) > 1:
    return False
  v = variant(name)
  if "implementation" not in v.options:
    return False
  implementation = v.resolved_options(options)["implementation"]
  if implementation == "auto":
    return jax.default_backend() in ("tpu", "gpu")
  return implementation != "xla"


def check_context_parallel(name, strategy, mesh_shape, *, length, heads, kv_heads, head_dim,
                           causal, options=None):
  """Raises the ValueError `context_parallel` would, without devices: traces the split
  attention once on an abstract mesh of `mesh_shape` ({axis: size}), so a config is
  refused before anything is written or compiled."""
  mesh = jax.sharding.AbstractMesh(tuple(mesh_shape.values()), tuple(mesh_shape),
                                   axis_types=(jax.sharding.AxisType.Auto,) * len(mesh_shape))
  attend = context_parallel(name, mesh, strategy)
  batch = int(np.prod([mesh_shape.get(a, 1) for a in _context.BATCH_AXES]))
  q = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.float32)
  kv = jax.ShapeDtypeStruct((batch, length, kv_heads, head_dim), jnp.float32)
  mask = jax.ShapeDtypeStruct((batch, length), jnp.bool_)
  jax.eval_shape(lambda q, k, m: attend(q, k, k, causal=causal, kv_mask=m, **(options or {})),
                 q, kv, mask)


_LONG = 1 << 20  # a length at which every sparse pattern skips most keys


def is_sparse(name) -> bool:
  """True for an exact variant that skips keys: at a long length its cost is
  below dense attention's."""
  v = variant(name)
  if not v.exact:
    return False
  sizes = dict(heads=1, kv_heads=1, head_dim=1, causal=False)
  return v.flops_per_query(_LONG, **sizes) < _dense.flops_per_query(_LONG, **sizes)


def covers_every_key(name, seq_len, *, causal, options=None) -> bool:
  """True when sparse variant `name` attends to every key at this length, so it
  computes dense attention (at a sparse variant's overhead). Exact from the
  mask up to 4096 tokens, from the cost beyond."""
  if not is_sparse(name):
    return False
  v = variant(name)
  options = v.resolved_options(options)
  if seq_len <= 4096:
    pattern = v.mask(seq_len, seq_len, causal=causal, **options)
    return bool((pattern == masks.full_mask(seq_len, seq_len, causal=causal)).all())
  sizes = dict(heads=1, kv_heads=1, head_dim=1, causal=causal)
  return (v.flops_per_query(seq_len, options=options, **sizes)
          >= _dense.flops_per_query(seq_len, **sizes))


def probabilities(name, query, key, *, causal=False, kv_mask=None, **options):
  """The weights exact variant `name` puts on each key: float32 [B, H, Lq, Lk].

  softmax(q k^T / sqrt(D) + ALiBi bias) over the keys the variant's pattern,
  `causal` and `kv_mask` allow, as its output weighs the values: for every
  exact variant, `probabilities(...) @ value` is its output (tests check it).
  Rows sum to 1; a query with no allowed key has a row of zeros. Keys may
  have fewer heads (grouped-query attention). Linear-cost variants never form
  softmax weights over keys: a ValueError naming the variants that do.
  """
  v = variant(name)
  if not v.exact:
    raise ValueError(f"attention {name!r} is not softmax over keys and has no attention "
                     f"weights; variants that have: {[n for n in names() if variant(n).exact]}")
  options = v.resolved_options(options)
  s = _common.check_inputs(name, query, key, key, kv_mask)
  allowed = jnp.asarray(v.mask(s.q_len, s.k_len, causal=causal, **options))[None, None]
  if kv_mask is not None:
    allowed = allowed & kv_mask[:, None, None, :]
  q = query.reshape(s.batch, s.q_len, s.kv_heads, s.groups, s.head_dim)
  logits = jnp.einsum("bqhgd,bkhd->bhgqk", q, key, preferred_element_type=jnp.float32)
  logits = logits.reshape(s.batch, s.heads, s.q_len, s.k_len) * _common.default_scale(
      s.head_dim)
  slopes = _common.check_alibi_slopes(name, options.get("alibi_slopes"), s.heads)
  if slopes is not None:
    logits = logits + _common.alibi_bias(slopes.reshape(s.heads, 1, 1),
                                         jnp.arange(s.q_len)[:, None], jnp.arange(s.k_len))
  _, p = _common.masked_softmax_terms(logits, allowed)
  return p / jnp.maximum(p.sum(-1, keepdims=True), jnp.finfo(jnp.float32).tiny)


def _dense_mask(q_len, k_len, *, causal=False, mask=None, alibi_slopes=None,
                implementation=None):
  """dense's pattern; a `mask` is folded in when it is one [Lq, Lk] pattern."""
  del alibi_slopes, implementation  # a bias hides no key; every implementation computes it
  full = masks.full_mask(q_len, k_len, causal=causal)
  if mask is None:
    return full
  mask = np.asarray(mask, bool)
  if mask.ndim > 2 and any(n != 1 for n in mask.shape[:-2]):
    raise ValueError(f"dense: a per-batch or per-head `mask` {mask.shape} has no single "
                     f"[q_len, k_len] pattern")
  return full & np.broadcast_to(mask.reshape(mask.shape[-2:]), full.shape)


def _pattern_only(mask_fn):
  """mask_fn, also taking the options that hide no key: `alibi_slopes` (a
  bias) and `implementation` (who computes the pattern, kernels/choose.py)."""
  @functools.wraps(mask_fn)
  def mask(q_len, k_len, *, alibi_slopes=None, implementation=None, **options):
    del alibi_slopes, implementation
    return mask_fn(q_len, k_len, **options)
  return mask


# The functions are reached through get(name); module attributes named after
# variants stay the submodules (dense.py, blockwise.py, ...).
register("dense", _dense.dense, exact=True, mask=_dense_mask, cost=_dense.flops_per_query,
         context={"ring": _dense.context_ring, "all_gather": _dense.context_all_gather})
register("blockwise", _blockwise.blockwise, exact=True, cost=_dense.flops_per_query,
         mask=lambda q_len, k_len, *, causal=False, **_: masks.full_mask(q_len, k_len, causal=causal),
         context={"ring": _blockwise.context_ring, "all_gather": _blockwise.context_all_gather})
register("local", _sparse.local, exact=True, mask=_pattern_only(masks.local_mask),
         cost=_sparse.local_flops_per_query,
         context={"ring": _sparse.local_context, "all_gather": _sparse.local_context})
register("strided", _sparse.strided, exact=True, mask=_pattern_only(masks.strided_mask),
         cost=_sparse.strided_flops_per_query, context={"all_gather": _sparse.strided_context})
register("bigbird", _sparse.bigbird, exact=True, mask=_pattern_only(masks.bigbird_mask),
         cost=_sparse.bigbird_flops_per_query, context={"all_gather": _sparse.bigbird_context})
register("linear", _linear.linear, exact=False, cost=_linear.linear_flops_per_query,
         context={"ring": _linear.linear_context, "all_gather": _linear.linear_context})
register("performer", _linear.performer, exact=False, cost=_linear.performer_flops_per_query,
         context={"ring": _linear.performer_context, "all_gather": _linear.performer_context})

local_mask = masks.local_mask
strided_mask = masks.strided_mask
bigbird_mask = masks.bigbird_mask
performer_projection = _linear.performer_projection
alibi_slopes = _common.alibi_slopes
