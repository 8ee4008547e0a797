"""The attention benchmark: time and memory of the registered variants against
sequence length. measure.py measures, report.py writes the tables and the
plot, host_malloc.py sets the host allocator for it;
experiments/benchmark_attention.py is its command line.

    from attention_research import benchmark
    results = benchmark.run(benchmark.BenchmarkSetup(
        variants=("dense", "local"), lengths=(1024, 2048), memory_budget_bytes=2**33))
    print(benchmark.markdown(results))
"""

from attention_research.benchmark import host_malloc
from attention_research.benchmark import measure
from attention_research.benchmark import report
from attention_research.benchmark.measure import BASELINE
from attention_research.benchmark.measure import BenchmarkSetup
from attention_research.benchmark.measure import Point
from attention_research.benchmark.measure import Results
from attention_research.benchmark.measure import default_memory_budget_bytes
from attention_research.benchmark.measure import run
from attention_research.benchmark.report import markdown
from attention_research.benchmark.report import write_outputs
