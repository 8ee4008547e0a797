"""Tasks and their data: the registry, preparation and the Grain pipelines.

    from attention_research import data
    opts = {"seq_len": 128, "num_kv_pairs": 16}
    it = data.train_iterator("mqar", opts, data_dir="/tmp/tfds", global_batch_size=64,
                             max_len=128, seed=0)
    batch = next(it)   # inputs, input_mask, targets, target_mask, example_mask
    state = it.get_state()   # JSON; it.set_state(state) resumes exactly here

`registry.py` lists the tasks (adding one: a file and a `_register` line
there), `prepare.py` generates a task into a data_dir on first use (or finds
the TFDS dataset a task reads), and `pipeline.py` turns a prepared split
into batches.
"""

from attention_research.data.pipeline import eval_batches
from attention_research.data.pipeline import example_features
from attention_research.data.pipeline import train_iterator
from attention_research.data.prepare import builder
from attention_research.data.prepare import MIRROR_ENV
from attention_research.data.prepare import mirror_dir
from attention_research.data.prepare import prepare
from attention_research.data.registry import get_task
from attention_research.data.registry import KINDS
from attention_research.data.registry import names
from attention_research.data.registry import num_classes
from attention_research.data.registry import resolve_options
from attention_research.data.registry import sequence_length
from attention_research.data.registry import Task
from attention_research.data.registry import vocab_size
