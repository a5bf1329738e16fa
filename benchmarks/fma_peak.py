"""The machine's float32 FMA peak (the code lives in ``rnncomp.inspect.peak``).

    python benchmarks/fma_peak.py            # prints {"threads": GFLOP/s, ...} and the vector width
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rnncomp.inspect.peak import peak  # noqa: E402,F401  (bench_native imports it from here)

if __name__ == "__main__":
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(json.dumps({str(t): peak(t) for t in sorted({1, n})}))
