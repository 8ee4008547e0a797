"""Sparse attention that computes only the keys its pattern allows.

- `local`: a sliding window (Beltagy et al. 2020's Longformer band),
  optionally with the ALiBi bias of Press et al. 2022, built per block.
- `strided`: Sparse Transformer's strided pattern (Child et al. 2019).
- `bigbird`: window + global + random blocks (Zaheer et al. 2020).

Each is exact: it equals `dense(q, k, v, mask=<variant>_mask(...))` from
`masks.py`. None of them builds an Lq x Lk matrix. Queries are cut into blocks;
each query block gathers the few key blocks its pattern can reach (a static
table built from the shapes), and the pattern predicate masks the tokens
inside them, so time and memory grow with L x (keys per row).

`implementation` hands a call to a vendor kernel (kernels/choose.py): splash
attention on TPU serves all three, cuDNN causal `local`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from attention_research.attention import blockwise as blockwise_lib
from attention_research.attention import common
from attention_research.attention import context
from attention_research.attention import dense as dense_lib
from attention_research.attention import kernels
from attention_research.attention import masks


def _gathered_partials(query, key, value, kv_mask, s, *, block, table, allowed, first_block=0,
                       key_offset=0, slopes=None):
  """Softmax partials of query blocks over the key blocks a table names.

  Args:
    query: [B, n * block (or fewer), H, D], the query rows of blocks
      first_block .. first_block + n - 1.
    key, value: [B, Lk, Hkv, D], or a slice of them starting at key block
      `key_offset` (which may be negative: padding before the first key).
    kv_mask: bool [B, Lk] (or the same slice) or None.
    s: the call's `common.Shapes`.
    table: int [n, slots], key block indices per query block, -1 = none,
      counted from `key_offset`: NumPy, or a traced slice of a NumPy table
      (a context shard's rows).
    first_block, key_offset: ints, or traced int scalars (a step of lax.map).
    allowed: predicate(i, j) on absolute positions, broadcasting.
    slopes: None, or float32 [H] ALiBi slopes: adds -slopes[h] * |i - j| to
      each gathered [block, slots * block] tile's logits.

  Returns:
    `common.Partials` with m, l [B, rows, Hkv, G] and acc [B, rows, Hkv, G, D].
  """
  n, slots = table.shape
  rows = query.shape[1]
  nk = -(-key.shape[1] // block)
  q = common.pad_axis(query, 1, n * block)
  q = q.reshape(s.batch, n, block, s.kv_heads, s.groups, s.head_dim)
  q = q * jnp.asarray(common.default_scale(s.head_dim), q.dtype)
  k = common.pad_axis(key, 1, nk * block).reshape(s.batch, nk, block, s.kv_heads, s.head_dim)
  v = common.pad_axis(value, 1, nk * block).reshape(s.batch, nk, block, s.kv_heads, s.head_dim)

  idx = (np if isinstance(table, np.ndarray) else jnp).maximum(table, 0)
  k = k[:, idx].reshape(s.batch, n, slots * block, s.kv_heads, s.head_dim)
  v = v[:, idx].reshape(s.batch, n, slots * block, s.kv_heads, s.head_dim)

  q_pos = (first_block + jnp.arange(n))[:, None, None] * block + jnp.arange(block)[None, :, None]
  k_row = (jnp.asarray(idx)[:, :, None] * block + jnp.arange(block)).reshape(n, 1, slots * block)
  k_pos = k_row + key_offset * block                        # absolute key positions
  k_real = (jnp.repeat(jnp.asarray(table >= 0), block, axis=1)[:, None, :]
            & (k_pos >= 0) & (k_pos < s.k_len))
  ok = allowed(q_pos, k_pos) & k_real                       # [n, block, K]
  mask = ok[None, :, None, None]                            # [1, n, 1, 1, block, K]
  if kv_mask is not None:
    valid = common.pad_axis(kv_mask, 1, nk * block, value=False)[:, k_row[:, 0]]  # [B, n, K]
    mask = mask & valid[:, :, None, None, None, :]

  logits = jnp.einsum("bnqhgd,bnkhd->bnhgqk", q, k, preferred_element_type=jnp.float32)
  if slopes is not None:  # [n, Hkv, G, block, K]: the heads between the block axes
    logits = logits + common.alibi_bias(slopes.reshape(s.kv_heads, s.groups, 1, 1),
                                        q_pos[:, None, None], k_pos[:, None, None])
  m, p = common.masked_softmax_terms(logits, mask)
  acc = jnp.einsum("bnhgqk,bnkhd->bnhgqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)

  def per_query(x):  # [B, n, Hkv, G, block, ...] -> [B, rows, Hkv, G, ...]
    x = jnp.moveaxis(x, 4, 2)
    return x.reshape(s.batch, n * block, *x.shape[3:])[:, :rows]
  return common.Partials(per_query(m), per_query(p.sum(-1)), per_query(acc))


def _band_table(num_q_blocks, num_k_blocks, reach, causal):
  """Key blocks a - r .. a + r (a - r .. a if causal) for each query block a."""
  offsets = np.arange(-reach, 1 if causal else reach + 1)
  table = np.arange(num_q_blocks)[:, None] + offsets[None, :]
  return np.where((table >= 0) & (table < num_k_blocks), table, -1).astype(np.int32)


def _output(partials, s, dtype):
  out = common.finalize(partials, dtype)  # [B, Lq, Hkv, G, D]
  return out.reshape(s.batch, s.q_len, s.heads, s.head_dim)


def _default_block(reach):
  return min(128, common.round_up(max(reach, 1), 16))


def local(query, key, value, *, causal=False, kv_mask=None, window=128, block_size=None,
          alibi_slopes=None, rows_per_step=1024, implementation="auto"):
  """Exact sliding-window attention: query i sees key j iff |i - j| <= window
  (causal: 0 <= i - j <= window).

  Each block of `block_size` queries attends to its own key block and
  ceil(window / block_size) blocks on each side: O(L x (window + block_size)).

  Args:
    window: keys on each side a query sees (>= 0).
    block_size: query/key block length; default: window rounded up to a
      multiple of 16, at most 128.
    alibi_slopes: None (no bias) or float [H], one slope per query head: the
      logit of query i, key j in head h gets -alibi_slopes[h] * |i - j|
      (ALiBi), positions top-left aligned (i in [0, Lq), j in [0, Lk)). Under
      `causal` that is the paper's -slope * (i - j); without it the distance
      is symmetric, as in bidirectional uses of ALiBi. A constant: no gradient
      flows into it. `attention.alibi_slopes(H)` gives the paper's slopes.
    rows_per_step: a longer query is computed in steps of at most this many
      rows (whole blocks, at least one, balanced across the steps), one after another, each
      recomputed in the backward pass, so a step's logits stay in cache
      instead of the whole sequence's going to memory and back
      (docs/benchmarks/README.md, local). None: all rows in one step.
    implementation: "auto", "xla" (the code here), "pallas_tpu" (splash's
      LocalMask), "pallas_gpu" (refused: no window) or "cudnn" (causal
      only): who computes the call (kernels/choose.py). block_size and
      rows_per_step are the XLA code's tiling (checked whoever computes); no
      kernel serves `alibi_slopes`.
  """
  s = common.check_inputs("local", query, key, value, kv_mask)
  slopes = common.check_alibi_slopes("local", alibi_slopes, s.heads)
  window = common.non_negative_int("local", "window", window)
  block = _default_block(window) if block_size is None else common.positive_int(
      "local", "block_size", block_size)
  if rows_per_step is not None:
    rows_per_step = common.positive_int("local", "rows_per_step", rows_per_step)
  kernel = kernels.kernel_for("local", implementation, s, query.dtype, causal=causal,
                              kv_mask=kv_mask,
                              options=dict(window=window, alibi_slopes=alibi_slopes))
  if kernel is not None:
    return kernel(query, key, value, kv_mask, xla=functools.partial(
        local, causal=causal, window=window, block_size=block_size, alibi_slopes=alibi_slopes,
        rows_per_step=rows_per_step, implementation="xla"))
  nq, nk = -(-s.q_len // block), -(-s.k_len // block)
  reach = -(-window // block)
  allowed = lambda i, j: masks.local_allowed(i, j, window=window, causal=causal)
  per_step = nq if rows_per_step is None else max(1, rows_per_step // block)
  if nq <= per_step:
    table = _band_table(nq, nk, reach, causal)
    partials = _gathered_partials(query, key, value, kv_mask, s, block=block, table=table,
                                  allowed=allowed, slopes=slopes)
    return _output(partials, s, query.dtype)
  return _local_steps(query, key, value, kv_mask, s, block=block, reach=reach, causal=causal,
                      allowed=allowed, slopes=slopes, nq=nq, per_step=per_step)


def local_context(query, key, value, *, causal=False, kv_mask=None, axis, window=128,
                  block_size=None, alibi_slopes=None, rows_per_step=1024, implementation="auto"):
  """`local` on one shard of the sequence (context.py), under either strategy:
  the shard fetches only the keys its window reaches from the shards beside it
  (a halo of `window` rounded up to whole blocks on each side, one side when
  causal), never the whole ring. Its queries then run as `local`'s do, in
  steps of at most `rows_per_step` rows, each rematerialised."""
  kernels.check_context_implementation("local", implementation)
  s = common.check_inputs("local", query, key, value, kv_mask)
  slopes = common.check_alibi_slopes("local", alibi_slopes, s.heads)
  window = common.non_negative_int("local", "window", window)
  block = _default_block(window) if block_size is None else common.positive_int(
      "local", "block_size", block_size)
  if rows_per_step is not None:
    rows_per_step = common.positive_int("local", "rows_per_step", rows_per_step)
  reach = -(-window // block)
  halo = reach * block
  real = jnp.ones((s.batch, s.k_len), bool) if kv_mask is None else kv_mask
  parts = [(key, value, real)]
  if reach:
    around = lambda before: tuple(context.halo(x, halo, axis, before=before)
                                  for x in (key, value, real))
    parts = [around(True)] + parts + ([] if causal else [around(False)])
  key, value, real = (jnp.concatenate(x, axis=1) for x in zip(*parts))

  # Steps of m query blocks; step c's keys are the window of the halo'd keys
  # from its first row on, so its queries sit `reach` blocks into it.
  nq = -(-s.q_len // block)
  per_step = nq if rows_per_step is None else max(1, rows_per_step // block)
  steps = -(-nq // per_step)
  m = -(-nq // steps)
  span = (m + (reach if causal else 2 * reach)) * block
  length = (steps - 1) * m * block + span
  key, value = (common.pad_axis(x, 1, max(length, x.shape[1])) for x in (key, value))
  real = common.pad_axis(real, 1, max(length, real.shape[1]), value=False)
  windows = (np.arange(steps) * m * block)[:, None] + np.arange(span)
  by_step = lambda x: jnp.moveaxis(x[:, windows], 1, 0)       # [steps, B, span, ...]
  q = common.pad_axis(query, 1, steps * m * block)
  q = jnp.moveaxis(q.reshape(s.batch, steps, m * block, *query.shape[2:]), 1, 0)
  table = np.arange(m)[:, None] + np.arange(span // block - m + 1)[None, :]
  allowed = lambda i, j: masks.local_allowed(i, j, window=window, causal=causal)
  step_shapes = s._replace(q_len=m * block, k_len=span)

  @jax.checkpoint
  def step(args):
    q_c, k_c, v_c, real_c = args
    partials = _gathered_partials(q_c, k_c, v_c, real_c, step_shapes, block=block, table=table,
                                  allowed=allowed, first_block=reach, slopes=slopes)
    return _output(partials, step_shapes, query.dtype)

  out = jax.lax.map(step, (q, by_step(key), by_step(value), by_step(real)))
  out = jnp.moveaxis(out, 0, 1).reshape(s.batch, steps * m * block, s.heads, s.head_dim)
  return out[:, :s.q_len]


def _local_steps(query, key, value, kv_mask, s, *, block, reach, causal, allowed, slopes, nq,
                 per_step):
  """`local` over steps of `per_step` query blocks, one after another (lax.map).

  Step c's query blocks c m .. c m + m - 1 see key blocks c m - reach ..
  c m + m - 1 + reach, a window cut from the keys padded by `reach` blocks on
  each side, so every step has the same static band table. Each step is
  rematerialised (jax.checkpoint), so the backward keeps only the inputs and
  recomputes one step's logits at a time: memory O(L) plus one step's tiles.
  """
  steps = -(-nq // per_step)
  m = -(-nq // steps)  # balanced, so the last step is not mostly padding
  span = (m + 2 * reach) * block                             # keys one step sees
  left = reach * block
  padded_len = max(steps * m * block, s.k_len) + 2 * left
  def pad_keys(x, value=0):
    widths = [(0, 0)] * x.ndim
    widths[1] = (left, padded_len - left - x.shape[1])
    return jnp.pad(x, widths, constant_values=value)
  windows = (np.arange(steps) * m * block)[:, None] + np.arange(span)  # [steps, span]
  def by_step(x):  # [B, padded, ...] -> [steps, B, span, ...]
    return jnp.moveaxis(x[:, windows], 1, 0)
  q = common.pad_axis(query, 1, steps * m * block)
  q = jnp.moveaxis(q.reshape(s.batch, steps, m * block, *query.shape[2:]), 1, 0)
  xs = (np.arange(steps, dtype=np.int32), q, by_step(pad_keys(key)), by_step(pad_keys(value)),
        None if kv_mask is None else by_step(pad_keys(kv_mask, value=False)))
  table = np.arange(m)[:, None] + np.arange(2 * reach + 1 if not causal else reach + 1)[None, :]
  step_shapes = s._replace(q_len=m * block)

  @jax.checkpoint
  def step(args):
    c, q_c, k_c, v_c, mask_c = args
    partials = _gathered_partials(q_c, k_c, v_c, mask_c, s, block=block, table=table,
                                  allowed=allowed, first_block=c * m,
                                  key_offset=c * m - reach, slopes=slopes)
    return _output(partials, step_shapes, query.dtype)

  out = jax.lax.map(step, xs)                                # [steps, B, m block, H, D]
  out = jnp.moveaxis(out, 0, 1).reshape(s.batch, steps * m * block, s.heads, s.head_dim)
  return out[:, :s.q_len]


def local_flops_per_query(seq_len, *, heads, kv_heads, head_dim, causal, window,
                          **options) -> float:
  """Forward FLOPs per query token: 2 window + 1 keys (window + 1 causal)."""
  del kv_heads, options
  keys = window + 1 if causal else 2 * window + 1
  return common.softmax_flops_per_query(keys, seq_len, heads, head_dim)


def strided(query, key, value, *, causal=False, kv_mask=None, stride=128, implementation="auto"):
  """Exact Sparse Transformer strided attention (see `masks.strided_allowed`).

  The pattern splits into a band (0 < |i - j| < stride) and, for each residue
  r = i mod stride, full attention among positions with that residue (j = i
  included there once). The band is computed on gathered blocks, O(L x
  stride); the residue classes by the blockwise kernel, O(L^2 / stride) time
  and O(L) memory. The two parts are merged by their log-sum-exp, exactly.

  Args:
    stride: the band width and the column spacing (>= 1).
    implementation: "auto", "xla" (the code here) or "pallas_tpu" (splash,
      skipping the key blocks the pattern leaves empty); the GPU kernels
      have no such pattern (kernels/choose.py).
  """
  s = common.check_inputs("strided", query, key, value, kv_mask)
  stride = common.positive_int("strided", "stride", stride)
  kernel = kernels.kernel_for("strided", implementation, s, query.dtype, causal=causal,
                              kv_mask=kv_mask, options=dict(stride=stride))
  if kernel is not None:
    return kernel(query, key, value, kv_mask, xla=functools.partial(
        strided, causal=causal, stride=stride, implementation="xla"))

  band_partials = None
  if stride > 1:
    block = _default_block(stride - 1)
    nq, nk = -(-s.q_len // block), -(-s.k_len // block)
    table = _band_table(nq, nk, -(-(stride - 1) // block), causal)
    def band(i, j):
      d = i - j
      return ((d > 0) if causal else (d != 0)) & (d > -stride) & (d < stride)
    band_partials = _gathered_partials(query, key, value, kv_mask, s, block=block, table=table,
                                       allowed=band)

  column_partials = _column_partials(query, key, value, kv_mask, s, stride, causal)
  if band_partials is None:
    return _output(column_partials, s, query.dtype)
  return _output(common.merge(band_partials, column_partials), s, query.dtype)


def _column_partials(query, key, value, kv_mask, s, stride, causal, first_row=0):
  """Partials of strided's residue classes: position a * stride + r becomes row
  a of sequence r, and each sequence is full (causal) softmax attention, by
  the blockwise kernel. The queries may start at residue row `first_row`
  (a context shard's; it then starts at a multiple of the stride)."""
  nq, nk = -(-s.q_len // stride), -(-s.k_len // stride)
  def by_residue(x, n):  # [B, L, ...] -> [B * stride, n, ...]
    x = common.pad_axis(x, 1, n * stride).reshape(x.shape[0], n, stride, *x.shape[2:])
    return jnp.moveaxis(x, 2, 1).reshape(x.shape[0] * stride, n, *x.shape[3:])
  k_valid = None
  if kv_mask is not None or nk * stride != s.k_len:  # else every key is real: no mask work
    k_valid = jnp.ones((s.batch, s.k_len), bool) if kv_mask is None else kv_mask
    k_valid = by_residue(common.pad_axis(k_valid, 1, nk * stride, value=False), nk)
  out, lse = blockwise_lib.attention_with_lse(
      by_residue(query, nq), by_residue(key, nk), by_residue(value, nk), causal=causal,
      kv_mask=k_valid, variant="strided", out_dtype=jnp.float32,
      positions=blockwise_lib.Positions(first_row, 1, 0, 1))
  def by_position(x):  # [B * stride, nq, ...] -> [B, Lq, ...]
    x = jnp.moveaxis(x.reshape(s.batch, stride, nq, *x.shape[2:]), 1, 2)
    return x.reshape(s.batch, nq * stride, *x.shape[3:])[:, :s.q_len]
  out = by_position(out).reshape(
      s.batch, s.q_len, s.kv_heads, s.groups, s.head_dim)
  lse = by_position(lse).reshape(s.batch, s.q_len, s.kv_heads, s.groups)
  return common.Partials(lse, jnp.isfinite(lse).astype(jnp.float32), out)


def _gather(x, axis):
  return jax.lax.all_gather(x, axis, axis=1, tiled=True)


def _check_whole_shards(variant, rows, multiple, option):
  if rows % multiple:
    raise ValueError(f"{variant} under context parallelism: each shard's {rows} rows must be a "
                     f"multiple of {option}={multiple}, so no {option} straddles two shards; "
                     f"allowed: a sequence length that is a multiple of mesh.context x {multiple}")


def strided_context(query, key, value, *, causal=False, kv_mask=None, axis, stride=128,
                    implementation="auto"):
  """`strided` on one shard of the sequence, all_gather only: the keys are
  gathered, the band is cut from them around the shard, and the residue
  classes start at the shard's first row (shards hold whole strides)."""
  kernels.check_context_implementation("strided", implementation)
  s = common.check_inputs("strided", query, key, value, kv_mask)
  stride = common.positive_int("strided", "stride", stride)
  rows = s.q_len
  _check_whole_shards("strided", rows, stride, "stride")
  start = jax.lax.axis_index(axis) * rows
  real = jnp.ones((s.batch, rows), bool) if kv_mask is None else kv_mask
  key, value, real = _gather(key, axis), _gather(value, axis), _gather(real, axis)
  whole = s._replace(k_len=key.shape[1])
  column_partials = _column_partials(query, key, value, real, whole, stride, causal,
                                     first_row=start // stride)
  if stride == 1:
    return _output(column_partials, s, query.dtype)
  block = _default_block(stride - 1)
  reach = -(-(stride - 1) // block)
  halo = reach * block
  def around(x, value=0):  # the shard's rows and `halo` on each side
    widths = [(0, 0)] * x.ndim
    widths[1] = (halo, halo)
    return jax.lax.dynamic_slice_in_dim(jnp.pad(x, widths, constant_values=value), start,
                                        rows + 2 * halo, axis=1)
  def band(i, j):
    d = i - j
    return ((d > 0) if causal else (d != 0)) & (d > -stride) & (d < stride)
  nq, nk = -(-rows // block), -(-(rows + 2 * halo) // block)
  table = np.arange(nq)[:, None] + np.arange(2 * reach + 1)[None, :]
  table = np.where(table < nk, table, -1).astype(np.int32)
  band_partials = _gathered_partials(query, around(key), around(value), around(real, False),
                                     s._replace(k_len=rows + 2 * halo), block=block, table=table,
                                     allowed=band, first_block=reach)
  return _output(common.merge(band_partials, column_partials), s, query.dtype)


def strided_flops_per_query(seq_len, *, heads, kv_heads, head_dim, causal, stride,
                            **options) -> float:
  """Forward FLOPs per query token: 2 stride - 1 + L / stride keys
  (stride + L / (2 stride) causal)."""
  del kv_heads, options
  if causal:
    keys = stride + seq_len / (2 * stride)
  else:
    keys = 2 * stride - 1 + seq_len / stride
  return common.softmax_flops_per_query(keys, seq_len, heads, head_dim)


def bigbird(query, key, value, *, causal=False, kv_mask=None, block_size=64,
            num_window_blocks=3, num_global_blocks=2, num_random_blocks=3, seed=0,
            implementation="auto"):
  """Exact BigBird block-sparse attention (Zaheer et al. 2020, BigBird-ITC).

  Key blocks per query block are listed by `masks.bigbird_key_blocks`; the
  random blocks are fixed by `seed` and the shapes. Global query blocks attend
  to every key (O(global x block x L)); the rest gather their window, global
  and random key blocks: O(L x block_size x blocks per row).

  Args:
    block_size: tokens per block.
    num_window_blocks: odd; the block itself and (n - 1) / 2 on each side.
    num_global_blocks: the first blocks, which see and are seen by all.
    num_random_blocks: random key blocks per (non-global) query block.
    seed: seeds the random block choice (a NumPy generator, at trace time).
    implementation: "auto", "xla" (the code here) or "pallas_tpu" (splash,
      with the same block table); the GPU kernels have no such pattern
      (kernels/choose.py). The global query rows are dense attention's, so
      under "auto" they take dense's kernel where one serves: cuDNN or Pallas
      on a GPU, splash on a TPU where splash declined bigbird's pattern.
  """
  s = common.check_inputs("bigbird", query, key, value, kv_mask)
  masks.check_bigbird_options(block_size, num_window_blocks, num_global_blocks,
                              num_random_blocks, seed)
  pattern = dict(block_size=block_size, num_window_blocks=num_window_blocks,
                 num_global_blocks=num_global_blocks, num_random_blocks=num_random_blocks,
                 seed=seed)
  kernel = kernels.kernel_for("bigbird", implementation, s, query.dtype, causal=causal,
                              kv_mask=kv_mask, options=pattern)
  if kernel is not None:
    return kernel(query, key, value, kv_mask, xla=functools.partial(
        bigbird, causal=causal, implementation="xla", **pattern))
  nq, nk = -(-s.q_len // block_size), -(-s.k_len // block_size)
  table = masks.bigbird_key_blocks(nq, nk, num_window_blocks=num_window_blocks,
                                   num_global_blocks=num_global_blocks,
                                   num_random_blocks=num_random_blocks, seed=seed, causal=causal)
  g_rows = min(num_global_blocks * block_size, s.q_len)
  outs = []
  if g_rows:  # global query rows see every key (causal: every earlier one)
    # `implementation` is "auto" or "xla" here: "xla" keeps these rows off dense's kernels.
    outs.append(dense_lib.dense(query[:, :g_rows], key, value, causal=causal, kv_mask=kv_mask,
                                implementation=implementation))
  if g_rows < s.q_len:
    rest = table[num_global_blocks:]
    rest = rest[:, :max(1, int((rest >= 0).sum(1).max()))]  # drop all-padding slots
    allowed = (lambda i, j: j <= i) if causal else (lambda i, j: True)
    partials = _gathered_partials(query[:, g_rows:], key, value, kv_mask, s, block=block_size,
                                  table=rest, allowed=allowed, first_block=num_global_blocks)
    rest_shapes = s._replace(q_len=s.q_len - g_rows)
    outs.append(_output(partials, rest_shapes, query.dtype))
  return jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]


def bigbird_flops_per_query(seq_len, *, heads, kv_heads, head_dim, causal, block_size,
                            num_window_blocks, num_global_blocks, num_random_blocks,
                            **options) -> float:
  """Forward FLOPs per query token: block_size x (window + global + random
  blocks) keys; causal keeps (window + 1) / 2 of the window blocks."""
  del kv_heads, options
  window = (num_window_blocks + 1) / 2 if causal else num_window_blocks
  keys = block_size * (window + num_global_blocks + num_random_blocks)
  return common.softmax_flops_per_query(keys, seq_len, heads, head_dim)


@context.unpadded
def bigbird_context(query, key, value, *, causal=False, kv_mask=None, axis, block_size=64,
                    num_window_blocks=3, num_global_blocks=2, num_random_blocks=3, seed=0,
                    implementation="auto"):
  """`bigbird` on one shard of the sequence, all_gather only: the keys are
  gathered, and the shard's query blocks take their rows of the same block
  table as on one device (shards hold whole blocks). Every shard computes its
  first rows as global rows too (blockwise, at their positions) and keeps them
  where they are global: the shard that holds them is then no slower than
  the rest."""
  kernels.check_context_implementation("bigbird", implementation)
  s = common.check_inputs("bigbird", query, key, value, kv_mask)
  masks.check_bigbird_options(block_size, num_window_blocks, num_global_blocks,
                              num_random_blocks, seed)
  rows = s.q_len
  _check_whole_shards("bigbird", rows, block_size, "block_size")
  start = jax.lax.axis_index(axis) * rows
  real = jnp.ones((s.batch, rows), bool) if kv_mask is None else kv_mask
  key, value, real = _gather(key, axis), _gather(value, axis), _gather(real, axis)
  length = key.shape[1]
  blocks = length // block_size
  table = masks.bigbird_key_blocks(blocks, blocks, num_window_blocks=num_window_blocks,
                                   num_global_blocks=num_global_blocks,
                                   num_random_blocks=num_random_blocks, seed=seed, causal=causal)
  table[:num_global_blocks] = -1                           # global rows: below
  table = table[:, :max(1, int((table >= 0).sum(1).max()))]  # drop all-padding slots
  mine = jax.lax.dynamic_slice_in_dim(jnp.asarray(table), start // block_size,
                                      rows // block_size, axis=0)
  allowed = (lambda i, j: j <= i) if causal else (lambda i, j: True)
  partials = _gathered_partials(query, key, value, real, s._replace(k_len=length),
                                block=block_size, table=mine, allowed=allowed,
                                first_block=start // block_size)
  out = _output(partials, s, query.dtype)
  g_rows = min(num_global_blocks * block_size, rows)
  if not g_rows:
    return out
  glob, _ = blockwise_lib.attention_with_lse(
      query[:, :g_rows], key, value, causal=causal, kv_mask=real, variant="bigbird",
      positions=blockwise_lib.Positions(start, 1, 0, 1))
  is_global = (start + jnp.arange(g_rows) < num_global_blocks * block_size)[None, :, None, None]
  return jnp.concatenate([jnp.where(is_global, glob, out[:, :g_rows]), out[:, g_rows:]], axis=1)
