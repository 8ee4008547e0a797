"""Float64 NumPy softmax attention and its gradient, written from the
definitions and independent of the library, for the tests to compare against.

An optional additive logit bias [H, Lq, Lk] (e.g. ALiBi, Press et al. 2022,
from `alibi_bias`) is added after the 1/sqrt(D) scaling, before masking.
"""

import numpy as np


def expand_kv(x, heads):
  """[B, L, Hkv, D] -> [B, L, H, D]: query head h reads kv head h // (H // Hkv)."""
  return np.repeat(x, heads // x.shape[2], axis=2)


def _probabilities(q, k, mask, bias=None):
  """P [B, H, Lq, Lk] with rows that allow no key all zero."""
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)[None]
  logits = np.where(mask, logits, -np.inf)
  row_max = logits.max(-1, keepdims=True)
  row_max = np.where(np.isfinite(row_max), row_max, 0.0)
  w = np.exp(logits - row_max)
  total = w.sum(-1, keepdims=True)
  return np.where(total > 0, w / np.where(total > 0, total, 1.0), 0.0)


def full_mask(batch, heads, q_len, k_len, pattern=None, kv_mask=None):
  """bool [B, H, Lq, Lk] from a [Lq, Lk] pattern and a [B, Lk] key mask."""
  mask = np.ones((batch, heads, q_len, k_len), bool)
  if pattern is not None:
    mask &= np.asarray(pattern, bool)[None, None]
  if kv_mask is not None:
    mask &= np.asarray(kv_mask, bool)[:, None, None, :]
  return mask


def alibi_bias(slopes, q_len, k_len):
  """[H, Lq, Lk] float64: -slopes[h] * |i - j|, one entry at a time."""
  slopes = np.asarray(slopes, np.float64)
  bias = np.zeros((len(slopes), q_len, k_len))
  for h, slope in enumerate(slopes):
    for i in range(q_len):
      for j in range(k_len):
        bias[h, i, j] = -slope * abs(i - j)
  return bias


def softmax_attention(q, k, v, mask, bias=None):
  """out [B, Lq, H, D] = softmax(q k^T / sqrt(D) + bias) v under `mask` [B, H, Lq, Lk]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  heads = q.shape[2]
  p = _probabilities(q, expand_kv(k, heads), mask, bias)
  return np.einsum("bhqk,bkhd->bqhd", p, expand_kv(v, heads))


def softmax_attention_vjp(q, k, v, mask, d_out, bias=None):
  """(dq, dk, dv) of sum(out * d_out), by the textbook softmax backward.

  A constant bias changes P only: d logits / d(q, k) is the same.
  """
  q, k, v, d_out = (np.asarray(x, np.float64) for x in (q, k, v, d_out))
  heads, kv_heads = q.shape[2], k.shape[2]
  ke, ve = expand_kv(k, heads), expand_kv(v, heads)
  p = _probabilities(q, ke, mask, bias)
  dv = np.einsum("bhqk,bqhd->bkhd", p, d_out)
  dp = np.einsum("bqhd,bkhd->bhqk", d_out, ve)
  ds = p * (dp - (p * dp).sum(-1, keepdims=True)) / np.sqrt(q.shape[-1])
  dq = np.einsum("bhqk,bkhd->bqhd", ds, ke)
  dk = np.einsum("bhqk,bqhd->bkhd", ds, q)

  def fold(x):  # sum the query heads that share a kv head
    b, l, _, d = x.shape
    return x.reshape(b, l, kv_heads, heads // kv_heads, d).sum(3)
  return dq, fold(dk), fold(dv)
