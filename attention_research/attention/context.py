"""Context parallelism: attention over a sequence split across a mesh axis.

    out = attention.context_parallel("blockwise", mesh, "ring")(q, k, v, causal=True)

`shard` runs a variant's per-shard function under `jax.shard_map`: the
sequence is split over the `context` axis (padded with masked keys to a
multiple of its size), the batch over `data` x `fsdp` and the heads over
`tensor` where the mesh has them. Each variant registers per-shard functions
for the strategies it supports (the registry's `context`); they see
[B / batches, L / n, H / heads, D] and reach the other shards with the
collectives below, named by the mesh axis. The strategies are MaxText's:

  ring        keys and values travel around the axis (ppermute), one shard
              a step; per-device memory O(L / n) in both passes.
  all_gather  keys and values are gathered whole (O(L) keys per device);
              queries stay split.

Variants whose keys reach only so far (local) exchange just the neighbouring
shards they need, and kernel attention (linear, performer) sums or prefixes a
small state over the axis, under either name.

Causal attention is load-balanced by striping (Brandon et al. 2023, "Striped
Attention"): shard j holds positions j, j + n, j + 2n, ..., so every pair of
shards has half its logits under the diagonal and none idles on masked
blocks. `stripe` and `unstripe` move contiguous shards to that layout and
back with one all-to-all each.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from attention_research.attention import common

AXIS = "context"
BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"


def size(axis):
  """Shards along `axis` (inside shard_map)."""
  return jax.lax.axis_size(axis)


def rotate(x, axis, hops=1):
  """x from `hops` shards before along the ring: shard j receives shard
  j - hops's (wrapping around)."""
  n = size(axis)
  if hops % n == 0:
    return x
  if x.dtype == jnp.bool_:  # collectives move numbers
    return rotate(x.astype(jnp.int8), axis, hops).astype(bool)
  return jax.lax.ppermute(x, axis, [(j, (j + hops) % n) for j in range(n)])


def shift(x, axis, hops):
  """x from the shard `hops` before (hops > 0) or after (< 0) along `axis`;
  zeros (False) where there is none: the sequence does not wrap."""
  n = size(axis)
  pairs = [(j, j + hops) for j in range(n) if 0 <= j + hops < n]
  if not pairs:
    return jnp.zeros_like(x)
  if x.dtype == jnp.bool_:  # collectives move numbers
    return jax.lax.ppermute(x.astype(jnp.int8), axis, pairs).astype(bool)
  return jax.lax.ppermute(x, axis, pairs)


def halo(x, tokens, axis, *, before):
  """The `tokens` rows [B, tokens, ...] just before this shard's first row
  (`before`) or after its last, from as many neighbouring shards as they span;
  zeros past either end of the sequence."""
  rows = x.shape[1]
  hops = -(-tokens // rows)
  if before:
    parts = [shift(x, axis, h) for h in range(hops, 0, -1)]
    return jnp.concatenate(parts, axis=1)[:, hops * rows - tokens:]
  parts = [shift(x, axis, -h) for h in range(1, hops + 1)]
  return jnp.concatenate(parts, axis=1)[:, :tokens]


def exclusive_prefix(x, axis):
  """The sum of x over the shards before this one (zeros on the first)."""
  every = jax.lax.all_gather(x, axis)                       # [n, ...]: small states only
  before = jnp.arange(every.shape[0]) < jax.lax.axis_index(axis)
  return jnp.sum(jnp.where(before.reshape((-1,) + (1,) * x.ndim), every, 0), axis=0)


def stripe(x, axis):
  """Contiguous shards [B, L / n, ...] -> striped ones: shard j's row a is
  position j + n a. Needs L / n divisible by n (`shard` pads for it)."""
  n = size(axis)
  rows = x.shape[1]
  x = x.reshape(x.shape[0], rows // n, n, *x.shape[2:])
  if x.dtype == jnp.bool_:
    return stripe(x.reshape(x.shape[0], rows, *x.shape[3:]).astype(jnp.int8), axis).astype(bool)
  x = jax.lax.all_to_all(x, axis, split_axis=2, concat_axis=1, tiled=True)
  return x.reshape(x.shape[0], rows, *x.shape[3:])


def unstripe(x, axis):
  """The inverse of `stripe`."""
  n = size(axis)
  rows = x.shape[1]
  x = jax.lax.all_to_all(x[:, :, None], axis, split_axis=1, concat_axis=2, tiled=True)
  return x.reshape(x.shape[0], rows, *x.shape[3:])


def check_mesh(mesh):
  if AXIS not in mesh.shape:
    raise ValueError(f"context parallelism: the mesh has no {AXIS!r} axis (its axes: "
                     f"{list(mesh.shape)})")


def stripes(fn):
  """Marks a per-shard function that stripes causal attention: `shard` then pads
  the sequence to a multiple of n x n, so each shard holds whole stripes."""
  fn.stripes = True
  return fn


def unpadded(fn):
  """Marks a per-shard function whose pattern would change with padding (bigbird's
  random blocks are drawn from the padded block count): `shard` refuses to pad."""
  fn.unpadded = True
  return fn


def overlaps(fn):
  """Marks a per-shard function whose key shards travel whole (ring attention):
  it takes `overlap`, sending each step's keys on while it computes with them."""
  fn.overlaps = True
  return fn


def padded_length(name, fn, length, n, causal):
  """The length `shard` pads the sequence to; ValueError where `fn` may not be padded."""
  padded = common.round_up(length, n * n if causal and getattr(fn, "stripes", False) else n)
  if padded != length and getattr(fn, "unpadded", False):
    raise ValueError(f"{name} under context parallelism: the sequence length {length} must be "
                     f"a multiple of mesh.context={n} (padding would change its pattern)")
  return padded


def shard(name, fn, mesh, query, key, value, *, causal, kv_mask, options, overlap=None):
  """fn's attention over the whole sequence, each shard of the context axis
  computing its own queries' rows (see the module docstring).

  `fn` is the variant's per-shard function: fn(query, key, value, *, causal,
  kv_mask, axis, **options) on one shard's rows (and `overlap`, where it
  `overlaps`). Returns [B, L, H, D] in the query's dtype, as the variant
  itself would.
  """
  check_mesh(mesh)
  s = common.check_inputs(name, query, key, value, kv_mask)
  n = mesh.shape[AXIS]
  if s.q_len != s.k_len:
    raise ValueError(f"{name} under context parallelism: self-attention only (query length "
                     f"{s.q_len} == key length {s.k_len}), got different lengths")
  length = padded_length(name, fn, s.k_len, n, causal)
  if length != s.k_len or kv_mask is not None:
    real = jnp.ones((s.batch, s.k_len), bool) if kv_mask is None else kv_mask
    kv_mask = common.pad_axis(real, 1, length, value=False)
    query, key, value = (common.pad_axis(x, 1, length) for x in (query, key, value))

  batch_axes = tuple(a for a in BATCH_AXES if a in mesh.shape and mesh.shape[a] > 1)
  if batch_axes and s.batch % int(np.prod([mesh.shape[a] for a in batch_axes])):
    batch_axes = ()
  heads = mesh.shape.get(HEAD_AXIS, 1)
  head_axis = HEAD_AXIS if heads > 1 and s.heads % heads == 0 else None
  if head_axis and s.kv_heads % heads:
    # Key/value heads the head shards do not divide: each is repeated up to
    # lcm(kv heads, shards), which divides the query heads, so every shard
    # holds whole groups (the gradient sums the copies back).
    copies = math.lcm(s.kv_heads, heads) // s.kv_heads
    key, value = (jnp.repeat(x, copies, axis=2) for x in (key, value))
  batch = batch_axes or None
  rows = P(batch, AXIS, head_axis, None)
  slopes = options.pop("alibi_slopes", None)
  if slopes is not None:
    slopes = common.check_alibi_slopes(name, slopes, s.heads)

  args, specs = [query, key, value], [rows, rows, rows]
  if kv_mask is not None:
    args.append(kv_mask)
    specs.append(P(batch, AXIS))
  if slopes is not None:
    args.append(slopes)
    specs.append(P(head_axis))

  def per_shard(q, k, v, *rest):
    rest = list(rest)
    mask = rest.pop(0) if kv_mask is not None else None
    extra = {} if slopes is None else {"alibi_slopes": rest.pop(0)}
    if overlap is not None:
      extra["overlap"] = overlap
    return fn(q, k, v, causal=causal, kv_mask=mask, axis=AXIS, **extra, **options)

  out = jax.shard_map(per_shard, mesh=mesh, in_specs=tuple(specs), out_specs=rows,
                      check_vma=False)(*args)
  return out[:, :s.q_len]
