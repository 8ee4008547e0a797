"""attention-research: attention mechanisms for JAX/Flax research.

The attention functions live in `attention_research.attention`, found by name
through its registry (`attention.get(name)`, `attention.names()`).
"""

__version__ = "0.1.0"
