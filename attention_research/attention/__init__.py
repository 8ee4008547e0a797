"""The attention registry: every variant, found by name.

    from attention_research import attention
    fn = attention.get("blockwise")
    out = fn(query, key, value, causal=True, block_q=256)

All variants share one contract (see DESIGN.md and `common.check_inputs`):
query [B, Lq, H, D], key/value [B, Lk, Hkv, D], `causal`, `kv_mask` bool
[B, Lk]; output [B, Lq, H, D] in the query's dtype, zeros for rows with no key.

ALiBi (Press et al. 2022): dense, blockwise and local take `alibi_slopes`
float [H], adding -slope[h] * |i - j| to each logit (top-left aligned; causal
or not; blockwise and local build it tile by tile, never as Lq x Lk);
`alibi_slopes(H)` gives the paper's slopes, and `"alibi_slopes" in
variant(name).options` says whether a variant takes them.

Adding a variant: write one file with the function, add one `register(...)`
line below; the conformance tests, benchmark and models then pick it up by
name. An exact variant also names its mask function (q_len, k_len, causal=,
**options) -> NumPy bool [Lq, Lk], which the tests check it against.
"""

import dataclasses
import functools
import inspect
from typing import Callable, Optional

import numpy as np

from attention_research.attention import blockwise as _blockwise
from attention_research.attention import common as _common
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


_REGISTRY: dict[str, Variant] = {}


def register(name, fn, *, exact, mask=None):
  """Adds `fn` under `name`; returns it wrapped so unknown options are a ValueError."""
  if name in _REGISTRY:
    raise ValueError(f"attention variant {name!r} is already registered")
  if exact and mask is None:
    raise ValueError(f"exact attention variant {name!r} needs a mask function")
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

  _REGISTRY[name] = Variant(name, checked, exact, mask, options)
  return checked


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


def _dense_mask(q_len, k_len, *, causal=False, mask=None, alibi_slopes=None):
  """dense's pattern; a `mask` is folded in when it is one [Lq, Lk] pattern."""
  del alibi_slopes  # a bias hides no key
  full = masks.full_mask(q_len, k_len, causal=causal)
  if mask is None:
    return full
  mask = np.asarray(mask, bool)
  if mask.ndim > 2 and any(n != 1 for n in mask.shape[:-2]):
    raise ValueError(f"dense: a per-batch or per-head `mask` {mask.shape} has no single "
                     f"[q_len, k_len] pattern")
  return full & np.broadcast_to(mask.reshape(mask.shape[-2:]), full.shape)


def _ignoring_alibi(mask_fn):
  """mask_fn, also taking the `alibi_slopes` option, which hides no key."""
  @functools.wraps(mask_fn)
  def mask(q_len, k_len, *, alibi_slopes=None, **options):
    del alibi_slopes
    return mask_fn(q_len, k_len, **options)
  return mask


# The functions are reached through get(name); module attributes named after
# variants stay the submodules (dense.py, blockwise.py, ...).
register("dense", _dense.dense, exact=True, mask=_dense_mask)
register("blockwise", _blockwise.blockwise, exact=True,
         mask=lambda q_len, k_len, *, causal=False, **_: masks.full_mask(q_len, k_len, causal=causal))
register("local", _sparse.local, exact=True, mask=_ignoring_alibi(masks.local_mask))
register("strided", _sparse.strided, exact=True, mask=masks.strided_mask)
register("bigbird", _sparse.bigbird, exact=True, mask=masks.bigbird_mask)
register("linear", _linear.linear, exact=False)
register("performer", _linear.performer, exact=False)

local_mask = masks.local_mask
strided_mask = masks.strided_mask
bigbird_mask = masks.bigbird_mask
performer_projection = _linear.performer_projection
alibi_slopes = _common.alibi_slopes
