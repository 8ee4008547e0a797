"""Models from a config: validation, construction, parameter and FLOP counts.

    from attention_research import models
    s = models.resolve(config)                # ValueError before anything compiles
    model = models.build(s, vocab_size=256, num_classes=2)
    params = model.init(key, inputs, input_mask)["params"]
    logits = model.apply({"params": params}, inputs, input_mask, train=True,
                         rngs={"dropout": key})

`config.py` validates and resolves a config, `accounting.py` counts
parameters and FLOPs, `transformer.py` holds the modules.
"""

from attention_research.models import transformer
from attention_research.models.accounting import attention_flops_per_query
from attention_research.models.accounting import flops_per_token
from attention_research.models.accounting import num_block_params
from attention_research.models.accounting import num_params
from attention_research.models.config import build
from attention_research.models.config import CHOICES
from attention_research.models.config import DEFAULTS
from attention_research.models.config import encoded_length
from attention_research.models.config import POSITIONS
from attention_research.models.config import REQUIRED
from attention_research.models.config import resolve
from attention_research.models.config import validate_config
from attention_research.models.transformer import MODELS
from attention_research.models.transformer import Settings
