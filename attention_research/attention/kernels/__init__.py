"""Vendor attention kernels behind the exact variants' functions, chosen by
their `implementation` option (choose.py): Pallas splash attention on TPU
(splash.py), cuDNN (cudnn.py) and the Pallas GPU kernel (pallas_gpu.py) on
GPU, the variants' own XLA code elsewhere; splash is also ring attention's
per-shard step (splash_ring.py)."""

from attention_research.attention.kernels.choose import check_context_implementation
from attention_research.attention.kernels.choose import check_implementation
from attention_research.attention.kernels.choose import IMPLEMENTATIONS
from attention_research.attention.kernels.choose import kernel_for
from attention_research.attention.kernels.choose import RING
from attention_research.attention.kernels.choose import ring_step
from attention_research.attention.kernels.choose import tracing_per_device
