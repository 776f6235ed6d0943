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
