"""splice supports transformers >= 4.57: run the architecture x method matrix (with prompt and prefix tuning,
whose mechanisms differ most between releases) on 4.57 too.

The default environment has transformers 5.x; scripts/setup.sh installs 4.57.6 as an
overlay in .venv/transformers-4.57 (scripts/test-newest.sh in .venv-newest/transformers-4.57),
and this test runs the matrix in a child interpreter with that overlay first on its path.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = Path(sys.prefix) / "transformers-4.57"  # beside the running environment: .venv or .venv-newest


def test_method_matrix_on_transformers_4_57():
    assert (OVERLAY / ".complete").exists(), "run scripts/setup.sh: it installs the transformers 4.57 overlay"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(OVERLAY), str(ROOT)])}
    probe = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "4.57.6"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "tests/test_methods.py", "tests/test_integration.py", "tests/test_prefix_prompt.py"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
