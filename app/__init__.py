"""ESPCN super-resolution: the maths, the models, the serving engine and the HTTP service.

Before anything here loads PyTorch (and its OpenMP runtime): OpenMP threads that finish a
parallel region sleep at once instead of spinning, so that between model calls the codec
threads and the event loop get the cores (more small requests per second on the 2-core
bench machine: figures in docs/benchmarks.md). Set OMP_WAIT_POLICY yourself to override.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
