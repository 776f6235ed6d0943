import atexit
import os
import shutil
import sys
import tempfile

# datasets converts each data file the tests read into Arrow in its cache: keep those copies out of the user's.
_DATASETS_CACHE = tempfile.mkdtemp(prefix="splice-tests-datasets-")
os.environ.setdefault("HF_DATASETS_CACHE", _DATASETS_CACHE)
atexit.register(shutil.rmtree, _DATASETS_CACHE, True)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pytest-xdist runs the suite in 2 worker processes (pyproject's addopts): one thread each, so two workers on
# 2 cores do not oversubscribe them; processes the tests start inherit it through OMP_NUM_THREADS.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
